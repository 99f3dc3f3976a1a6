package gateway_test

// End-to-end tests of the WebSocket path: every row of SPEC §5.1 (pre_send) through the
// running gateway against the emulator, which enforces the protocol. Recovery (§5.2) is in
// e2e_recovery_test.go, bad input (§9) in e2e_bad_test.go, HTTP/SSE in e2e_http_test.go,
// the conversation test in e2e_conversation_test.go.

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/engine"
	"chainmend/gateway"
	"chainmend/internal/e2etest"
)

// startCalls runs a first full create that makes the model call ids, and returns the
// response id.
func startCalls(t *testing.T, c *wsClient, ids ...string) string {
	t.Helper()
	e := c.ok(create(nil, user("call "+strings.Join(ids, " "))))
	require.Equal(t, ids, e.callIDs())
	return e.Response.ID
}

// ---- Row 5: the ESC case.

func TestE2EEscInjectsAbortedForUnansweredCalls(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-esc")
	resp1 := startCalls(t, c, "call_A", "call_B", "call_C")

	// ESC: the client answered call_A only and says the turn was aborted.
	before := s.fired()
	e := c.ok(chained(resp1, fco("call_A", "ok"), user("<turn_aborted>interrupted</turn_aborted>")))
	s.requireFired(before, []string{"aborted_injected", "function_call_output_call_id_match"},
		"fresh_connection_replay", "orphan_output_removed")

	up := s.lastCreate()
	assert.Equal(t, resp1, up.PreviousResponseID, "chained to the response whose calls were pending")
	assert.Equal(t, []string{"fco:call_A=ok", "fco:call_B=aborted", "fco:call_C=aborted", "msg:user"}, summary(t, up.Frame),
		"aborted outputs for exactly the unanswered calls, before the first new item")
	assert.Equal(t, emulator.OutcomeCompleted, up.Outcome)
	assert.Equal(t, 1, up.Conn, "same upstream connection: the chain was kept")

	// The session goes on, chained to the repaired turn.
	before = s.fired()
	c.ok(chained(e.Response.ID, user("carry on")))
	s.requireFired(before, []string{"strict_incremental_ok"}, "aborted_injected")
	assert.Equal(t, e.Response.ID, s.lastCreate().PreviousResponseID)
}

// ---- Row 4: a continuation without (or with a stale) previous_response_id.

func TestE2EPendingPrevInferredAndAligned(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())

	t.Run("outputs without previous_response_id", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-infer")
		resp1 := startCalls(t, c, "call_I1")
		before := s.fired()
		c.ok(create(nil, fco("call_I1", "ok")))
		s.requireFired(before, []string{"pending_prev_infer", "function_call_output_call_id_match"})
		up := s.lastCreate()
		assert.Equal(t, resp1, up.PreviousResponseID)
		assert.Equal(t, []string{"fco:call_I1=ok"}, summary(t, up.Frame))
	})

	t.Run("outputs dropped and no previous_response_id (ESC after a reconnect)", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-infer-esc")
		resp1 := startCalls(t, c, "call_I2", "call_I3")
		before := s.fired()
		c.ok(create(nil, user("<turn_aborted>stop</turn_aborted>")))
		s.requireFired(before, []string{"pending_prev_infer", "aborted_injected"}, "anchor_reset")
		up := s.lastCreate()
		assert.Equal(t, resp1, up.PreviousResponseID)
		assert.Equal(t, []string{"fco:call_I2=aborted", "fco:call_I3=aborted", "msg:user"}, summary(t, up.Frame))
	})

	t.Run("stale previous_response_id with outputs", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-align")
		resp1 := startCalls(t, c, "call_L1")
		before := s.fired()
		c.ok(chained("resp_stale0001", fco("call_L1", "ok")))
		s.requireFired(before, []string{"pending_prev_align", "function_call_output_call_id_match"})
		up := s.lastCreate()
		assert.Equal(t, resp1, up.PreviousResponseID, "aligned to the anchor")
		assert.Equal(t, []string{"fco:call_L1=ok"}, summary(t, up.Frame))
	})
}

// ---- Rows 6 and 7 with the pending calls unknown (the store could not answer), and row
// 10's has_function_call_output.

func TestE2EOutputsPrevInferredAndAlignedPendingUnknown(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())

	t.Run("infer", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-unknown-infer")
		resp1 := startCalls(t, c, "call_U1")
		s.store.pendingDown.Store(true)
		defer s.store.pendingDown.Store(false)
		before := s.fired()
		c.ok(create(nil, fco("call_U1", "ok")))
		s.requireFired(before, []string{"function_call_output_prev_infer", "has_function_call_output"}, "pending_prev_infer")
		up := s.lastCreate()
		assert.Equal(t, resp1, up.PreviousResponseID)
		assert.Equal(t, []string{"fco:call_U1=ok"}, summary(t, up.Frame))
	})

	t.Run("align", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-unknown-align")
		resp1 := startCalls(t, c, "call_U2")
		s.store.pendingDown.Store(true)
		defer s.store.pendingDown.Store(false)
		before := s.fired()
		c.ok(chained("resp_stale0002", fco("call_U2", "ok")))
		s.requireFired(before, []string{"function_call_output_prev_align", "has_function_call_output"}, "pending_prev_align")
		up := s.lastCreate()
		assert.Equal(t, resp1, up.PreviousResponseID)
		assert.Equal(t, []string{"fco:call_U2=ok"}, summary(t, up.Frame))
	})
}

// ---- Rows 6 and 9: stray outputs after a plain answer.

func TestE2EOrphanOutputsRemoved(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())

	t.Run("chained, next to a real output", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-orphan")
		resp1 := startCalls(t, c, "call_O1")
		before := s.fired()
		c.ok(chained(resp1, fco("call_O1", "ok"), fco("call_ghost", "stray"), user("next")))
		s.requireFired(before, []string{"orphan_output_removed", "function_call_output_call_id_match"})
		up := s.lastCreate()
		assert.Equal(t, resp1, up.PreviousResponseID)
		assert.Equal(t, []string{"fco:call_O1=ok", "msg:user"}, summary(t, up.Frame))
	})

	t.Run("no previous_response_id: inferred, and the orphan removed", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-orphan-infer")
		e := c.ok(create(nil, user("hello")))
		require.Empty(t, e.callIDs())
		before := s.fired()
		c.ok(create(nil, fco("call_ghost2", "stray"), user("again")))
		s.requireFired(before, []string{"function_call_output_prev_infer", "orphan_output_removed"})
		up := s.lastCreate()
		assert.Equal(t, e.Response.ID, up.PreviousResponseID)
		assert.Equal(t, []string{"msg:user"}, summary(t, up.Frame))
	})

	t.Run("full create: the orphan removed, nothing attached", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-orphan-full")
		c.ok(create(nil, user("hello")))
		before := s.fired()
		c.ok(create(nil, obj{"type": "message", "role": "developer", "content": "be brief"}, user("hi"), fco("call_ghost3", "stray")))
		s.requireFired(before, []string{"orphan_output_removed"}, "function_call_output_prev_infer")
		up := s.lastCreate()
		assert.Empty(t, up.PreviousResponseID, "a full create never gets a previous_response_id")
		assert.Equal(t, []string{"msg:developer", "msg:user"}, summary(t, up.Frame))
	})
}

// ---- Row 8: a full create with an unanswered call.

func TestE2EAbortedInjectedInline(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-inline")
	before := s.fired()
	c.ok(create(nil, user("run it"), fcall("call_X1", "exec", `{}`), user("<turn_aborted>stop</turn_aborted>")))
	s.requireFired(before, []string{"aborted_injected_inline"})
	assert.Equal(t, []string{"msg:user", "fc:call_X1", "fco:call_X1=aborted", "msg:user"}, summary(t, s.lastCreate().Frame),
		"aborted right after its call")
}

// ---- Row 12: outputs nothing can pair.

func TestE2EProactiveToolOutputReject(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-proactive")
	before := s.fired()
	e := c.fails(create(nil, fco("call_lost", "ok")))
	s.requireFired(before, []string{"proactive_tool_output_reject"})
	assert.Equal(t, 400, e.Status)
	assert.Equal(t, "tool_output_not_found", e.Error.Code)
	assert.Contains(t, e.Error.Message, "call_lost")
	assert.Empty(t, s.creates(), "nothing went upstream")
	// The connection stays open.
	c.ok(create(nil, user("fresh start")))
}

// ---- Rows 2 and 3: edited history, fresh full create.

func TestE2EInputEditedAndAnchorReset(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-edit")
	e1 := c.ok(create(nil, user("first question")))

	// The client chains but resends an edited history: sent as the client wrote it.
	before := s.fired()
	frame := chained(e1.Response.ID, user("first question"), user("second question, edited"))
	e2 := c.ok(frame)
	s.requireFired(before, []string{"input_edited"})
	up := s.lastCreate()
	assert.Empty(t, up.PreviousResponseID)
	assert.Equal(t, []string{"msg:user", "msg:user"}, summary(t, up.Frame))

	// A fresh full create with nothing pending starts over, untouched.
	before = s.fired()
	frame = create(obj{"instructions": "be terse", "metadata": obj{"k": "v"}, "x_unknown_field": obj{"kept": true}},
		user("new topic"), obj{"type": "x_unknown_item", "payload": 1})
	c.ok(frame)
	s.requireFired(before, []string{"anchor_reset"})
	up = s.lastCreate()
	sameJSON(t, []byte(frame), up.Frame, "a full create passes untouched (unknown fields and items too)")
	assert.NotEqual(t, e2.Response.ID, up.PreviousResponseID)
}

// ---- Row 10: the keep/drop invariant.

func TestE2EKeepDropInvariant(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())

	t.Run("strict_incremental_ok", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-kd-ok")
		e := c.ok(create(nil, user("one")))
		before := s.fired()
		c.ok(chained(e.Response.ID, user("two")))
		s.requireFired(before, []string{"strict_incremental_ok"}, "fresh_connection_replay")
		assert.Equal(t, e.Response.ID, s.lastCreate().PreviousResponseID)
	})

	t.Run("non_input_changed", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-kd-model")
		e := c.ok(create(nil, user("one")))
		before := s.fired()
		c.ok(create(obj{"prev": e.Response.ID, "model": "gpt-5-mini"}, user("two")))
		s.requireFired(before, []string{"non_input_changed"})
		up := s.lastCreate()
		assert.Empty(t, up.PreviousResponseID, "dropped and replayed")
		assert.Equal(t, "gpt-5-mini", up.Model)
		assert.Equal(t, []string{"msg:user", "msg:assistant", "msg:user"}, summary(t, up.Frame))
	})

	t.Run("previous_response_id_mismatch without a replay: the error reaches the client", func(t *testing.T) {
		s := s.with(t)
		c := s.dial("sess-kd-mismatch")
		e1 := c.ok(create(nil, user("one")))
		e2 := c.ok(chained(e1.Response.ID, user("two")))
		before := s.fired()
		// Chained to an older response: only the newest can be continued, and the
		// transcript does not end there, so the gateway must not invent a context.
		e := c.fails(chained(e1.Response.ID, user("three")))
		s.requireFired(before, []string{"previous_response_id_mismatch", "abort_no_replay"})
		assert.Equal(t, 400, e.Status)
		assert.Equal(t, "previous_response_not_found", e.Error.Code, "the upstream's own code")
		assert.Equal(t, "Previous response with id '"+e1.Response.ID+"' not found.", e.Error.Message)
		// The next turn works: chained to the newest response, replayed.
		before = s.fired()
		c.ok(chained(e2.Response.ID, user("four")))
		s.requireFired(before, []string{"missing_last_turn_response_id"})
		up := s.lastCreate()
		assert.Empty(t, up.PreviousResponseID)
		assert.Equal(t, []string{"msg:user", "msg:assistant", "msg:user", "msg:assistant", "msg:user"}, summary(t, up.Frame))
	})

	t.Run("missing_previous_turn_payload and fresh_connection_replay after a reconnect", func(t *testing.T) {
		s := s.with(t)
		c1 := s.dial("sess-kd-reconnect")
		e1 := c1.ok(create(nil, user("one")))
		_ = c1.c.CloseNow()

		// Another client connection (another gateway instance would read the same store):
		// its first turn is chained, and no upstream connection can hold the chain.
		c2 := s.dial("sess-kd-reconnect")
		before := s.fired()
		e2 := c2.ok(chained(e1.Response.ID, user("two")))
		s.requireFired(before, []string{"fresh_connection_replay"})
		up := s.lastCreate()
		assert.Empty(t, up.PreviousResponseID)
		assert.Equal(t, []string{"msg:user", "msg:assistant", "msg:user"}, summary(t, up.Frame))
		_ = c2.c.CloseNow()

		// A third connection whose first turn was refused: turn 2 has no previous payload.
		c3 := s.dial("sess-kd-reconnect")
		c3.fails(chained("msg_not_a_response", user("bad")))
		before = s.fired()
		c3.ok(chained(e2.Response.ID, user("three")))
		s.requireFired(before, []string{"missing_previous_turn_payload"})
		up = s.lastCreate()
		assert.Empty(t, up.PreviousResponseID)
		assert.Equal(t, []string{"msg:user", "msg:assistant", "msg:user", "msg:assistant", "msg:user"}, summary(t, up.Frame))
	})
}

// ---- Row 11: the emulator drops the upstream connection between turns.

func TestE2EFreshConnectionReplay(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript(), withEmulator(emulator.WithFaults(emulator.Faults{CloseAfterCompleted: true})))
	c := s.dial("sess-fresh")
	resp1 := startCalls(t, c, "call_F1", "call_F2")
	s.waitUpstreamClosed(1)

	before := s.fired()
	e := c.ok(chained(resp1, fco("call_F1", "one"), fco("call_F2", "two")))
	s.requireFired(before, []string{"fresh_connection_replay", "function_call_output_call_id_match"}, "transport_retry")
	up := s.lastCreate()
	assert.Equal(t, 2, up.Conn, "a new upstream connection")
	assert.Empty(t, up.PreviousResponseID)
	assert.Equal(t, []string{"msg:user", "rs", "fc:call_F1", "fc:call_F2", "fco:call_F1=one", "fco:call_F2=two"}, summary(t, up.Frame),
		"the replay carries the model's own reasoning and calls, so the outputs pair")
	assert.Equal(t, emulator.OutcomeCompleted, up.Outcome)
	assert.Zero(t, s.emu.Stats().Errors, "the upstream never had to refuse anything")

	// Again, with an ESC on top: aborted outputs inside the replay.
	s.waitUpstreamClosed(2)
	c.ok(chained(e.Response.ID, user("call call_F3")))
	s.waitUpstreamClosed(3)
	resp3 := s.lastCreate().ResponseID
	before = s.fired()
	c.ok(chained(resp3, user("<turn_aborted>esc</turn_aborted>")))
	s.requireFired(before, []string{"aborted_injected", "fresh_connection_replay"})
	got := summary(t, s.lastCreate().Frame)
	assert.Equal(t, []string{"fco:call_F3=aborted", "msg:user"}, got[len(got)-2:])
	assert.Equal(t, "fc:call_F3", got[len(got)-3])
	assert.Zero(t, s.emu.Stats().Errors)
}

// ---- Row 1 and modes: strict rejects what repair repairs (SPEC §3 Modes).

func TestE2EStrictRejectsWhatRepairRepairs(t *testing.T) {
	t.Parallel()
	type tc struct {
		name string
		// setup runs the turns before the one under test and returns its frame and a
		// correct frame for the same situation.
		setup    func(t *testing.T, c *wsClient) (bad, good string)
		reason   string
		callIDs  []string
		repaired []string
	}
	cases := []tc{
		{
			name: "ESC: pending call without output",
			setup: func(t *testing.T, c *wsClient) (string, string) {
				resp1 := startCalls(t, c, "call_SA", "call_SB")
				return chained(resp1, fco("call_SA", "ok"), user("next")),
					chained(resp1, fco("call_SA", "ok"), fco("call_SB", "ok"), user("next"))
			},
			reason: "aborted_injected", callIDs: []string{"call_SB"},
			repaired: []string{"fco:call_SA=ok", "fco:call_SB=aborted", "msg:user"},
		},
		{
			name: "full create with an unanswered call",
			setup: func(t *testing.T, c *wsClient) (string, string) {
				return create(nil, user("go"), fcall("call_SX", "exec", `{}`), user("next")),
					create(nil, user("go"), fcall("call_SX", "exec", `{}`), fco("call_SX", "ok"), user("next"))
			},
			reason: "aborted_injected_inline", callIDs: []string{"call_SX"},
			repaired: []string{"msg:user", "fc:call_SX", "fco:call_SX=aborted", "msg:user"},
		},
		{
			name: "orphan output",
			setup: func(t *testing.T, c *wsClient) (string, string) {
				resp1 := startCalls(t, c, "call_SO")
				return chained(resp1, fco("call_SO", "ok"), fco("call_Sghost", "x")),
					chained(resp1, fco("call_SO", "ok"))
			},
			reason: "orphan_output_removed", callIDs: []string{"call_Sghost"},
			repaired: []string{"fco:call_SO=ok"},
		},
	}
	for _, mode := range []string{engine.ModeRepair, engine.ModeStrict} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			s := newStack(t, e2etest.CmdScript(), withMode(mode))
			for i, k := range cases {
				t.Run(k.name, func(t *testing.T) {
					s := s.with(t)
					c := s.dial("sess-mode-" + mode + "-" + string(rune('a'+i)))
					frame, good := k.setup(t, c)
					n := len(s.creates())
					before := s.fired()
					if mode == engine.ModeRepair {
						c.ok(frame)
						s.requireFired(before, []string{k.reason})
						assert.Equal(t, k.repaired, summary(t, s.lastCreate().Frame))
						return
					}
					e := c.fails(frame)
					s.requireFired(before, []string{k.reason})
					assert.Equal(t, 400, e.Status)
					assert.Equal(t, "invariant_violation", e.Error.Code)
					for _, id := range k.callIDs {
						assert.Contains(t, e.Error.Message, id, "the rejection names the call ids")
					}
					assert.Len(t, s.creates(), n, "nothing went upstream")
					// The session stays open and the correct turn goes through.
					c.ok(good)
					assert.Len(t, s.creates(), n+1)
				})
			}
		})
	}
}

// ---- Warm-up and chained turns: the real Codex 0.169 frames (testdata/codex).

func TestE2ECodexCaptureWebSocket(t *testing.T) {
	t.Parallel()
	s := newStack(t, codexScript())
	c := s.dialHeader(loadHeaders(t, "ws-conn1-request-headers"))
	before := s.fired()
	names := []string{"ws-create1-warmup", "ws-create2-user-turn", "ws-create3-tool-output"}
	for i, name := range names {
		capt := loadCapture(t, name)
		c.send(string(capt.Frame))
		r := c.collect()
		require.Equal(t, "response.completed", r.last.Type, "%s: %s", name, r.last.Raw)
		assert.Equal(t, capt.ResponseID, r.last.Response.ID, name)
		up := s.creates()[i]
		sameJSON(t, capt.Frame, up.Frame, "%s passes untouched", name)
		assert.Equal(t, 1, up.Conn, "one upstream connection")
	}
	s.requireFired(before, []string{"strict_incremental_ok", "function_call_output_call_id_match"},
		"fresh_connection_replay", "input_edited", "non_input_changed", "aborted_injected")
	creates := s.creates()
	require.Len(t, creates, 3)
	assert.False(t, creates[0].Generate, "the warm-up stays a warm-up")
	assert.Equal(t, "call_codex_echo_1", creates[2].Context[len(creates[2].Context)-1].CallID)

	h := s.emu.Conn(1).Header()
	assert.Equal(t, "Bearer "+testSecret, h.Get("Authorization"), "the credential goes upstream")
	assert.Equal(t, "responses_websockets=2026-02-06", h.Get("OpenAI-Beta"))
	assert.Equal(t, "01a22114-0d89-7292-a2a2-bf495fe2b4f0", h.Get("Session-Id"))
	assert.Equal(t, "01a22114-0d89-7292-a2a2-bf495fe2b4f0", h.Get("Thread-Id"))
	assert.Contains(t, h.Get("X-Codex-Turn-Metadata"), `"request_kind":"prewarm"`)
	assert.Equal(t, "codex_exec", h.Get("Originator"))
}

func TestE2ECodexCaptureAfterClose(t *testing.T) {
	t.Parallel()
	for _, newSocket := range []bool{true, false} {
		name := "same client socket"
		if newSocket {
			name = "new client socket"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := newStack(t, codexScript())
			// The upstream closes right after the tool-call response.
			s.emu.SetCreateFault(2, emulator.CreateFault{CloseAfter: true})
			c := s.dialHeader(loadHeaders(t, "ws-after-close-conn1-request-headers"))
			for _, n := range []string{"ws-after-close-create1-warmup", "ws-after-close-create2-user-turn"} {
				capt := loadCapture(t, n)
				c.send(string(capt.Frame))
				r := c.collect()
				require.Equal(t, "response.completed", r.last.Type, "%s: %s", n, r.last.Raw)
				assert.Equal(t, capt.ResponseID, r.last.Response.ID)
			}
			s.waitUpstreamClosed(1)
			if newSocket {
				_ = c.c.CloseNow()
				c = s.dialHeader(loadHeaders(t, "ws-after-close-conn2-request-headers"))
			}
			// Codex resends the full context without previous_response_id: it must go
			// upstream untouched (no prev attached, no replay prepended).
			capt := loadCapture(t, "ws-after-close-create3-tool-output")
			before := s.fired()
			c.send(string(capt.Frame))
			r := c.collect()
			require.Equal(t, "response.completed", r.last.Type, "%s", r.last.Raw)
			assert.Equal(t, capt.ResponseID, r.last.Response.ID)
			up := s.lastCreate()
			sameJSON(t, capt.Frame, up.Frame, "the full create passes untouched")
			assert.Equal(t, 2, up.Conn)
			for _, r := range s.firedSince(before) {
				assert.Equal(t, "pairing_checked", r, "no rule may rewrite a paired full create")
			}
		})
	}
}

// ---- response.processed acks, and one response in flight per connection.

func TestE2EProcessedAckAndQueuedCreates(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-ack")
	e1 := c.ok(create(nil, user("one")))
	c.send(`{"type":"response.processed","response_id":"` + e1.Response.ID + `"}`)
	// No reply to the ack: the next frame the client sees belongs to the next turn.
	r := c.turn(chained(e1.Response.ID, user("two")))
	require.Equal(t, "response.created", r.events[0].Type, "the ack got a reply: %s", r.events[0].Raw)
	require.Equal(t, "response.completed", r.last.Type)
	assert.EqualValues(t, 1, s.emu.Stats().Acks, "the ack reached the upstream connection that produced the response")
	var acks int
	for _, f := range s.emu.Conn(1).Received() {
		if f.Type == "response.processed" {
			acks++
		}
	}
	assert.Equal(t, 1, acks)

	// Two creates back to back: the second waits for the first.
	c.send(chained(r.last.Response.ID, user("three")))
	c.send(create(nil, user("four, a fresh full create")))
	a, b := c.collect(), c.collect()
	require.Equal(t, "response.completed", a.last.Type, "%s", a.last.Raw)
	require.Equal(t, "response.completed", b.last.Type, "%s", b.last.Raw)
	assert.Equal(t, 1, a.count("response.created"))
	assert.Equal(t, 1, b.count("response.created"))
	cs := s.creates()
	require.Len(t, cs, 4)
	assert.Equal(t, a.last.Response.ID, cs[2].ResponseID)
	assert.Equal(t, b.last.Response.ID, cs[3].ResponseID)
	assert.Zero(t, s.emu.Stats().Errors)
}

// ---- Tenants, rotation.

func TestE2ETenantsNeverShareChains(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	a := s.dial("sess-shared-id")
	startCalls(t, a, "call_TA")

	// Another credential with the same session id: nothing of the first tenant's chain
	// may be inferred for it.
	b := s.dialHeader(http.Header{"Authorization": {"Bearer sk-test-secret-other-tenant"}, "Session-Id": {"sess-shared-id"}})
	before := s.fired()
	e := b.fails(create(nil, fco("call_TA", "stolen")))
	s.requireFired(before, []string{"proactive_tool_output_reject"}, "pending_prev_infer", "function_call_output_prev_infer")
	assert.Equal(t, "tool_output_not_found", e.Error.Code)
	assert.Len(t, s.creates(), 1)
}

func TestE2EUpstreamRotatedBeforeItsCap(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript(),
		withEmulator(emulator.WithConnectionLimit(2*time.Second)),
		withConfig(func(c *gateway.Config) { c.UpstreamMaxAge = 150 * time.Millisecond }))
	c := s.dial("sess-rotate")
	resp1 := startCalls(t, c, "call_RO1")
	time.Sleep(200 * time.Millisecond)
	before := s.fired()
	c.ok(chained(resp1, fco("call_RO1", "ok")))
	s.requireFired(before, []string{"fresh_connection_replay"})
	assert.Equal(t, 2, s.lastCreate().Conn)
	assert.Equal(t, 1.0, s.counter("chainmend_upstream_connections_total", map[string]string{"event": "rotated"}))
	assert.Zero(t, s.emu.Stats().Errors, "the upstream's cap was never reached")
}
