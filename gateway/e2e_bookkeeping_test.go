package gateway_test

// End-to-end tests of the post_response bookkeeping rules (policies/30-bookkeeping.yaml)
// that the conversation tests do not reach: a failed response, and a stored chain that
// branches off the transcript's end.

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
)

// TestE2EFailedResponseClearsAnchor: a failed response is not chainable (the upstream keeps
// nothing of it), so the rules clear the anchor and what the connection holds; the next
// chained turn is then sent as the replay of what came before.
func TestE2EFailedResponseClearsAnchor(t *testing.T) {
	t.Parallel()
	s := newStack(t, emulator.Sequence(emulator.TextTurn("one"), emulator.Turn{Status: emulator.StatusFailed}, emulator.TextTurn("three")))
	c := s.dial("sess-failed")
	e1 := c.ok(create(nil, user("one")))
	r := c.turn(chained(e1.Response.ID, user("two")))
	require.Equal(t, "response.failed", r.last.Type, "%s", r.last.Raw)
	booked := s.booked()
	assert.Positive(t, booked["anchor_cleared"])
	assert.Positive(t, booked["upstream_cache_cleared"])
}

// TestE2EStoredBranchClearsTranscript: under store:true a client may chain to any earlier
// response; the transcript then no longer ends where the chain starts, and appending would
// leave a gap, so the rules empty it.
func TestE2EStoredBranchClearsTranscript(t *testing.T) {
	t.Parallel()
	s := newStack(t, emulator.Reply("ok"))
	c := s.dial("sess-branch")
	stored := obj{"store": true}
	e1 := c.ok(create(stored, user("one")))
	c.ok(create(obj{"store": true, "prev": e1.Response.ID}, user("two")))
	before := s.booked()
	c.ok(create(obj{"store": true, "prev": e1.Response.ID}, user("two, again")))
	assert.Greater(t, s.booked()["transcript_gap_cleared"], before["transcript_gap_cleared"])
}
