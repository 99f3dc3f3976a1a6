package emulator

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var multiAgent = http.Header{"Openai-Beta": {"responses_websockets=2026-02-06, " + multiAgentBeta}}

func steerFrame1(prevID string, input any) map[string]any {
	return map[string]any{"type": "response.steer", "previous_response_id": prevID, "input": input}
}

// TestSteerStartsSuccessor steers a paused response on a lane: the steer is
// accepted, the response ends incomplete ("steered"), and the server starts
// a successor chained to it with the steering as input. The successor is
// scripted to call a tool and becomes the lane's latest response.
func TestSteerStartsSuccessor(t *testing.T) {
	var seen []*Request
	e := StartTest(t, WithScript(ScriptFunc(func(r *Request) Turn {
		switch {
		case r.Successor:
			seen = append(seen, r)
			return CallTurn(FunctionCallID("call_s", "exec_command", "{}"))
		case r.LastInput().IsOutput():
			return TextTurn("done")
		}
		return Turn{Output: []Output{Reason("draft"), Say("draft")}, AwaitControl: true}
	})))
	c := dial(t, e, nil)
	c.send(onLane("a", nil, user("plan it")))
	r1 := c.until(typeIs("response.created"))[0].Response.ID
	steerMsg := user("keep it small")
	c.send(steerFrame1(r1, []any{steerMsg}))

	evs := c.until(func(ev event) bool { return ev.Type == "response.completed" })
	types := eventTypes(evs)
	accepted := evs[indexOf(types, "response.steer.accepted")]
	assert.Equal(t, "a", *accepted.StreamID)
	assert.Regexp(t, `^steer_emu\d{4}$`, accepted.Steer.ID)
	assert.Equal(t, r1, accepted.Steer.PreviousResponseID)
	require.NotNil(t, accepted.Seq)
	assert.Positive(t, *accepted.Seq, "a reply to an in-flight response continues its sequence numbers")

	steered := evs[indexOf(types, "response.incomplete")]
	assert.Equal(t, r1, steered.Response.ID)
	assert.Equal(t, "steered", steered.Response.IncompleteDetails.Reason)
	assert.Less(t, indexOf(types, "response.steer.accepted"), indexOf(types, "response.incomplete"))

	succ := evs[len(evs)-1]
	r2 := succ.Response.ID
	assert.Equal(t, r1, *succ.Response.Prev)
	assert.Equal(t, "a", *succ.StreamID)
	assert.Equal(t, "response.created", types[indexOf(types, "response.incomplete")+1], "the successor starts right after")

	require.Len(t, seen, 1)
	assert.Equal(t, "a", seen[0].Lane)
	assert.Equal(t, r1, seen[0].PreviousResponseID)
	assert.Equal(t, []Item{{Type: TypeMessage, Role: "user"}}, seen[0].Input)
	raw, err := seen[0].InputRaw()
	require.NoError(t, err)
	assert.JSONEq(t, string(mustJSON(t, steerMsg)), string(raw[0]))

	creates := e.Creates()
	require.Len(t, creates, 2)
	assert.True(t, creates[1].Successor)
	assert.Equal(t, []string{accepted.Steer.ID}, creates[1].Steers)
	assert.Equal(t, r2, creates[1].ResponseID)
	info, _ := e.Response(r1)
	assert.Equal(t, "steered", info.IncompleteReason)
	assert.Equal(t, []string{"steer_emu0001"}, []string{e.Controls()[0].SteerID})
	assert.Equal(t, "steered", e.Controls()[0].Outcome)

	// The successor is the lane's latest: the steered response no longer
	// chains, and the successor's call is what a continuation answers.
	res := c.create(onLane("a", map[string]any{"previous_response_id": r1}, user("x")))
	assert.Equal(t, "Previous response with id '"+r1+"' not found.", res.errMessage(t))
	c.create(onLane("a", map[string]any{"previous_response_id": r2}, fout("call_s", "ok"))).responseID(t)
}

// TestSteerChainsToSuccessor checks that a create continuing the successor
// must answer the successor's calls.
func TestSteerChainsToSuccessor(t *testing.T) {
	e := StartTest(t, WithScript(ScriptFunc(func(r *Request) Turn {
		switch {
		case r.Successor:
			return CallTurn(FunctionCallID("call_s", "exec_command", "{}"))
		case r.PreviousResponseID != "":
			return TextTurn("done")
		}
		return Turn{Output: []Output{Say("draft")}, AwaitControl: true}
	})))
	c := dial(t, e, nil)
	c.send(req(nil, user("plan it")))
	r1 := c.until(typeIs("response.created"))[0].Response.ID
	c.send(steerFrame1(r1, "keep it small"))
	evs := c.until(func(ev event) bool { return ev.Type == "response.completed" })
	r2 := evs[len(evs)-1].Response.ID
	info, ok := e.Response(r2)
	require.True(t, ok)
	assert.Equal(t, []string{"call_s"}, info.PendingCalls)
	assert.Nil(t, evs[0].StreamID, "default-lane replies carry no stream_id")

	res := c.create(req(map[string]any{"previous_response_id": r2}, user("no output")))
	assert.Equal(t, "No tool output found for function call call_s.", res.errMessage(t))
	c.send(req(nil, user("plan it")))
	r3 := c.until(typeIs("response.created"))[0].Response.ID
	c.send(steerFrame1(r3, "again"))
	evs = c.until(func(ev event) bool { return ev.Type == "response.completed" })
	r4 := evs[len(evs)-1].Response.ID
	c.create(req(map[string]any{"previous_response_id": r4}, fout("call_s", "ok"))).responseID(t)
}

// callDone accepts the output_item.done of a function call.
func callDone(t *testing.T) func(event) bool {
	return func(ev event) bool {
		return ev.Type == "response.output_item.done" && jsonField(t, ev.Item, "type") == TypeFunctionCall
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// TestSteerFailed covers steering the emulator hands back, with the input
// that was not committed.
func TestSteerFailed(t *testing.T) {
	e := StartTest(t, WithScript(Reply("ok")))
	c := dial(t, e, nil)
	done := c.create(onLane("a", nil, user("1"))).responseID(t)
	tests := []struct {
		name  string
		frame map[string]any
		code  string
		lane  *string
		id    bool
	}{
		{name: "unknown response", frame: steerFrame1("resp_nope", "x"), code: CodeResponseNotFound},
		{name: "completed response with nothing owed", frame: steerFrame1(done, "x"), code: CodeResponseAlreadyCompleted, lane: ptr("a")},
		{name: "wrong lane", frame: map[string]any{"type": "response.steer", "previous_response_id": done, "input": "x", "stream_id": "b"}, code: CodeResponseNotFound},
		{name: "assistant message", frame: steerFrame1(done, []any{map[string]any{"role": "assistant", "content": "x"}}), code: CodeInvalidInput},
		{name: "tool output", frame: steerFrame1(done, []any{fout("call_1", "x")}), code: CodeInvalidInput},
		{name: "empty array", frame: steerFrame1(done, []any{}), code: CodeInvalidInput},
		{name: "unknown field", frame: map[string]any{"type": "response.steer", "previous_response_id": done, "input": "x", "instant": true}, code: CodeInvalidInput},
		{name: "missing previous_response_id", frame: map[string]any{"type": "response.steer", "input": "x"}, code: CodeInvalidInput},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c.send(tc.frame)
			ev, err := c.next(testTimeout)
			require.NoError(t, err)
			require.Equal(t, "response.steer.failed", ev.Type, "%s", ev.raw)
			var v struct {
				Error struct {
					Type    string `json:"type"`
					Code    string `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			require.NoError(t, json.Unmarshal(ev.raw, &v))
			assert.Equal(t, tc.code, v.Error.Code)
			assert.Equal(t, TypeInvalidRequest, v.Error.Type)
			assert.NotEmpty(t, v.Error.Message)
			assert.Equal(t, tc.lane, ev.StreamID)
			assert.Empty(t, ev.Steer.ID, "no id is issued before acceptance")
			assert.JSONEq(t, string(mustJSON(t, tc.frame["input"])), string(ev.Steer.Input), "the uncommitted input comes back")
		})
	}
	for _, ctl := range e.Controls() {
		assert.Equal(t, "failed", ctl.Outcome)
	}
}

// TestSteerPending steers responses that owe tool output: the steering is
// accepted and queued, response.steer.pending names the outputs, and the
// continuation gets the steering prepended.
func TestSteerPending(t *testing.T) {
	call := CallTurn(FunctionCallID("call_1", "get_status", `{"p":1}`))
	tests := []struct {
		name string
		// during steers while the response is paused; otherwise after it
		// completed.
		during bool
	}{
		{name: "steered in flight", during: true},
		{name: "steered after completion"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			turn := call
			turn.AwaitControl = tc.during
			e := StartTest(t, WithScript(Sequence(turn, TextTurn("updated plan"))))
			c := dial(t, e, nil)
			c.send(onLane("a", nil, user("plan")))
			r1 := c.until(typeIs("response.created"))[0].Response.ID
			if tc.during {
				c.until(callDone(t))
			} else {
				c.until(terminalOf(r1))
			}
			c.send(steerFrame1(r1, "also check citations"))
			evs := c.until(typeIs("response.steer.pending"))
			types := eventTypes(evs)
			require.Contains(t, types, "response.steer.accepted")
			if tc.during {
				assert.Less(t, indexOf(types, "response.completed"), indexOf(types, "response.steer.pending"),
					"a response that owes tool output completes; the steering waits")
			}
			pending := evs[len(evs)-1]
			accepted := evs[indexOf(types, "response.steer.accepted")]
			assert.Equal(t, accepted.Steer.ID, pending.Steer.ID)
			assert.Equal(t, r1, pending.Steer.PreviousResponseID)
			assert.Equal(t, "waiting_for_required_input", pending.Reason)
			assert.JSONEq(t, `[{"type":"function_call_output","call_id":"call_1","name":"get_status"}]`, string(pending.RequiredInput))
			assert.Equal(t, "a", *pending.StreamID)

			res := c.create(onLane("a", map[string]any{"previous_response_id": r1}, fout("call_1", "ok")))
			res.responseID(t)
			cr := e.Creates()[1]
			assert.Equal(t, []string{accepted.Steer.ID}, cr.Steers)
			assert.Equal(t, []Item{{Type: TypeFunctionCallOutput, CallID: "call_1"}}, cr.Input)
			n := len(cr.Context)
			require.GreaterOrEqual(t, n, 2)
			assert.Equal(t, Item{Type: TypeMessage, Role: "user"}, cr.Context[n-2], "the steering comes before the create's input")
			assert.Equal(t, "applied", e.Controls()[0].Outcome)
		})
	}
}

// TestInject answers a waiting call mid-response with response.inject.
func TestInject(t *testing.T) {
	turn := CallTurn(FunctionCallID("call_1", "exec_command", "{}"))
	turn.AwaitInject = true
	turn.Output = append(turn.Output, Say("after the tool"))

	t.Run("answers the call", func(t *testing.T) {
		e := StartTest(t, WithScript(Sequence(turn)))
		c := dial(t, e, multiAgent)
		c.send(onLane("a", nil, user("go")))
		evs := c.until(callDone(t))
		r1 := evs[0].Response.ID
		c.silent(50 * time.Millisecond)
		c.send(map[string]any{"type": "response.inject", "response_id": r1, "input": []any{fout("call_1", "ok")}})
		evs = c.until(terminalOf(r1))
		assert.Equal(t, "response.inject.created", evs[0].Type)
		assert.Equal(t, r1, evs[0].ResponseID)
		assert.Equal(t, "a", *evs[0].StreamID)
		assert.Equal(t, "response.completed", last(eventTypes(evs)))
		info, _ := e.Response(r1)
		assert.Empty(t, info.PendingCalls, "an injected output answers the call")
		assert.Equal(t, TypeFunctionCallOutput, info.Context[len(info.Context)-1].Type)

		dupRes := c.create(onLane("a", map[string]any{"previous_response_id": r1}, fout("call_1", "again")))
		assert.Equal(t, "Duplicate tool output found for call_id call_1.", dupRes.errMessage(t))
	})
	t.Run("continuation needs no output", func(t *testing.T) {
		e := StartTest(t, WithScript(Sequence(turn)))
		c := dial(t, e, multiAgent)
		c.send(req(nil, user("go")))
		r1 := c.until(typeIs("response.created"))[0].Response.ID
		c.until(callDone(t))
		c.send(map[string]any{"type": "response.inject", "response_id": r1, "input": []any{fout("call_1", "ok")}})
		c.until(terminalOf(r1))
		c.create(req(map[string]any{"previous_response_id": r1}, user("next"))).responseID(t)
	})
	t.Run("rejections", func(t *testing.T) {
		e := StartTest(t, WithScript(Sequence(turn)))
		c := dial(t, e, multiAgent)
		c.send(onLane("a", nil, user("go")))
		r1 := c.until(typeIs("response.created"))[0].Response.ID
		c.until(callDone(t))
		inject := func(id string, input ...any) event {
			c.send(map[string]any{"type": "response.inject", "response_id": id, "input": input})
			ev, err := c.next(testTimeout)
			require.NoError(t, err)
			return ev
		}
		ev := inject(r1, fout("call_zz", "x"))
		assert.Equal(t, "error", ev.Type)
		assert.Equal(t, "No tool call found for function call output with call_id call_zz.", ev.Error.Message)
		assert.Equal(t, "a", *ev.StreamID)
		ev = inject(r1, user("not an output"))
		assert.Equal(t, "error", ev.Type)
		assert.Equal(t, CodeInvalidValue, *ev.Error.Code)
		ev = inject("resp_nope", fout("call_1", "x"))
		assert.Equal(t, "response.inject.failed", ev.Type)
		assert.JSONEq(t, `{"code":"response_not_found","message":"Response with id 'resp_nope' is not available on this websocket connection."}`, string(jsonRaw(t, ev.raw, "error")))
		assert.JSONEq(t, string(mustJSON(t, []any{fout("call_1", "x")})), string(ev.Input))
		assert.Nil(t, ev.StreamID)

		ev = inject(r1, fout("call_1", "ok"))
		assert.Equal(t, "response.inject.created", ev.Type)
		c.until(terminalOf(r1))
		ev = inject(r1, fout("call_1", "late"))
		assert.Equal(t, "response.inject.failed", ev.Type)
		assert.Equal(t, CodeResponseAlreadyCompleted, jsonField(t, jsonRaw(t, ev.raw, "error"), "code"))
		assert.Equal(t, "a", *ev.StreamID)
	})
	t.Run("needs the beta header", func(t *testing.T) {
		e := StartTest(t)
		c := dial(t, e, nil)
		c.send(map[string]any{"type": "response.inject", "response_id": "resp_1", "input": []any{fout("call_1", "x")}})
		ev, err := c.next(testTimeout)
		require.NoError(t, err)
		assert.Equal(t, "error", ev.Type)
		assert.Equal(t, 400, ev.Status)
		assert.Contains(t, ev.Error.Message, multiAgentBeta)
		assert.Equal(t, "error", e.Controls()[0].Outcome)
	})
}

func jsonRaw(t *testing.T, data []byte, key string) json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(data, &m))
	return m[key]
}

func jsonField(t *testing.T, data []byte, key string) string {
	t.Helper()
	var s string
	if raw := jsonRaw(t, data, key); raw != nil {
		require.NoError(t, json.Unmarshal(raw, &s))
	}
	return s
}

// TestInterruptReadings interrupts a response that has emitted a call,
// under each reading of what the API does with it.
func TestInterruptReadings(t *testing.T) {
	tests := []struct {
		name      string
		reading   InterruptReading
		terminal  string
		reason    string
		keepsCall bool
	}{
		{name: "default: incomplete, calls stay pending", terminal: "response.incomplete", reason: "interrupted", keepsCall: true},
		{name: "cancelled", reading: InterruptReading{Cancel: true}, terminal: "response.cancelled", keepsCall: true},
		{name: "calls discarded", reading: InterruptReading{DiscardCalls: true}, terminal: "response.incomplete", reason: "interrupted"},
		{name: "cancelled and discarded", reading: InterruptReading{Cancel: true, DiscardCalls: true}, terminal: "response.cancelled"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			turn := CallTurn(FunctionCallID("call_1", "exec_command", "{}"))
			turn.AwaitControl = true
			e := StartTest(t, WithInterrupt(tc.reading), WithScript(ScriptFunc(func(r *Request) Turn {
				if r.PreviousResponseID != "" {
					return TextTurn("next")
				}
				return turn
			})))
			c := dial(t, e, nil)
			c.send(onLane("a", nil, user("go")))
			r1 := c.until(typeIs("response.created"))[0].Response.ID
			c.until(callDone(t))
			c.send(map[string]any{"type": "response.interrupt", "response_id": r1, "mode": "discard_partial_items"})
			term := c.until(terminalOf(r1))
			end := term[len(term)-1]
			assert.Equal(t, tc.terminal, end.Type)
			assert.Equal(t, "a", *end.StreamID)
			if tc.reason != "" {
				require.NotNil(t, end.Response.IncompleteDetails)
				assert.Equal(t, tc.reason, end.Response.IncompleteDetails.Reason)
			} else {
				assert.Nil(t, end.Response.IncompleteDetails)
			}
			info, _ := e.Response(r1)
			assert.Equal(t, e.Creates()[0].Outcome, info.Status)
			withOutput := onLane("a", map[string]any{"previous_response_id": r1}, fout("call_1", "aborted"))
			without := onLane("a", map[string]any{"previous_response_id": r1}, user("next"))
			if tc.keepsCall {
				assert.Equal(t, []string{"call_1"}, info.PendingCalls)
				assert.Len(t, end.Response.Output, 2, "reasoning and call stay in the output")
				assert.Equal(t, "No tool output found for function call call_1.", c.create(without).errMessage(t))
				// The failure evicted r1; start over on a fresh connection.
				c = dial(t, e, nil)
				c.send(onLane("a", nil, user("go")))
				r1 = c.until(typeIs("response.created"))[0].Response.ID
				c.until(callDone(t))
				withOutput["previous_response_id"] = r1
				c.send(map[string]any{"type": "response.interrupt", "response_id": r1})
				c.until(terminalOf(r1))
				c.create(withOutput).responseID(t)
				return
			}
			assert.Empty(t, info.PendingCalls)
			assert.Empty(t, end.Response.Output, "the call is discarded, and the reasoning that led to it")
			c.create(without).responseID(t)
		})
	}
}

// TestInterruptDiscardsPartialItem interrupts a message mid-stream: the
// partial item is not part of the output.
func TestInterruptDiscardsPartialItem(t *testing.T) {
	e := StartTest(t, WithTextDeltas(40), WithScript(Sequence(Turn{Output: []Output{Say(string(make([]byte, 40)) + "x")}})),
		WithFaults(Faults{All: CreateFault{EventInterval: 5 * time.Millisecond}}))
	c := dial(t, e, nil)
	c.send(req(nil, user("go")))
	evs := c.until(typeIs("response.output_text.delta"))
	r1 := evs[0].Response.ID
	c.send(map[string]any{"type": "response.interrupt", "response_id": r1})
	evs = c.until(terminalOf(r1))
	end := evs[len(evs)-1]
	assert.Equal(t, "response.incomplete", end.Type)
	assert.Empty(t, end.Response.Output)
	assert.NotContains(t, eventTypes(evs), "response.output_item.done")
	assert.Equal(t, "interrupted", e.Controls()[0].Outcome)
}

func TestInterruptTargets(t *testing.T) {
	e := StartTest(t)
	c := dial(t, e, nil)
	r1 := c.create(req(nil, user("go"))).responseID(t)
	tests := []struct {
		name    string
		frame   map[string]any
		reply   bool
		code    string
		outcome string
	}{
		{name: "after the response ended", frame: map[string]any{"type": "response.interrupt", "response_id": r1}, outcome: "ignored"},
		{name: "unknown response", frame: map[string]any{"type": "response.interrupt", "response_id": "resp_nope"}, reply: true, code: CodeResponseNotFound, outcome: "error"},
		{name: "missing response_id", frame: map[string]any{"type": "response.interrupt"}, reply: true, code: CodeMissingRequiredParameter, outcome: "error"},
		{name: "unknown mode", frame: map[string]any{"type": "response.interrupt", "response_id": r1, "mode": "keep"}, reply: true, code: CodeInvalidValue, outcome: "error"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c.send(tc.frame)
			if tc.reply {
				ev, err := c.next(testTimeout)
				require.NoError(t, err)
				assert.Equal(t, "error", ev.Type)
				assert.Equal(t, tc.code, *ev.Error.Code)
			} else {
				c.silent(50 * time.Millisecond)
			}
			assert.Equal(t, tc.outcome, e.Controls()[i].Outcome)
		})
	}
	assert.Equal(t, int64(len(tests)), e.Stats().Interrupts)
}
