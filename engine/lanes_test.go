package engine_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
)

// itemWithID is an input item of the given type with an id (and a call id for calls and
// outputs), for the dedupe tests.
func itemWithID(typ, id, callID string) string {
	switch typ {
	case "function_call":
		return fmt.Sprintf(`{"type":"function_call","id":%q,"call_id":%q,"name":"exec_command","arguments":"{}"}`, id, callID)
	case "function_call_output":
		return fmt.Sprintf(`{"type":"function_call_output","id":%q,"call_id":%q,"output":"ok"}`, id, callID)
	}
	return fmt.Sprintf(`{"type":"message","id":%q,"role":"user","content":[{"type":"input_text","text":%q}]}`, id, id)
}

// TestLaneResponseFacts: the response facts of issue 13 (steering, injection, interrupts)
// reach post_response rules as the gateway gives them, and read as zero values when it
// gives none.
func TestLaneResponseFacts(t *testing.T) {
	tests := []struct {
		name string
		resp engine.Response
		when string
	}{
		{"zero values", engine.Response{ID: "resp_2"},
			`response.incomplete_reason == "" && !response.server_started && response.injected_outputs == [] && ` +
				`!response.interrupted && response.interrupt_mode == "" && response.terminal_calls == [] && !response.terminal_output`},
		{"steered", engine.Response{ID: "resp_1", Status: "incomplete", IncompleteReason: "steered"},
			`response.incomplete_reason == "steered" && response.status == "incomplete"`},
		{"server-started successor", engine.Response{ID: "resp_2", ServerStarted: true},
			`response.server_started`},
		{"injected outputs", engine.Response{ID: "resp_2", Injected: []string{"call_a", "call_c"}},
			`response.injected_outputs == ["call_a", "call_c"] && without(response.unanswered_calls, response.injected_outputs) == ["call_b"]`},
		{"interrupted with a mode", engine.Response{ID: "resp_2", Interrupted: true, InterruptMode: "discard_partial_items"},
			`response.interrupted && response.interrupt_mode == "discard_partial_items"`},
		{"terminal output without the calls", engine.Response{ID: "resp_2", TerminalOutput: true},
			`response.terminal_output && response.terminal_calls == [] && size(response.calls) == 3`},
		{"terminal output with some calls", engine.Response{ID: "resp_2", TerminalOutput: true, TerminalCalls: []string{"call_b"}},
			`response.terminal_output && intersect(response.unanswered_calls, response.terminal_calls) == ["call_b"]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := compileRules(t, fmt.Sprintf("  - id: facts\n    stage: post_response\n    when: >\n      %s\n", tc.when))
			resp := tc.resp
			resp.Items = parseItems(t, fc("call_a"), fc("call_b"), fc("call_c"))
			turn := responseTurn(t, create("resp_1", msg("user", "hi")), &resp)
			out := snap.Evaluate(engine.StagePostResponse, turn)
			require.NoError(t, out.Err)
			assert.Equal(t, []string{"facts"}, firedRules(out))
		})
	}
	for _, name := range []string{"response.incomplete_reason", "response.server_started", "response.injected_outputs",
		"response.interrupted", "response.interrupt_mode", "response.terminal_calls", "response.terminal_output"} {
		stages, ok := engine.VariableStages(name)
		require.True(t, ok, name)
		assert.Equal(t, []string{engine.StagePostResponse}, stages, name)
	}
}

// TestDedupeItems: dedupe_items keeps the first item of every non-empty id and removes the
// later ones, whatever their type; items without an id are never duplicates.
func TestDedupeItems(t *testing.T) {
	tests := []struct {
		name    string
		input   []string
		want    []string
		applied bool
	}{
		{"a replay followed by the client's resent items",
			[]string{itemWithID("message", "msg_u1", ""), itemWithID("function_call", "fc_a", "call_a"), itemWithID("function_call_output", "fco_a", "call_a"),
				itemWithID("function_call_output", "fco_a", "call_a"), itemWithID("message", "msg_u2", "")},
			[]string{"message:user", "function_call:call_a", "function_call_output:call_a", "message:user"}, true},
		{"the first of three is kept",
			[]string{itemWithID("function_call", "fc_a", "call_a"), itemWithID("function_call", "fc_a", "call_a"), itemWithID("function_call", "fc_a", "call_a")},
			[]string{"function_call:call_a"}, true},
		{"id-less items stay, even identical ones",
			[]string{msg("user", "continue"), msg("user", "continue"), fco("call_a", "ok"), fco("call_a", "ok")},
			[]string{"message:user", "message:user", "function_call_output:call_a", "function_call_output:call_a"}, false},
		{"a shared call id is not a shared id",
			[]string{itemWithID("function_call", "fc_a", "call_a"), itemWithID("function_call_output", "fco_a", "call_a")},
			[]string{"function_call:call_a", "function_call_output:call_a"}, false},
		{"no input", nil, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := compileRules(t, `
  - id: dedupe
    stage: pre_send
    when: "true"
    actions: [dedupe_items]
  - id: after
    stage: pre_send
    when: size(request.item_keys) == `+fmt.Sprint(len(tc.want))+`
`)
			turn := newTurn(t, create("resp_1", tc.input...))
			out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
			assert.Equal(t, tc.want, items(turn))
			assert.Equal(t, tc.applied, step(t, out, "dedupe").Actions[0].Applied)
			assert.True(t, step(t, out, "after").Fired, "later rules see the deduplicated input")
			assert.Equal(t, tc.applied, turn.Request.Modified())
		})
	}
	t.Run("not in post_response", func(t *testing.T) {
		_, diags := engine.Compile([]engine.Source{{Name: "test.yaml", Data: []byte(policyHeader +
			"  - {id: a, stage: post_response, when: 'true', actions: [dedupe_items]}\n")}})
		assert.Contains(t, diags.Errors().Error(), "action dedupe_items is not allowed in stage post_response (only in pre_send, on_upstream_error)")
	})
}

// TestEnforced: WithEnforced makes the named shadow rules act as enforced ones for one
// evaluation, and changes nothing else.
func TestEnforced(t *testing.T) {
	const rules = `
  - id: discard
    stage: post_response
    group: pending
    shadow: true
    when: response.interrupted
    actions:
      - record_pending: '[]'
  - id: keep
    stage: post_response
    group: pending
    when: "true"
    actions:
      - record_pending: response.unanswered_calls
  - id: plain
    stage: post_response
    when: "true"
`
	tests := []struct {
		name     string
		enforced []string
		fired    []string
		calls    []engine.PendingCall
	}{
		{"shadow: counted, its group still open", nil, []string{"~discard", "keep", "plain"},
			[]engine.PendingCall{{ID: "call_a", Kind: "function_call"}}},
		{"enforced: applies its actions and takes its group", []string{"discard"}, []string{"discard", "plain"},
			[]engine.PendingCall{}},
		{"enforcing a rule that is not shadow changes nothing", []string{"keep", "plain"}, []string{"~discard", "keep", "plain"},
			[]engine.PendingCall{{ID: "call_a", Kind: "function_call"}}},
		{"an unknown id changes nothing", []string{"nope"}, []string{"~discard", "keep", "plain"},
			[]engine.PendingCall{{ID: "call_a", Kind: "function_call"}}},
	}
	snap := compileRules(t, rules)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			turn := responseTurn(t, create("resp_1", msg("user", "hi")),
				&engine.Response{ID: "resp_2", Interrupted: true, Items: parseItems(t, fc("call_a"))})
			out := snap.Evaluate(engine.StagePostResponse, turn, engine.WithEnforced(tc.enforced...), engine.WithTrace())
			require.NoError(t, out.Err)
			assert.Equal(t, tc.fired, firedRules(out))
			require.NotNil(t, out.Effects.PutPending)
			assert.Equal(t, tc.calls, out.Effects.PutPending.Calls)
			assert.Equal(t, len(tc.fired) == 3, step(t, out, "discard").Shadow, "the trace says whether the rule was enforced")
		})
	}
}
