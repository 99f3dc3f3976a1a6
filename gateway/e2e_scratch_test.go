package gateway_test

import (
	"testing"
)

func TestScratchRepeatedMessage(t *testing.T) {
	s := newStack(t, cmdScript())
	c := s.dial("sess-rep")
	e1 := c.ok(create(nil, user("hello")))
	e2 := c.ok(chained(e1.Response.ID, user("continue")))
	before := s.fired()
	c.ok(chained(e2.Response.ID, user("continue")))
	t.Logf("fired %v", s.firedSince(before))
	t.Logf("sent %v prev=%q", summary(t, s.lastCreate().Frame), s.lastCreate().PreviousResponseID)
}

func TestScratchStoreTrueOutputsNoPrev(t *testing.T) {
	s := newStack(t, cmdScript())
	c := s.dial("sess-st")
	c.ok(create(obj{"store": true}, user("call call_Q1")))
	before := s.fired()
	r := c.turn(create(obj{"store": true}, fco("call_Q1", "ok")))
	t.Logf("last %s", r.last.Raw[:min(200, len(r.last.Raw))])
	t.Logf("fired %v", s.firedSince(before))
	t.Logf("sent %v prev=%q", summary(t, s.lastCreate().Frame), s.lastCreate().PreviousResponseID)
}
