package gateway_test

// End-to-end tests of the recovery matrix (SPEC §5.2, R4): upstream rejections recovered
// invisibly to the client, at most once per turn, on a fresh upstream connection; what
// cannot be recovered reaches the client once, with status and the upstream's own code, and
// the session goes on.

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/gateway"
	"chainmend/internal/e2etest"
)

func noToolOutput(callID string) *emulator.APIError {
	return &emulator.APIError{Status: http.StatusBadRequest, Type: emulator.TypeInvalidRequest, Param: "input",
		Message: "No tool output found for function call " + callID + "."}
}

// recovered asserts that the turn's failed attempt (create failed) was retried as a full
// create on a fresh upstream connection and that the client saw only the retry's response.
func recovered(t *testing.T, s *stack, r turnResult, failed int) emulator.Create {
	t.Helper()
	require.Equal(t, "response.completed", r.last.Type, "%s", r.last.Raw)
	assert.Zero(t, r.count("error"), "the recovery must be invisible: %v", r.types())
	assert.Equal(t, 1, r.count("response.created"), "only the retry's events reach the client")
	cs := s.creates()
	require.Len(t, cs, failed+1)
	bad, retry := cs[failed-1], cs[failed]
	assert.Equal(t, emulator.OutcomeError, bad.Outcome)
	assert.NotEqual(t, bad.Conn, retry.Conn, "every retry goes out on a fresh upstream connection")
	assert.Equal(t, emulator.OutcomeCompleted, retry.Outcome)
	assert.Equal(t, r.last.Response.ID, retry.ResponseID)
	return retry
}

func TestE2ERecoverPreviousResponseNotFound(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-rec-prnf")
	resp1 := startCalls(t, c, "call_P1")
	s.emu.FailCreate(2, emulator.ErrPreviousResponseNotFound(resp1))
	before := s.fired()
	r := c.turn(chained(resp1, fco("call_P1", "ok"), user("call call_P2")))
	s.requireFired(before, []string{"drop_previous_response_id_full_replay"}, "upstream_error_forwarded")
	retry := recovered(t, s, r, 2)
	assert.Empty(t, retry.PreviousResponseID)
	assert.Equal(t, []string{"msg:user", "rs", "fc:call_P1", "fco:call_P1=ok", "msg:user"}, summary(t, retry.Frame),
		"the replay includes the model's own items, so the emulator's pairing check passes")
	assert.Equal(t, 1.0, s.counter("chainmend_recoveries_total", map[string]string{"reason": "drop_previous_response_id_full_replay", "result": "retried"}))
	assert.Equal(t, 1.0, s.counter("chainmend_recoveries_total", map[string]string{"reason": "drop_previous_response_id_full_replay", "result": "succeeded"}))

	// The session goes on, chained on the new upstream connection.
	before = s.fired()
	c.ok(chained(r.last.Response.ID, fco("call_P2", "ok")))
	s.requireFired(before, []string{"function_call_output_call_id_match"}, "fresh_connection_replay")
	assert.Equal(t, r.last.Response.ID, s.lastCreate().PreviousResponseID)
}

func TestE2ERecoverToolOutputNotFound(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-rec-tonf")
	resp1 := startCalls(t, c, "call_T1")
	s.emu.FailCreate(2, noToolOutput("call_T1"))
	before := s.fired()
	r := c.turn(chained(resp1, fco("call_T1", "ok")))
	s.requireFired(before, []string{"tool_output_not_found_drop_prev_replay"}, "upstream_error_forwarded")
	retry := recovered(t, s, r, 2)
	assert.Empty(t, retry.PreviousResponseID)
	assert.Equal(t, []string{"msg:user", "rs", "fc:call_T1", "fco:call_T1=ok"}, summary(t, retry.Frame))
	c.ok(chained(r.last.Response.ID, user("more")))
}

func TestE2ERecoverStoredChain(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())

	t.Run("stale previous_response_id aligned to the anchor", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-rec-store-align")
		e := c.ok(create(obj{"store": true}, user("call call_SA1")))
		n := len(s.creates())
		before := s.fired()
		// Nothing fakes this error: the emulator does not know the stale id.
		r := c.turn(create(obj{"store": true, "prev": "resp_stale0009"}, fco("call_SA1", "ok")))
		s.requireFired(before, []string{"align_previous_response_id_retry"})
		retry := recovered(t, s, r, n+1)
		assert.Equal(t, e.Response.ID, retry.PreviousResponseID, "a stored response chains from any connection")
		assert.Equal(t, []string{"fco:call_SA1=ok"}, summary(t, retry.Frame))
	})

	t.Run("missing previous_response_id set to the anchor", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-rec-store-set")
		e := c.ok(create(obj{"store": true}, user("call call_SS1")))
		n := len(s.creates())
		// With the pending calls unknown, the outputs are kept as sent; the upstream
		// refuses the chain.
		s.store.pendingDown.Store(true)
		defer s.store.pendingDown.Store(false)
		s.emu.FailCreate(n+1, emulator.ErrPreviousResponseNotFound("resp_unknown"))
		before := s.fired()
		r := c.turn(create(obj{"store": true}, fco("call_SS1", "ok")))
		s.requireFired(before, []string{"set_previous_response_id_retry"})
		retry := recovered(t, s, r, n+1)
		assert.Equal(t, e.Response.ID, retry.PreviousResponseID)
		assert.Equal(t, []string{"fco:call_SS1=ok"}, summary(t, retry.Frame))
	})
}

func TestE2ETransportRetry(t *testing.T) {
	t.Parallel()

	t.Run("connection limit reached", func(t *testing.T) {
		t.Parallel()
		s := newStack(t, e2etest.CmdScript())
		c := s.dial("sess-rec-limit")
		resp1 := startCalls(t, c, "call_C1")
		s.emu.FailCreate(2, emulator.ErrConnectionLimit())
		before := s.fired()
		r := c.turn(chained(resp1, fco("call_C1", "ok")))
		s.requireFired(before, []string{"transport_retry"})
		retry := recovered(t, s, r, 2)
		assert.Equal(t, []string{"msg:user", "rs", "fc:call_C1", "fco:call_C1=ok"}, summary(t, retry.Frame),
			"a chained store:false payload survives a new connection only as its replay")
	})

	t.Run("connection dropped before the first event", func(t *testing.T) {
		t.Parallel()
		s := newStack(t, e2etest.CmdScript())
		c := s.dial("sess-rec-drop")
		e1 := c.ok(create(nil, user("one")))
		s.emu.SetCreateFault(2, emulator.CreateFault{Delay: 3 * clientTimeout})
		before := s.fired()
		c.send(chained(e1.Response.ID, user("two")))
		eventually(t, "the create to reach the emulator", func() bool { return len(s.creates()) == 2 })
		s.emu.Conn(1).Drop()
		r := c.collect()
		require.Equal(t, "response.completed", r.last.Type, "%s", r.last.Raw)
		assert.Zero(t, r.count("error"))
		s.requireFired(before, []string{"transport_retry"})
		cs := s.creates()
		require.Len(t, cs, 3)
		assert.Equal(t, 2, cs[2].Conn)
		assert.Equal(t, []string{"msg:user", "msg:assistant", "msg:user"}, summary(t, cs[2].Frame))
	})
}

func TestE2ENonRecoverableErrorForwarded(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-rec-500")
	e1 := c.ok(create(nil, user("one")))
	s.emu.FailCreate(2, emulator.ErrServer())
	before := s.fired()
	r := c.turn(chained(e1.Response.ID, user("two")))
	e := c.oneError(r)
	s.requireFired(before, []string{"upstream_error_forwarded"}, "transport_retry", "drop_previous_response_id_full_replay")
	assert.Equal(t, 500, e.Status)
	assert.Equal(t, "server_error", e.Error.Code)
	sent := s.emu.Conn(1).Sent()
	assert.Equal(t, string(sent[len(sent)-1].Data), string(e.Raw), "the upstream's error frame, byte for byte")
	assert.Len(t, s.creates(), 2, "a server error is not retried")
	s.counterReaches("chainmend_turns_total", map[string]string{"outcome": "error_forwarded"}, 1)

	// The session stays open; the next turn, chained as the client knows it, works.
	before = s.fired()
	c.ok(chained(e1.Response.ID, user("three")))
	s.requireFired(before, []string{"missing_last_turn_response_id"})
	assert.Equal(t, []string{"msg:user", "msg:assistant", "msg:user"}, summary(t, s.lastCreate().Frame))
}

func TestE2ERecoveryAtMostOncePerTurn(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-rec-once")
	resp1 := startCalls(t, c, "call_R1")
	s.emu.FailCreate(2, emulator.ErrPreviousResponseNotFound(resp1))
	s.emu.FailCreate(3, emulator.ErrPreviousResponseNotFound(resp1))
	before := s.fired()
	e := c.fails(chained(resp1, fco("call_R1", "ok")))
	s.requireFired(before, []string{"drop_previous_response_id_full_replay", "upstream_error_forwarded"})
	assert.Equal(t, 400, e.Status)
	assert.Equal(t, "previous_response_not_found", e.Error.Code, "never renamed: clients retry on it")
	assert.Len(t, s.creates(), 3, "one retry, not two")
	assert.Equal(t, 1.0, s.counter("chainmend_recoveries_total", map[string]string{"result": "failed"}))

	// A 500 on the retry is forwarded as the upstream said it.
	resp2 := c.ok(create(nil, user("call call_R2"))).Response.ID
	n := len(s.creates())
	s.emu.FailCreate(n+1, emulator.ErrPreviousResponseNotFound(resp2))
	s.emu.FailCreate(n+2, emulator.ErrServer())
	e = c.fails(chained(resp2, fco("call_R2", "ok")))
	assert.Equal(t, 500, e.Status)
	assert.Equal(t, "server_error", e.Error.Code)

	// And the session still works.
	c.ok(create(nil, user("a fresh start")))
}

func TestE2ERecoveryDisabled(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript(), withConfig(func(c *gateway.Config) { c.Recovery = false }))
	c := s.dial("sess-rec-off")
	resp1 := startCalls(t, c, "call_D1")
	s.emu.FailCreate(2, emulator.ErrPreviousResponseNotFound(resp1))
	before := s.fired()
	e := c.fails(chained(resp1, fco("call_D1", "ok")))
	s.requireFired(before, []string{"upstream_error_forwarded"}, "drop_previous_response_id_full_replay")
	assert.Equal(t, 400, e.Status)
	assert.Equal(t, "previous_response_not_found", e.Error.Code)
	assert.Equal(t, "previous_response_id", e.Error.Param)
	assert.Len(t, s.creates(), 2)
}
