package gateway_test

// Finding a conversation by the response it chains to (issue 17): a client that sends no
// session header (the official SDK) and reconnects re-sends nothing; its next create is
// chained to a response of the old socket. The gateway finds that response's conversation
// within the client's tenant, so the rules see the same context as with a session header.

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/internal/e2etest"
)

// bare is a handshake with a credential and nothing else, as the SDK sends.
func bare(key string) http.Header { return http.Header{"Authorization": {"Bearer " + key}} }

func TestE2EFindConversationByResponse(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())

	c := s.dialHeader(bare(testSecret))
	c.send(onLane("a", "", user("call call_A1")))
	c.send(onLane("b", "", user("call call_B1")))
	r := c.lanes(map[string]int{"a": 1, "b": 1})
	a1, b1 := r["a"].last.Response.ID, r["b"].last.Response.ID
	_ = c.c.CloseNow()

	// A new socket, no session header, the lanes registered again, the outputs chained to
	// the old socket's responses: each lane's conversation is found and replayed.
	before := s.fired()
	c = s.dialHeader(bare(testSecret))
	c.send(onLane("a", a1, fco("call_A1", "ok-a")))
	c.send(onLane("b", b1, fco("call_B1", "ok-b")))
	r = c.lanes(map[string]int{"a": 1, "b": 1})
	require.Equal(t, "response.completed", r["a"].last.Type, "%s", r["a"].last.Raw)
	require.Equal(t, "response.completed", r["b"].last.Type, "%s", r["b"].last.Raw)
	assert.Equal(t, 2.0, s.firedCount(before, "fresh_connection_replay"), "each lane replayed from its own transcript")
	ca, cb := s.createsOn("a"), s.createsOn("b")
	assert.Equal(t, []string{"msg:user", "rs", "fc:call_A1", "fco:call_A1=ok-a"}, summary(t, ca[len(ca)-1].Frame))
	assert.Equal(t, []string{"msg:user", "rs", "fc:call_B1", "fco:call_B1=ok-b"}, summary(t, cb[len(cb)-1].Frame))

	// The lane keeps the conversation it found: its next turn chains as usual.
	c.send(onLane("a", r["a"].last.Response.ID, user("go on")))
	ra := c.lanes(map[string]int{"a": 1})
	require.Equal(t, "response.completed", ra["a"].last.Type, "%s", ra["a"].last.Raw)
}

// TestE2EFindConversationNeverAcrossTenants: another credential that knows the response id
// finds nothing; a full create is never matched.
func TestE2EFindConversationNeverAcrossTenants(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dialHeader(bare(testSecret))
	r1 := startCalls(t, c, "call_T1")
	_ = c.c.CloseNow()

	before := s.fired()
	other := s.dialHeader(bare("sk-another-tenant-0001"))
	e := other.fails(chained(r1, fco("call_T1", "stolen")))
	assert.Equal(t, "previous_response_not_found", e.Error.Code)
	s.requireFired(before, nil, "fresh_connection_replay", "drop_previous_response_id_full_replay")
	for _, cr := range s.creates() {
		assert.NotContains(t, string(cr.Frame), "stolen\",\"type\":\"function_call_output\"},{\"type\":\"message\"", "nothing of the first tenant went with it")
	}

	// The owner, full create (no previous_response_id): nothing is looked up or prefixed.
	before = s.fired()
	own := s.dialHeader(bare(testSecret))
	own.ok(create(nil, user("fresh start")))
	s.requireFired(before, nil, "fresh_connection_replay", "pending_prev_infer")
	assert.Equal(t, []string{"msg:user"}, summary(t, s.lastCreate().Frame))
}
