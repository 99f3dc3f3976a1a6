package engine_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
	"chainmend/responses"
)

// TestRuleOrdering: rules run in file order, and each sees the mutations of the rules before it.
func TestRuleOrdering(t *testing.T) {
	snap := compileRules(t, `
  - id: set-prev
    stage: pre_send
    when: request.previous_response_id == ""
    actions:
      - set_previous_response_id: '"resp_1"'
  - id: sees-prev
    stage: pre_send
    when: request.previous_response_id == "resp_1"
    actions:
      - insert_outputs: {calls: '["call_a"]', output: '"x"'}
  - id: sees-output
    stage: pre_send
    when: '"call_a" in request.outputs && size(request.orphan_outputs) == 1'
    actions:
      - drop_previous_response_id
  - id: sees-drop
    stage: pre_send
    when: request.previous_response_id == ""
  - id: never-set
    stage: pre_send
    when: request.previous_response_id == "resp_1"
`)
	turn := newTurn(t, create("", msg("user", "hi")))
	out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
	require.NoError(t, out.Err)
	assert.Equal(t, []string{"set-prev", "sees-prev", "sees-output", "sees-drop"}, firedRules(out))
	assert.Equal(t, engine.VerdictSend, out.Verdict)
	assert.Equal(t, []string{"function_call_output:call_a", "message:user"}, items(turn))
	assert.NotContains(t, requestJSON(t, turn), "previous_response_id")
	// The trace lists every rule in order with its value.
	var order []string
	for _, s := range out.Trace {
		order = append(order, s.Rule)
		assert.True(t, s.Evaluated, s.Rule)
	}
	assert.Equal(t, []string{"set-prev", "sees-prev", "sees-output", "sees-drop", "never-set"}, order)
	assert.False(t, step(t, out, "never-set").Value)

	// WithDiffs records the request around each fired rule.
	turn = newTurn(t, create("", msg("user", "hi")))
	out = snap.Evaluate(engine.StagePreSend, turn, engine.WithDiffs())
	s := step(t, out, "set-prev")
	assert.NotContains(t, string(s.Before), "resp_1")
	assert.Contains(t, string(s.After), `"previous_response_id":"resp_1"`)
	assert.Equal(t, string(s.After), string(step(t, out, "sees-prev").Before))
}

// TestThenStop: a fired rule with then: stop ends its stage; continue (the default) does not.
func TestThenStop(t *testing.T) {
	tests := []struct {
		name  string
		then  string
		fired []string
	}{
		{"stop", "then: stop", []string{"first", "stopper"}},
		{"continue", "then: continue", []string{"first", "stopper", "after"}},
		{"default is continue", "", []string{"first", "stopper", "after"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := compileRules(t, `
  - id: first
    stage: pre_send
    when: "true"
  - id: stopper
    stage: pre_send
    when: request.previous_response_id == ""
    `+tc.then+`
  - id: after
    stage: pre_send
    when: "true"
`)
			out := snap.Evaluate(engine.StagePreSend, newTurn(t, create("", msg("user", "hi"))), engine.WithTrace())
			assert.Equal(t, tc.fired, firedRules(out))
			assert.Equal(t, engine.VerdictSend, out.Verdict)
			if tc.then == "then: stop" {
				// The stopped rule is not even evaluated.
				for _, s := range out.Trace {
					assert.NotEqual(t, "after", s.Rule)
				}
			}
		})
	}
	t.Run("stop of a rule that does not fire", func(t *testing.T) {
		snap := compileRules(t, `
  - id: stopper
    stage: pre_send
    when: request.previous_response_id != ""
    then: stop
  - id: after
    stage: pre_send
    when: "true"
`)
		out := snap.Evaluate(engine.StagePreSend, newTurn(t, create("", msg("user", "hi"))))
		assert.Equal(t, []string{"after"}, firedRules(out))
	})
}

// TestGroups: in a group the first matching rule wins; other groups and ungrouped rules go on.
func TestGroups(t *testing.T) {
	snap := compileRules(t, `
  - id: g1-no
    stage: pre_send
    group: g1
    when: request.previous_response_id == "nope"
  - id: g1-first
    stage: pre_send
    group: g1
    when: size(request.outputs) > 0
  - id: g1-second
    stage: pre_send
    group: g1
    when: "true"
  - id: ungrouped
    stage: pre_send
    when: "true"
  - id: g2-only
    stage: pre_send
    group: g2
    when: "true"
  - id: g1-late
    stage: pre_send
    group: g1
    when: "true"
`)
	tests := []struct {
		name    string
		request string
		fired   []string
	}{
		{"first match wins", create("", fco("call_a", "ok")), []string{"g1-first", "ungrouped", "g2-only"}},
		{"fall through to the next member", create("", msg("user", "hi")), []string{"g1-second", "ungrouped", "g2-only"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := snap.Evaluate(engine.StagePreSend, newTurn(t, tc.request), engine.WithTrace())
			assert.Equal(t, tc.fired, firedRules(out))
			assert.Equal(t, "group g1 already matched", step(t, out, "g1-late").Skipped)
			assert.False(t, step(t, out, "g1-late").Evaluated)
		})
	}
}

// TestShadow: a shadow rule is evaluated, fired and counted, but changes nothing.
func TestShadow(t *testing.T) {
	t.Run("no mutation, stop does not stop", func(t *testing.T) {
		snap := compileRules(t, `
  - id: shadow-drop
    stage: pre_send
    shadow: true
    when: request.previous_response_id != ""
    actions:
      - drop_previous_response_id
      - insert_outputs: {calls: '["call_x"]', output: '"aborted"'}
      - clear_anchor
    then: stop
  - id: sees-prev
    stage: pre_send
    when: request.previous_response_id == "resp_1" && session.anchor == "resp_1"
`)
		turn := newTurn(t, create("resp_1", msg("user", "hi")))
		turn.Anchor = "resp_1"
		before := string(turn.Request.Bytes())
		out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
		assert.Equal(t, []string{"~shadow-drop", "sees-prev"}, firedRules(out))
		assert.True(t, out.Fired[0].Shadow)
		assert.Equal(t, before, string(turn.Request.Bytes()))
		assert.False(t, turn.Request.Modified())
		assert.False(t, out.ClearsAnchor())
		assert.Equal(t, "resp_1", turn.Anchor)
		assert.Empty(t, step(t, out, "shadow-drop").Actions, "a shadow rule applies no action")
	})
	t.Run("shadow reject does not reject", func(t *testing.T) {
		snap := compileRules(t, `
  - id: shadow-reject
    stage: pre_send
    shadow: true
    when: "true"
    actions:
      - reject: {code: '"x"', message: '"y"'}
  - id: after
    stage: pre_send
    when: "true"
`)
		out := snap.Evaluate(engine.StagePreSend, newTurn(t, create("", msg("user", "hi"))))
		assert.Equal(t, engine.VerdictSend, out.Verdict)
		assert.Nil(t, out.Reject)
		assert.Equal(t, []string{"~shadow-reject", "after"}, firedRules(out))
	})
	t.Run("shadow match does not take its group", func(t *testing.T) {
		snap := compileRules(t, `
  - id: shadow-candidate
    stage: pre_send
    group: keep_drop
    shadow: true
    when: "true"
  - id: enforced
    stage: pre_send
    group: keep_drop
    when: request.previous_response_id != ""
    actions:
      - drop_previous_response_id
`)
		turn := newTurn(t, create("resp_1", msg("user", "hi")))
		out := snap.Evaluate(engine.StagePreSend, turn)
		knownBug(t, len(out.Fired) == 1,
			"eval.go runStage marks a shadow rule's group as matched, so watching a new rule in shadow mode disables the enforced rules after it in its group")
		assert.Equal(t, []string{"~shadow-candidate", "enforced"}, firedRules(out))
		assert.Empty(t, turn.Request.PreviousResponseID())
	})
}

// TestActionGuards: an action's if decides whether that action runs; the rule fires either way.
func TestActionGuards(t *testing.T) {
	snap := compileRules(t, `
  - id: guarded
    stage: pre_send
    when: size(request.unanswered_calls) > 0
    actions:
      - if: turn.mode == "strict"
        reject:
          code: '"invariant_violation"'
          message: '"no output for " + request.unanswered_calls.join(", ")'
          param: '"input"'
      - if: turn.mode == "repair"
        insert_outputs: {calls: request.unanswered_calls, output: '"aborted"'}
      - if: 'false'
        clear_anchor: {}
`)
	tests := []struct {
		mode    string
		verdict engine.Verdict
		items   []string
		applied []bool
	}{
		{engine.ModeRepair, engine.VerdictSend, []string{"function_call:call_a", "function_call_output:call_a", "message:user"}, []bool{false, true, false}},
		{engine.ModeStrict, engine.VerdictReject, []string{"function_call:call_a", "message:user"}, []bool{true}},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			turn := newTurn(t, create("", fc("call_a"), msg("user", "hi")))
			turn.Mode = tc.mode
			out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
			assert.Equal(t, []string{"guarded"}, firedRules(out))
			assert.Equal(t, tc.verdict, out.Verdict)
			assert.Equal(t, tc.items, items(turn))
			var applied []bool
			for _, a := range step(t, out, "guarded").Actions {
				applied = append(applied, a.Applied)
				if !a.Applied && a.Kind != engine.ActReject {
					assert.Equal(t, "if is false", a.Note)
				}
			}
			assert.Equal(t, tc.applied, applied)
			assert.False(t, out.ClearsAnchor())
			if tc.mode == engine.ModeStrict {
				require.NotNil(t, out.Reject)
				assert.Equal(t, &engine.Rejection{Status: 400, Type: "invalid_request_error", Code: "invariant_violation",
					Message: "no output for call_a", Param: "input"}, out.Reject)
			}
		})
	}
}

// TestRunStage: run_stage evaluates a sub-stage in place; the caller continues after it. A
// stop inside the sub-stage ends the sub-stage only; a terminal action ends everything.
func TestRunStage(t *testing.T) {
	rules := `
  - id: before
    stage: pre_send
    when: "true"
  - id: enter
    stage: pre_send
    when: "true"
    actions:
      - run_stage: sub
      - set_previous_response_id: '"resp_after_sub"'
  - id: after
    stage: pre_send
    when: request.previous_response_id == "resp_after_sub" && !request.has_input || size(request.outputs) > 0
  - id: sub-one
    stage: sub
    when: size(request.unanswered_calls) > 0
    actions:
      - insert_outputs: {calls: request.unanswered_calls, output: '"aborted"'}
  - id: sub-stop
    stage: sub
    when: request.model == "stop-here"
    then: stop
  - id: sub-reject
    stage: sub
    when: request.model == "reject-here"
    actions:
      - reject: {code: '"sub"', message: '"rejected in sub"'}
  - id: sub-last
    stage: sub
    when: "true"
`
	snap := compileRules(t, rules)
	tests := []struct {
		name    string
		model   string
		fired   []string
		stages  []string
		verdict engine.Verdict
		prev    string
	}{
		{"sub-stage runs in place", "gpt-5.5", []string{"before", "enter", "sub-one", "sub-last", "after"},
			[]string{"pre_send", "pre_send", "sub", "sub", "pre_send"}, engine.VerdictSend, "resp_after_sub"},
		{"stop ends the sub-stage only", "stop-here", []string{"before", "enter", "sub-one", "sub-stop", "after"},
			[]string{"pre_send", "pre_send", "sub", "sub", "pre_send"}, engine.VerdictSend, "resp_after_sub"},
		{"a terminal action ends the evaluation", "reject-here", []string{"before", "enter", "sub-one", "sub-reject"},
			[]string{"pre_send", "pre_send", "sub", "sub"}, engine.VerdictReject, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			turn := newTurn(t, strings.Replace(create("", fc("call_a")), "gpt-5.5", tc.model, 1))
			out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
			require.NoError(t, out.Err)
			assert.Equal(t, tc.fired, firedRules(out))
			var stages []string
			for _, f := range out.Fired {
				stages = append(stages, f.Stage)
			}
			assert.Equal(t, tc.stages, stages)
			assert.Equal(t, tc.verdict, out.Verdict)
			assert.Equal(t, tc.prev, turn.Request.PreviousResponseID())
			assert.Equal(t, []string{"function_call:call_a", "function_call_output:call_a"}, items(turn))
			// The entering rule's trace step records its actions even though the sub-stage
			// appended steps in between.
			acts := step(t, out, "enter").Actions
			require.NotEmpty(t, acts)
			assert.Equal(t, engine.ActRunStage, acts[0].Kind)
		})
	}
	t.Run("nesting deeper than the bound stops the turn", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("  - {id: enter, stage: pre_send, when: 'true', actions: [{set_previous_response_id: '\"resp_kept\"'}, {run_stage: s0}]}\n")
		for i := range 12 {
			fmt.Fprintf(&b, "  - {id: r%d, stage: s%d, when: 'true', actions: [{run_stage: s%d}]}\n", i, i, i+1)
		}
		b.WriteString("  - {id: r12, stage: s12, when: 'true'}\n")
		deep := compileRules(t, b.String())
		turn := newTurn(t, create("", msg("user", "hi")))
		out := deep.Evaluate(engine.StagePreSend, turn)
		require.Error(t, out.Err)
		assert.Contains(t, out.Err.Error(), "nested deeper")
		assert.Equal(t, "resp_kept", turn.Request.PreviousResponseID())
		assert.NotContains(t, firedRules(out), "r12")
	})
	t.Run("sub-stage rules are not entry rules", func(t *testing.T) {
		out := snap.Evaluate("sub", newTurn(t, create("", fc("call_a"))))
		assert.Equal(t, []string{"sub-one", "sub-last"}, firedRules(out))
		out = snap.Evaluate(engine.StageOnUpstreamError, newTurn(t, create("", fc("call_a"))))
		assert.Empty(t, out.Fired)
		assert.Equal(t, engine.VerdictForward, out.Verdict, "on_upstream_error forwards when no rule decides")
	})
}

// TestTerminalActions: reject ends pre_send, retry and forward end on_upstream_error.
func TestTerminalActions(t *testing.T) {
	tests := []struct {
		name    string
		stage   string
		action  string
		verdict engine.Verdict
		reject  *engine.Rejection
	}{
		{"reject with defaults", engine.StagePreSend, `reject: {code: '"c"', message: '"m"'}`, engine.VerdictReject,
			&engine.Rejection{Status: 400, Type: "invalid_request_error", Code: "c", Message: "m"}},
		{"reject with every argument", engine.StagePreSend,
			`reject: {code: '"tool_output_not_found"', message: '"No tool output found for function call " + request.calls[0] + "."', status: "409", type: '"conflict"', param: '"input"'}`,
			engine.VerdictReject,
			&engine.Rejection{Status: 409, Type: "conflict", Code: "tool_output_not_found", Message: "No tool output found for function call call_a.", Param: "input"}},
		{"retry", engine.StageOnUpstreamError, "retry", engine.VerdictRetry, nil},
		{"forward", engine.StageOnUpstreamError, "forward", engine.VerdictForward, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := compileRules(t, `
  - id: terminal
    stage: `+tc.stage+`
    when: "true"
    actions:
      - `+tc.action+`
      - set_previous_response_id: '"resp_never"'
  - id: after
    stage: `+tc.stage+`
    when: "true"
    actions:
      - drop_previous_response_id
`)
			turn := newTurn(t, create("resp_1", fc("call_a")))
			turn.Error = &engine.UpstreamError{Status: 400, Code: "previous_response_not_found"}
			out := snap.Evaluate(tc.stage, turn, engine.WithTrace())
			assert.Equal(t, tc.verdict, out.Verdict)
			assert.Equal(t, tc.reject, out.Reject)
			assert.Equal(t, []string{"terminal"}, firedRules(out))
			assert.Equal(t, "resp_1", turn.Request.PreviousResponseID(), "nothing runs after a terminal action")
			assert.Len(t, step(t, out, "terminal").Actions, 1)
		})
	}
}

// TestClearAnchor: after clear_anchor, later rules read session.anchor as "" and no pending
// calls, and the outcome tells the gateway to clear the anchor.
func TestClearAnchor(t *testing.T) {
	snap := compileRules(t, `
  - id: before
    stage: pre_send
    when: session.anchor == "resp_1" && size(pending.calls) == 1 && pending.kinds["call_p"] == "custom_tool_call"
  - id: clear
    stage: pre_send
    when: session.anchor != ""
    actions:
      - clear_anchor
  - id: sees-anchor
    stage: pre_send
    when: session.anchor != ""
  - id: sees-cleared
    stage: pre_send
    when: session.anchor == "" && size(pending.calls) == 0 && size(pending.kinds) == 0
`)
	turn := newTurn(t, create("", msg("user", "hi")))
	turn.Anchor = "resp_1"
	turn.Pending = engine.Pending{Known: true, ResponseID: "resp_1", Calls: []engine.PendingCall{{ID: "call_p", Kind: "custom_tool_call"}}}
	out := snap.Evaluate(engine.StagePreSend, turn)
	assert.Equal(t, []string{"before", "clear", "sees-cleared"}, firedRules(out))
	assert.True(t, out.ClearsAnchor())
	assert.Empty(t, turn.Anchor)
}

// TestInsertOutputs covers placement and the output type that answers each call kind.
func TestInsertOutputs(t *testing.T) {
	tests := []struct {
		name      string
		placement string
		calls     string
		request   string
		pending   []engine.PendingCall
		want      []string
	}{
		{
			name: "auto: after the call when it is in the input", placement: "auto", calls: `["call_b"]`,
			request: create("", msg("user", "go"), fc("call_a"), fco("call_a", "ok"), fc("call_b"), msg("user", "next")),
			want:    []string{"message:user", "function_call:call_a", "function_call_output:call_a", "function_call:call_b", "function_call_output:call_b", "message:user"},
		},
		{
			name: "auto: before the first new item when the call is pending", placement: "auto", calls: `["call_p"]`,
			request: create("resp_1", fco("call_a", "ok"), msg("user", "next")),
			pending: []engine.PendingCall{{ID: "call_a", Kind: "function_call"}, {ID: "call_p", Kind: "function_call"}},
			want:    []string{"function_call_output:call_a", "function_call_output:call_p", "message:user"},
		},
		{
			name: "placement omitted is auto", placement: "", calls: `["call_b", "call_p"]`,
			request: create("", fco("call_x", "ok"), msg("user", "go"), fc("call_b")),
			pending: []engine.PendingCall{{ID: "call_p", Kind: "function_call"}},
			want:    []string{"function_call_output:call_x", "function_call_output:call_p", "message:user", "function_call:call_b", "function_call_output:call_b"},
		},
		{
			name: "after_call skips calls outside the input", placement: "after_call", calls: `["call_p", "call_b"]`,
			request: create("", msg("user", "go"), fc("call_b"), msg("user", "next")),
			pending: []engine.PendingCall{{ID: "call_p", Kind: "function_call"}},
			want:    []string{"message:user", "function_call:call_b", "function_call_output:call_b", "message:user"},
		},
		{
			name: "before_first_new_item keeps the order of the ids", placement: "before_first_new_item", calls: `["call_p", "call_q"]`,
			request: create("resp_1", msg("user", "next")),
			pending: []engine.PendingCall{{ID: "call_p", Kind: "function_call"}, {ID: "call_q", Kind: "function_call"}},
			want:    []string{"function_call_output:call_p", "function_call_output:call_q", "message:user"},
		},
		{
			name: "before_first_new_item on an empty input", placement: "before_first_new_item", calls: `["call_p"]`,
			request: create("resp_1"),
			pending: []engine.PendingCall{{ID: "call_p", Kind: "function_call"}},
			want:    []string{"function_call_output:call_p"},
		},
		{
			name: "already answered calls are left alone", placement: "auto", calls: `["call_a", "call_a"]`,
			request: create("", fc("call_a"), fco("call_a", "ok")),
			want:    []string{"function_call:call_a", "function_call_output:call_a"},
		},
		{
			name: "custom_tool_call in the input gets custom_tool_call_output", placement: "auto", calls: `["call_c"]`,
			request: create("", ctc("call_c"), msg("user", "next")),
			want:    []string{"custom_tool_call:call_c", "custom_tool_call_output:call_c", "message:user"},
		},
		{
			name: "local_shell_call in the input gets function_call_output", placement: "auto", calls: `["call_l"]`,
			request: create("", lsc("call_l")),
			want:    []string{"local_shell_call:call_l", "function_call_output:call_l"},
		},
		{
			name: "pending kinds map to their output types", placement: "auto", calls: `["call_c", "call_l", "call_f", "call_u"]`,
			request: create("resp_1", msg("user", "next")),
			pending: []engine.PendingCall{{ID: "call_c", Kind: "custom_tool_call"}, {ID: "call_l", Kind: "local_shell_call"}, {ID: "call_f", Kind: "function_call"}},
			want: []string{"custom_tool_call_output:call_c", "function_call_output:call_l", "function_call_output:call_f",
				"function_call_output:call_u", "message:user"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			placement := ""
			if tc.placement != "" {
				placement = ", placement: " + tc.placement
			}
			snap := compileRules(t, `
  - id: insert
    stage: pre_send
    when: "true"
    actions:
      - insert_outputs: {calls: '`+tc.calls+`', output: '"aborted " + turn.transport'`+placement+`}
`)
			turn := newTurn(t, tc.request)
			turn.Pending = engine.Pending{Known: true, ResponseID: "resp_1", Calls: tc.pending}
			out := snap.Evaluate(engine.StagePreSend, turn)
			require.NoError(t, out.Err)
			assert.Equal(t, tc.want, items(turn))
			for _, it := range turn.Request.Items() {
				if it.IsOutput() && !strings.Contains(tc.request, `"call_id":"`+it.CallID+`","output"`) {
					assert.Equal(t, "aborted websocket", outputText(t, turn, it.CallID), it.CallID)
				}
			}
			// The request stays valid JSON with the new items.
			in := requestJSON(t, turn)["input"].([]any)
			assert.Len(t, in, len(tc.want))
		})
	}
}

// TestRemoveOutputs removes the outputs of the given call ids and nothing else.
func TestRemoveOutputs(t *testing.T) {
	tests := []struct {
		name  string
		expr  string
		want  []string
		fired bool
	}{
		{"orphans", "request.orphan_outputs", []string{"function_call:call_a", "function_call_output:call_a", "message:user"}, true},
		{"named ids, calls stay", `["call_a", "call_nope"]`, []string{"function_call:call_a", "function_call_output:call_o1", "function_call_output:call_o2", "message:user"}, true},
		{"nothing to remove", `[]`, []string{"function_call:call_a", "function_call_output:call_a", "function_call_output:call_o1", "function_call_output:call_o2", "message:user"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := compileRules(t, `
  - id: remove
    stage: pre_send
    when: "true"
    actions:
      - remove_outputs: '`+tc.expr+`'
  - id: paired
    stage: pre_send
    when: size(request.orphan_outputs) == 0
`)
			turn := newTurn(t, create("", fc("call_a"), fco("call_a", "ok"), fco("call_o1", "x"), fco("call_o2", "y"), msg("user", "hi")))
			out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
			assert.Equal(t, tc.want, items(turn))
			assert.Equal(t, tc.name == "orphans", step(t, out, "paired").Fired)
			assert.Equal(t, tc.name != "nothing to remove", step(t, out, "remove").Actions[0].Applied)
		})
	}
}

// TestReplay: the replay action puts the transcript first, then the request's own items, drops
// previous_response_id, and fetches a lazily loaded transcript only when it runs.
func TestReplay(t *testing.T) {
	transcript := func(t *testing.T) []responses.Item {
		var out []responses.Item
		for _, raw := range []string{msg("developer", "base"), msg("user", "first"), fc("call_a")} {
			it, err := responses.ParseItem([]byte(raw))
			require.NoError(t, err)
			out = append(out, it)
		}
		return out
	}
	rules := `
  - id: replay
    stage: pre_send
    when: request.previous_response_id != "" && replay.complete && request.model != "no-replay"
    actions:
      - replay
  - id: after
    stage: pre_send
    when: turn.replayed && request.previous_response_id == "" && size(request.unanswered_calls) == 0
  - id: replay-again
    stage: pre_send
    when: turn.replayed
    actions:
      - replay: {}
`
	snap := compileRules(t, rules)
	want := []string{"message:developer", "message:user", "function_call:call_a", "function_call_output:call_a", "message:user"}

	t.Run("lazy load runs once, when the action runs", func(t *testing.T) {
		turn := newTurn(t, create("resp_1", fco("call_a", "done"), msg("user", "next")))
		loads := 0
		turn.Replay = engine.Replay{Available: true, LastResponseID: "resp_1", Load: func() ([]responses.Item, error) {
			loads++
			return transcript(t), nil
		}}
		out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
		require.NoError(t, out.Err)
		assert.Equal(t, 1, loads)
		assert.True(t, turn.Replayed)
		assert.Empty(t, turn.Request.PreviousResponseID())
		assert.NotContains(t, requestJSON(t, turn), "previous_response_id")
		assert.Equal(t, []string{"replay", "after", "replay-again"}, firedRules(out))
		knownBug(t, len(items(turn)) != len(want),
			"a second replay action prepends the transcript again (context sent twice); replay should be a no-op once turn.replayed is set")
		assert.Equal(t, want, items(turn))
	})
	t.Run("no load when no rule replays", func(t *testing.T) {
		turn := newTurn(t, strings.Replace(create("resp_1", fco("call_a", "done")), "gpt-5.5", "no-replay", 1))
		turn.Replay = engine.Replay{Available: true, LastResponseID: "resp_1", Load: func() ([]responses.Item, error) {
			t.Error("Load called although nothing replays")
			return nil, nil
		}}
		out := snap.Evaluate(engine.StagePreSend, turn)
		assert.Empty(t, out.Fired)
		assert.Equal(t, "resp_1", turn.Request.PreviousResponseID())
	})
	t.Run("items given: no load", func(t *testing.T) {
		turn := newTurn(t, create("resp_1", fco("call_a", "done"), msg("user", "next")))
		turn.Replay = engine.Replay{Available: true, LastResponseID: "resp_1", Items: transcript(t), Load: func() ([]responses.Item, error) {
			t.Error("Load called although Items were given")
			return nil, nil
		}}
		snap.Evaluate(engine.StagePreSend, turn)
		assert.Equal(t, want[:3], items(turn)[:3])
	})
	t.Run("load error leaves the request alone", func(t *testing.T) {
		turn := newTurn(t, create("resp_1", fco("call_a", "done"), msg("user", "next")))
		turn.Replay = engine.Replay{Available: true, LastResponseID: "resp_1", Load: func() ([]responses.Item, error) {
			return nil, errors.New("redis down")
		}}
		out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
		assert.Equal(t, "resp_1", turn.Request.PreviousResponseID())
		assert.False(t, turn.Replayed)
		acts := step(t, out, "replay").Actions
		require.Len(t, acts, 1)
		assert.False(t, acts[0].Applied)
		assert.Contains(t, acts[0].Note, "redis down")
	})
	t.Run("no transcript", func(t *testing.T) {
		snap := compileRules(t, `
  - id: replay
    stage: pre_send
    when: "true"
    actions:
      - replay
`)
		turn := newTurn(t, create("resp_1", fco("call_a", "done")))
		out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
		assert.Equal(t, "resp_1", turn.Request.PreviousResponseID())
		assert.False(t, turn.Replayed)
		assert.False(t, step(t, out, "replay").Actions[0].Applied)
	})
}

// TestCostLimits: a runaway expression is stopped at run time, per expression and per turn.
func TestCostLimits(t *testing.T) {
	t.Run("turn cost: evaluation stops, earlier mutations stay", func(t *testing.T) {
		snap := compilePolicy(t, `apiVersion: chainmend/v1
policy: tiny
limits:
  turn_cost: 40
rules:
  - id: cheap
    stage: pre_send
    when: "true"
    actions:
      - set_previous_response_id: '"resp_kept"'
  - id: costly
    stage: pre_send
    when: request.outputs.exists(o, o in request.calls)
  - id: never
    stage: pre_send
    when: "true"
    actions:
      - drop_previous_response_id
`)
		assert.Equal(t, uint64(40), snap.TurnCost)
		var in []string
		for i := range 30 {
			in = append(in, fc(fmt.Sprintf("call_%d", i)), fco(fmt.Sprintf("call_x%d", i), "x"))
		}
		turn := newTurn(t, create("", in...))
		out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
		require.Error(t, out.Err)
		assert.ErrorIs(t, out.Err, engine.ErrTurnCost)
		assert.Contains(t, out.Err.Error(), "test.yaml:13:11", "the error names the rule's when")
		assert.Equal(t, "resp_kept", turn.Request.PreviousResponseID(), "mutations before the limit stay")
		assert.Equal(t, []string{"cheap"}, firedRules(out))
		assert.NotContains(t, firedRules(out), "never")
		assert.Greater(t, out.Cost, uint64(40))
	})
	t.Run("expression cost: the rule fails, evaluation goes on", func(t *testing.T) {
		snap := compilePolicy(t, `apiVersion: chainmend/v1
policy: small
limits:
  expression_cost: 4000000
rules:
  - id: quadratic
    stage: pre_send
    when: request.calls.exists(a, request.calls.exists(b, a + b == "x"))
  - id: after
    stage: pre_send
    when: "true"
`)
		// The static estimate assumes at most 256 calls; 2000 calls cost far more.
		var in []string
		for i := range 2000 {
			in = append(in, fc(fmt.Sprintf("call_%d", i)))
		}
		turn := newTurn(t, create("", in...))
		out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
		require.NoError(t, out.Err)
		s := step(t, out, "quadratic")
		assert.False(t, s.Fired)
		assert.Contains(t, s.Err, "test.yaml:8:11: rule quadratic:")
		assert.Contains(t, s.Err, "cost limit")
		assert.Equal(t, []string{"after"}, firedRules(out))
	})
	t.Run("the cheapest turn cost wins across files", func(t *testing.T) {
		snap, diags := engine.Compile([]engine.Source{
			{Name: "a.yaml", Data: []byte("policy: a\nlimits: {turn_cost: 5000}\nrules: [{id: a, stage: pre_send, when: 'true'}]\n")},
			{Name: "b.yaml", Data: []byte("policy: b\nlimits: {turn_cost: 700}\nrules: [{id: b, stage: pre_send, when: 'true'}]\n")},
		})
		require.False(t, diags.HasErrors(), diags.Error())
		assert.Equal(t, uint64(700), snap.TurnCost)
	})
}

// TestRuntimeError: a rule whose expression fails at run time is traced with its position and
// counted; the rules after it still run.
func TestRuntimeError(t *testing.T) {
	snap := compileRules(t, `
  - id: ok-before
    stage: pre_send
    when: "true"
  - id: out-of-range
    stage: pre_send
    when: request.calls[5] == "call_a"
  - id: div-zero
    stage: pre_send
    when: 1 / (turn.number - 2) > 0
  - id: ok-after
    stage: pre_send
    when: "true"
    actions:
      - set_previous_response_id: '"resp_after"'
`)
	turn := newTurn(t, create("", fc("call_a")))
	out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
	require.NoError(t, out.Err, "a failing rule does not stop the turn")
	assert.Equal(t, []string{"ok-before", "ok-after"}, firedRules(out))
	assert.Equal(t, "resp_after", turn.Request.PreviousResponseID())
	tests := []struct{ rule, pos, msg string }{
		{"out-of-range", "test.yaml:10:11: rule out-of-range:", "index"},
		{"div-zero", "test.yaml:13:11: rule div-zero:", "division by zero"},
	}
	for _, tc := range tests {
		s := step(t, out, tc.rule)
		assert.True(t, strings.HasPrefix(s.Err, tc.pos), "%q should start with %q", s.Err, tc.pos)
		assert.Contains(t, s.Err, tc.msg)
		assert.False(t, s.Fired)
	}
	t.Run("an action argument that fails", func(t *testing.T) {
		snap := compileRules(t, `
  - id: bad-arg
    stage: pre_send
    when: "true"
    actions:
      - set_previous_response_id: request.calls[3]
      - drop_previous_response_id
`)
		turn := newTurn(t, create("resp_1", fc("call_a")))
		out := snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace())
		require.NoError(t, out.Err)
		acts := step(t, out, "bad-arg").Actions
		require.Len(t, acts, 2)
		assert.False(t, acts[0].Applied)
		assert.Contains(t, acts[0].Note, "index")
		assert.True(t, acts[1].Applied, "the rule's other actions still run")
		assert.Empty(t, turn.Request.PreviousResponseID())
		traced := acts[0].Note + "\n" + step(t, out, "bad-arg").Err
		knownBug(t, !strings.Contains(traced, "test.yaml:9:35"),
			"eval.go apply: a failing action argument is traced without its file:line:col (ruleError gets step=nil and would use the when's position)")
	})
}
