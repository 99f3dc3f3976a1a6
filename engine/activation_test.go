package engine_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
	"chainmend/responses"
)

// TestCachedValuesFollowActions: the activation caches every value it derived until what
// it depends on changes. Each case reads variables in a rule before an action changes
// them (so that they are cached), and in a rule after it, with and without tracing (the
// fast programs read variables by index, the traced ones by name).
func TestCachedValuesFollowActions(t *testing.T) {
	tests := []struct {
		name, stage, before, action, after string
		turn                               func(t *testing.T) *engine.Turn
	}{
		{
			name:   "set_anchor: session.anchor and the pending calls",
			stage:  engine.StagePostResponse,
			before: `session.anchor == "resp_1" && pending.known && pending.calls == ["call_a"] && pending.response_id == "resp_1" && pending.kinds["call_a"] == "function_call"`,
			action: `{set_anchor: '"resp_9"'}`,
			after:  `session.anchor == "resp_9" && !pending.known && size(pending.calls) == 0 && pending.response_id == "resp_9" && size(pending.kinds) == 0`,
		},
		{
			name:   "clear_anchor",
			stage:  engine.StagePreSend,
			before: `session.anchor == "resp_1" && size(pending.calls) == 1`,
			action: `clear_anchor`,
			after:  `session.anchor == "" && !pending.known && size(pending.calls) == 0`,
		},
		{
			name:   "set_upstream_cached: upstream.cached and upstream.fresh",
			stage:  engine.StagePostResponse,
			before: `upstream.cached == "resp_1" && !upstream.fresh`,
			action: `{set_upstream_cached: '""'}`,
			after:  `upstream.cached == "" && upstream.fresh`,
		},
		{
			name:   "classify: error.class, and the other error fields stay",
			stage:  engine.StageOnUpstreamError,
			before: `error.class == "" && error.code == "server_error"`,
			action: `{classify: '"transient"'}`,
			after:  `error.class == "transient" && error.code == "server_error"`,
		},
		{
			name:   "set_previous_response_id: the request's values and replay.complete",
			stage:  engine.StagePreSend,
			before: `request.previous_response_id == "resp_1" && replay.complete && request.outputs == ["call_a"]`,
			action: `{set_previous_response_id: '"resp_7"'}`,
			after:  `request.previous_response_id == "resp_7" && !replay.complete && request.outputs == ["call_a"]`,
		},
		{
			name:   "insert_outputs: the request's lists",
			stage:  engine.StagePreSend,
			before: `request.unanswered_calls == ["call_b"] && request.outputs == ["call_a"] && size(request.item_keys) == 3`,
			action: `{insert_outputs: {calls: request.unanswered_calls, output: '"aborted"'}}`,
			after:  `size(request.unanswered_calls) == 0 && request.outputs == ["call_a", "call_b"] && size(request.item_keys) == 4`,
		},
		{
			name:   "replay: turn.replayed and the request",
			stage:  engine.StagePreSend,
			before: `!turn.replayed && request.previous_response_id == "resp_1" && request.roles == ["user"]`,
			action: `replay`,
			after:  `turn.replayed && request.previous_response_id == "" && request.roles == ["developer", "user"]`,
		},
	}
	turn := func(t *testing.T) *engine.Turn {
		turn := newTurn(t, create("resp_1", fco("call_a", "ok"), fc("call_b"), msg("user", "next")))
		turn.Anchor, turn.Cached = "resp_1", "resp_1"
		turn.Pending = engine.Pending{Known: true, ResponseID: "resp_1", Calls: []engine.PendingCall{{ID: "call_a", Kind: "function_call"}}}
		turn.Replay = engine.Replay{Known: true, Available: true, LastResponseID: "resp_1",
			Items: parseItems(t, msg("developer", "base"))}
		turn.Error = &engine.UpstreamError{Status: 500, Code: "server_error"}
		turn.Response = &engine.Response{ID: "resp_2", Status: "completed"}
		return turn
	}
	for _, tc := range tests {
		rules := fmt.Sprintf(`
  - {id: before, stage: %[1]s, when: '%[2]s', actions: [%[3]s]}
  - {id: after, stage: %[1]s, when: '%[4]s'}
`, tc.stage, tc.before, tc.action, tc.after)
		snap := compileRules(t, rules)
		for _, traced := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/traced=%v", tc.name, traced), func(t *testing.T) {
				var opts []engine.EvalOption
				if traced {
					opts = append(opts, engine.WithTrace())
				}
				out := snap.Evaluate(tc.stage, turn(t), opts...)
				require.NoError(t, out.Err)
				assert.Equal(t, []string{"before", "after"}, firedRules(out))
			})
		}
	}
}

// TestEvaluateConcurrent: evaluations share pooled evaluators; concurrent ones on
// different turns get what sequential ones get (run with -race).
func TestEvaluateConcurrent(t *testing.T) {
	snap := loadDefaults(t, "../policies")
	requests := []string{
		create("resp_1", fco("call_a", "ok"), msg("user", "next")),
		create("", msg("developer", "base"), msg("user", "hello")),
		create("resp_1", fc("call_b"), fco("call_zz", "orphan")),
		create("resp_0", msg("user", "stale chain")),
	}
	type result struct {
		pre, post []string
		req       string
		anchor    string
	}
	run := func(i int) result {
		turn := newTurn(t, requests[i%len(requests)])
		turn.Anchor, turn.Cached = "resp_1", "resp_1"
		turn.Pending = engine.Pending{Known: true, ResponseID: "resp_1", Calls: []engine.PendingCall{{ID: "call_a", Kind: "function_call"}}}
		pre := snap.Evaluate(engine.StagePreSend, turn)
		turn.Response = &engine.Response{ID: fmt.Sprintf("resp_%d", i+2), Status: "completed",
			Items: []responses.Item{{Type: "function_call", CallID: fmt.Sprintf("call_%d", i)}}}
		post := snap.Evaluate(engine.StagePostResponse, turn)
		anchor := ""
		if post.Effects.Anchor != nil {
			anchor = *post.Effects.Anchor
		}
		return result{pre: firedRules(pre), post: firedRules(post), req: string(turn.Request.Bytes()), anchor: anchor}
	}
	const n = 64
	want := make([]result, n)
	for i := range want {
		want[i] = run(i)
	}
	got := make([]result, n)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() { got[i] = run(i) })
	}
	wg.Wait()
	assert.Equal(t, want, got)
}

// TestVariablesInNestedScopes: the fast programs read a variable by index at the top level
// of an expression and one scope down; deeper scopes take CEL's own path. Every depth
// reads the same values, with and without tracing.
func TestVariablesInNestedScopes(t *testing.T) {
	snap := compileRules(t, `
  - id: depth1
    stage: pre_send
    when: cel.bind(a, session.anchor, a == session.anchor && request.outputs == ["call_a"])
  - id: depth2
    stage: pre_send
    when: '["user"].exists(r, ["call_a"].exists(o, o in request.outputs && r in request.roles && session.anchor == "resp_1"))'
  - id: depth3
    stage: pre_send
    when: >
      cel.bind(a, session.anchor, [a].exists(x, ["call_a"].exists(o,
        x == session.anchor && o in pending.calls && request.previous_response_id == "resp_1")))
`)
	for _, traced := range []bool{false, true} {
		turn := newTurn(t, create("resp_1", fco("call_a", "ok"), msg("user", "next")))
		turn.Anchor = "resp_1"
		turn.Pending = engine.Pending{Known: true, ResponseID: "resp_1", Calls: []engine.PendingCall{{ID: "call_a", Kind: "function_call"}}}
		var opts []engine.EvalOption
		if traced {
			opts = append(opts, engine.WithTrace())
		}
		out := snap.Evaluate(engine.StagePreSend, turn, opts...)
		require.NoError(t, out.Err)
		assert.Equal(t, []string{"depth1", "depth2", "depth3"}, firedRules(out), "traced=%v", traced)
	}
}
