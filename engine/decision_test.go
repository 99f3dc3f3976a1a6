package engine_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
	"chainmend/responses"
)

// decisionCase is a turn as a stage begins it.
type decisionCase struct {
	name  string
	stage string
	turn  func(testing.TB) *engine.Turn
}

// transcriptOf parses a replay transcript the way the gateway loads one: type and call id
// only, no item id.
func transcriptOf(t testing.TB, raws ...string) []responses.Item {
	t.Helper()
	out := parseItems(t, raws...)
	for i := range out {
		out[i] = responses.Item{Raw: out[i].Raw, Type: out[i].Type, CallID: out[i].CallID}
	}
	return out
}

func decisionCases() []decisionCase {
	return []decisionCase{
		{"ESC: prev inferred, aborted injected", engine.StagePreSend, escTurn},
		{"full create: aborted inline", engine.StagePreSend, fullCreateTurn},
		{"item id as prev: rejected", engine.StagePreSend, func(t testing.TB) *engine.Turn {
			return newTurn(t, create("msg_123", msg("user", "hi")))
		}},
		{"strict: rejected with the pending calls", engine.StagePreSend, func(t testing.TB) *engine.Turn {
			turn := escTurn(t)
			turn.Mode = engine.ModeStrict
			return turn
		}},
		{"HTTP orphan output removed", engine.StagePreSend, func(t testing.TB) *engine.Turn {
			turn := newTurn(t, create("", fc("call_a"), fco("call_a", "ok"), fco("call_orphan", "x"), msg("user", "hi")))
			turn.Transport = engine.TransportHTTP
			return turn
		}},
		{"edited history: prev dropped, anchor cleared (item keys vs previous keys)", engine.StagePreSend, func(t testing.TB) *engine.Turn {
			turn := newTurn(t, create("resp_1", msg("user", "first, edited"), msg("user", "next")))
			turn.Anchor, turn.Cached = "resp_1", "resp_1"
			turn.Pending = engine.Pending{Known: true, ResponseID: "resp_1"}
			prev := newTurn(t, create("", msg("user", "first, edited"), msg("assistant", "answer")))
			turn.Previous = &engine.Previous{FieldDigests: turn.Request.FieldDigests()}
			for _, it := range prev.Request.Items() {
				turn.Previous.ItemKeys = append(turn.Previous.ItemKeys, it.Key())
			}
			return turn
		}},
		{"non-input field changed: replay with the transcript", engine.StagePreSend, func(t testing.TB) *engine.Turn {
			turn := newTurn(t, `{"type":"response.create","model":"gpt-5.5","store":false,"instructions":"be brief","previous_response_id":"resp_1","input":[`+msg("user", "more")+`]}`)
			turn.Anchor, turn.Cached = "resp_1", "resp_1"
			turn.Pending = engine.Pending{Known: true, ResponseID: "resp_1"}
			old := newTurn(t, `{"type":"response.create","model":"gpt-5.5","store":false,"instructions":"be verbose","input":[`+msg("user", "first")+`]}`)
			turn.Previous = &engine.Previous{FieldDigests: old.Request.FieldDigests(), ItemKeys: []string{old.Request.Items()[0].Key()}}
			turn.Replay = engine.Replay{Known: true, Available: true, LastResponseID: "resp_1",
				Items: transcriptOf(t, msg("user", "first"), `{"type":"message","id":"msg_9","role":"assistant","content":[]}`, fc("call_t"), fco("call_t", "ok"))}
			return turn
		}},
		{"row 3: a full create resets the anchor", engine.StagePreSend, func(t testing.TB) *engine.Turn {
			turn := newTurn(t, create("", msg("user", "new topic")))
			turn.Anchor = "resp_7"
			turn.Pending = engine.Pending{Known: true, ResponseID: "resp_7"}
			return turn
		}},
		{"previous response not found: replayed", engine.StageOnUpstreamError, func(t testing.TB) *engine.Turn {
			turn := newTurn(t, create("resp_1", fco("call_a", "ok")))
			turn.Anchor, turn.Cached = "resp_1", "resp_1"
			turn.Replay = engine.Replay{Known: true, Available: true, LastResponseID: "resp_1",
				Items: transcriptOf(t, msg("user", "go"), fc("call_a"))}
			turn.Error = &engine.UpstreamError{Status: 400, Type: "invalid_request_error", Code: "previous_response_not_found",
				Message: "Previous response with id 'resp_1' not found.", Param: "previous_response_id"}
			return turn
		}},
		{"server error: forwarded", engine.StageOnUpstreamError, func(t testing.TB) *engine.Turn {
			turn := newTurn(t, create("resp_1", fco("call_a", "ok")))
			turn.Error = &engine.UpstreamError{Status: 500, Code: "server_error"}
			return turn
		}},
		{"transport failure: retried", engine.StageOnUpstreamError, func(t testing.TB) *engine.Turn {
			turn := newTurn(t, create("", msg("user", "hi")))
			turn.Error = &engine.UpstreamError{Transport: true, Message: "connection reset"}
			return turn
		}},
		{"response with calls: bookkept", engine.StagePostResponse, func(t testing.TB) *engine.Turn {
			turn := responseTurn(t, create("resp_1", fco("call_a", "ok")), &engine.Response{ID: "resp_2", Status: "completed",
				Event: "response.completed", Items: parseItems(t, fc("call_b"), ctc("call_c"), msg("assistant", "done")),
				Injected: []string{"call_c"}})
			turn.Anchor = "resp_1"
			turn.Replay.Available, turn.Replay.LastResponseID = true, "resp_1"
			return turn
		}},
		{"interrupted response", engine.StagePostResponse, func(t testing.TB) *engine.Turn {
			return responseTurn(t, create("", msg("user", "go")), &engine.Response{ID: "resp_3", Status: "incomplete",
				Event: "response.incomplete", Items: parseItems(t, fc("call_x"), fc("call_y")), Interrupted: true,
				InterruptMode: "discard_partial_items", TerminalCalls: []string{"call_x"}, TerminalOutput: true})
		}},
	}
}

// stageResult is what a replay compares.
type stageResult struct {
	Verdict engine.Verdict
	Reject  *engine.Rejection
	Fired   []engine.Fired
	Effects engine.EffectsFacts
	Prev    string
	Items   []engine.ItemFacts
}

func resultOf(out *engine.Outcome, req engine.RequestFacts) stageResult {
	return stageResult{Verdict: out.Verdict, Reject: out.Reject, Fired: out.Fired, Effects: engine.EffectsFactsOf(&out.Effects),
		Prev: req.PreviousResponseID(), Items: req.Items}
}

// TestRebuildEvaluatesAlike: a turn rebuilt from its facts (through JSON, as the decision log
// stores them) gets the outcome the turn itself gets from the default policies: the same
// verdict, rules, effects, previous_response_id and item structure, made outputs included.
func TestRebuildEvaluatesAlike(t *testing.T) {
	snap := loadDefaults(t, defaultPolicies)
	for _, tc := range decisionCases() {
		t.Run(tc.name, func(t *testing.T) {
			turn := tc.turn(t)
			data, err := json.Marshal(engine.FactsOf(turn))
			require.NoError(t, err)
			var facts engine.TurnFacts
			require.NoError(t, json.Unmarshal(data, &facts))

			out := snap.Evaluate(tc.stage, turn)
			require.NoError(t, out.Err)
			require.NotEmpty(t, out.Fired)
			want := resultOf(out, engine.RequestFactsOf(turn.Request, turn.Replay.Items))

			rb, err := facts.Rebuild()
			require.NoError(t, err)
			rout := snap.Evaluate(tc.stage, rb.Turn)
			require.NoError(t, rout.Err)
			got := resultOf(rout, rb.Request())
			assert.Equal(t, want, got)
			assert.Equal(t, turn.Request.Modified(), rb.Changed(), "a stage that changed the request changes the rebuilt one")
		})
	}
}

// TestRebuildVariables: every variable the probe rules read has the same value in a turn and
// in the turn rebuilt from its facts.
func TestRebuildVariables(t *testing.T) {
	probes := map[string][]string{
		engine.StagePreSend: {
			`request.type == "response.create" && request.model == "gpt-5.5"`,
			`request.store_disabled && !request.store && request.generate && request.has_input`,
			`request.fields == ["type", "model", "store", "instructions", "previous_response_id", "input"]`,
			`request.changed_fields == ["instructions", "previous_response_id"]`,
			`request.item_types == ["message", "function_call", "function_call_output", "message", "function_call_output"]`,
			`request.roles == ["user", "user"] && request.calls == ["call_a"] && request.outputs == ["call_a", "call_o"]`,
			`request.orphan_outputs == ["call_o"] && size(request.unanswered_calls) == 0`,
			`size(request.item_keys) == 5 && request.item_keys[0] == previous.item_keys[0]`,
			`request.identified_keys == ["function_call:call_a", "function_call_output:call_a", "function_call_output:call_o"]`,
			`overlaps(request.identified_keys, previous.item_keys) && !starts_with(request.item_keys, previous.item_keys)`,
			`request.item_keys[3] == previous.item_keys[1]`,
			`session.anchor == "resp_1" && pending.known && pending.calls == ["call_p"] && pending.kinds["call_p"] == "custom_tool_call"`,
			`replay.known && replay.available && replay.complete && !replay.trimmed && replay.last_response_id == "resp_1"`,
			`upstream.cached == "resp_0" && !upstream.fresh && previous.present`,
			`turn.number == 2 && turn.mode == "repair" && turn.transport == "websocket" && turn.lane == "l1" && !turn.replayed`,
		},
	}
	turn := newTurn(t, `{"type":"response.create","model":"gpt-5.5","store":false,"instructions":"new words","previous_response_id":"resp_1","input":[`+
		msg("user", "same start")+`,`+fc("call_a")+`,`+fco("call_a", "ok")+`,`+msg("user", "later")+`,`+fco("call_o", "x")+`]}`)
	old := newTurn(t, `{"type":"response.create","model":"gpt-5.5","store":false,"instructions":"old words","input":[`+
		msg("user", "same start")+`,`+msg("user", "later")+`]}`)
	turn.Lane, turn.Anchor, turn.Cached = "l1", "resp_1", "resp_0"
	turn.Pending = engine.Pending{Known: true, ResponseID: "resp_1", Calls: []engine.PendingCall{{ID: "call_p", Kind: "custom_tool_call"}}}
	turn.Replay = engine.Replay{Known: true, Available: true, LastResponseID: "resp_1"}
	turn.Previous = &engine.Previous{FieldDigests: old.Request.FieldDigests(), ItemKeys: []string{
		old.Request.Items()[0].Key(), old.Request.Items()[1].Key(), "function_call:call_a"}}

	rules := ""
	for i, p := range probes[engine.StagePreSend] {
		j, _ := json.Marshal(p)
		rules += "  - {id: probe-" + string(rune('a'+i)) + ", stage: pre_send, when: " + string(j) + "}\n"
	}
	snap := compileRules(t, rules)
	data, err := json.Marshal(engine.FactsOf(turn))
	require.NoError(t, err)
	var facts engine.TurnFacts
	require.NoError(t, json.Unmarshal(data, &facts))
	rb, err := facts.Rebuild()
	require.NoError(t, err)

	out := snap.Evaluate(engine.StagePreSend, turn)
	require.Len(t, out.Fired, len(probes[engine.StagePreSend]), "every probe holds for the turn itself: %v", out.Fired)
	rout := snap.Evaluate(engine.StagePreSend, rb.Turn)
	assert.Equal(t, out.Fired, rout.Fired)
}

// TestFactsHoldNoContent: the facts of a turn carry no text, output, argument, encrypted
// content or credential of it, whatever stage it is in.
func TestFactsHoldNoContent(t *testing.T) {
	secrets := []string{"SECRET-TEXT-1", "SECRET-OUTPUT-2", "SECRET-ARGS-3", "SECRET-ENC-4", "SECRET-INSTRUCTIONS-5",
		"sk-live-0123456789abcdef", "SECRET-RESPONSE-6", "SECRET-META-7"}
	req := `{"type":"response.create","model":"gpt-5.5","store":false,"instructions":"SECRET-INSTRUCTIONS-5",` +
		`"metadata":{"note":"SECRET-META-7"},"user":"SECRET-META-7","input":[` +
		msg("user", "SECRET-TEXT-1") + `,` +
		`{"type":"function_call","call_id":"call_a","name":"exec","arguments":"{\"cmd\":\"SECRET-ARGS-3\"}"},` +
		fco("call_a", "SECRET-OUTPUT-2") + `,` +
		`{"type":"reasoning","id":"rs_1","encrypted_content":"SECRET-ENC-4","summary":[]}]}`
	turn := newTurn(t, req)
	turn.Previous = &engine.Previous{FieldDigests: turn.Request.FieldDigests(), ItemKeys: []string{turn.Request.Items()[0].Key()}}
	turn.Replay = engine.Replay{Known: true, Available: true, Items: transcriptOf(t, msg("user", "SECRET-TEXT-1"))}
	turn.Error = &engine.UpstreamError{Status: 401, Code: "invalid_api_key",
		Message: "Incorrect API key provided: sk-live-0123456789abcdef. Authorization: Bearer sk-live-0123456789abcdef"}
	turn.Response = &engine.Response{ID: "resp_1", Items: parseItems(t, msg("assistant", "SECRET-RESPONSE-6"))}
	out := compileRules(t, "  - {id: r, stage: pre_send, when: 'true', actions: [{insert_outputs: {calls: '[\"call_z\"]', output: '\"aborted\"'}}]}\n").
		Evaluate(engine.StagePreSend, turn)
	require.Len(t, out.Fired, 1)

	data, err := json.Marshal(engine.FactsOf(turn))
	require.NoError(t, err)
	for _, s := range secrets {
		assert.NotContains(t, string(data), s)
	}
	assert.NotContains(t, string(data), "aborted", "a made output is a digest")
	var facts engine.TurnFacts
	require.NoError(t, json.Unmarshal(data, &facts))
	assert.Contains(t, facts.Error.Message, "Incorrect API key provided")
	assert.Equal(t, `"gpt-5.5"`, string(facts.Request.Fields[1].Value), "the model is a recorded scalar")
	var types []string
	for _, it := range facts.Request.Items {
		types = append(types, it.Type)
	}
	assert.Equal(t, []string{"function_call_output", "message", "function_call", "function_call_output", "reasoning"}, types)
	assert.NotEmpty(t, facts.Request.Items[0].Made, "the output the rule inserted is marked as made")
	assert.Empty(t, facts.Request.Items[3].Made, "the client's output is not")
	assert.True(t, facts.Request.Items[4].Encrypted)
}

func TestScrubMessage(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"Previous response with id 'resp_123' not found.", "Previous response with id 'resp_123' not found."},
		{"Incorrect API key provided: sk-proj-****abcd.", "Incorrect API key provided: [redacted]"},
		{"header Authorization: Bearer abc.def.ghi was refused", "header Authorization: Bearer [redacted] was refused"},
		{"Duplicate item found with id rs_1.", "Duplicate item found with id rs_1."},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, engine.ScrubMessage(tc.in), tc.in)
	}
}
