package gateway_test

// Regressions of bugs found end to end in the engine and the policies (fixed: row 2's edit
// test ignores id-less repeats; row 9 leaves store:true outputs to the stored chain,
// which the recovery stage sets). Each names what the client would lose.

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"chainmend/internal/e2etest"
)

// A client without item ids that sends the same message twice in a row ("continue") is
// taken for an edited history (row 2: content-hash keys collide), its
// previous_response_id is dropped and the upstream gets a full create of one message: the
// whole conversation is lost without an error.
func TestE2ERegressionRepeatedMessageKeepsChain(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-bug-repeat")
	e1 := c.ok(create(nil, user("hello")))
	e2 := c.ok(chained(e1.Response.ID, user("continue")))
	before := s.fired()
	c.ok(chained(e2.Response.ID, user("continue")))
	s.requireFired(before, nil, "input_edited")
	assert.Equal(t, e2.Response.ID, s.lastCreate().PreviousResponseID, "the chain is kept")
}

// store:true outputs without previous_response_id answering the anchor's pending calls
// are removed as orphans (row 9 has no store condition; rows 4 and 6 infer the chain only
// for store:false), so the upstream gets an empty, context-less create and the model never
// sees the tool output. set_previous_response_id_retry (§5.2) is unreachable with pending
// known.
func TestE2ERegressionStoredOutputsWithoutPrevReachModel(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-bug-stored")
	e1 := c.ok(create(obj{"store": true}, user("call call_KB1")))
	before := s.fired()
	c.turn(create(obj{"store": true}, fco("call_KB1", "ok")))
	s.requireFired(before, nil, "orphan_output_removed")
	up := s.lastCreate()
	assert.Contains(t, summary(t, up.Frame), "fco:call_KB1=ok", "the tool output reaches the model")
	assert.Equal(t, e1.Response.ID, up.PreviousResponseID)
}
