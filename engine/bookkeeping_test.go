package engine_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
	"chainmend/responses"
)

// parseItems parses JSON items.
func parseItems(t testing.TB, raws ...string) []responses.Item {
	t.Helper()
	out := make([]responses.Item, len(raws))
	for i, raw := range raws {
		it, err := responses.ParseItem([]byte(raw))
		require.NoError(t, err)
		out[i] = it
	}
	return out
}

// responseTurn is a post_response turn: the request as sent, and the response.
func responseTurn(t testing.TB, request string, resp *engine.Response) *engine.Turn {
	t.Helper()
	turn := newTurn(t, request)
	turn.Response = resp
	turn.Replay.Known = true
	return turn
}

func strp(s string) *string { return &s }

// TestEffects: each state action fills its part of Outcome.Effects and changes the turn for
// the rules that follow it.
func TestEffects(t *testing.T) {
	resp := func() *engine.Response {
		return &engine.Response{ID: "resp_2", Status: "completed", Event: "response.completed",
			Items: parseItems(t, fc("call_b"), ctc("call_c"), msg("assistant", "done"))}
	}
	tests := []struct {
		name  string
		rules string
		want  engine.Effects
		// after is a when that must hold after the rules (it fires the rule "after").
		after string
	}{
		{
			name: "set_anchor, and the pending calls follow the recorded ones",
			rules: `
  - {id: rec, stage: post_response, when: "true", actions: [{record_pending: response.unanswered_calls}]}
  - {id: set, stage: post_response, when: "true", actions: [{set_anchor: response.id}]}`,
			want: engine.Effects{Anchor: strp("resp_2"), PutPending: &engine.PendingPut{ResponseID: "resp_2",
				Calls: []engine.PendingCall{{ID: "call_b", Kind: "function_call"}, {ID: "call_c", Kind: "custom_tool_call"}}}},
			after: `session.anchor == "resp_2" && pending.known && pending.calls == ["call_b", "call_c"] && pending.kinds["call_c"] == "custom_tool_call"`,
		},
		{
			name:  "set_anchor to another response: its pending calls are unknown",
			rules: `  - {id: set, stage: post_response, when: "true", actions: [{set_anchor: '"resp_9"'}]}`,
			want:  engine.Effects{Anchor: strp("resp_9")},
			after: `session.anchor == "resp_9" && !pending.known && pending.response_id == "resp_9"`,
		},
		{
			name:  "set_anchor to empty clears, like clear_anchor",
			rules: `  - {id: set, stage: post_response, when: "true", actions: [{set_anchor: '""'}]}`,
			want:  engine.Effects{Anchor: strp("")},
			after: `session.anchor == "" && size(pending.calls) == 0`,
		},
		{
			name: "clear_anchor after set_anchor: last write wins",
			rules: `
  - {id: set, stage: post_response, when: "true", actions: [{set_anchor: response.id}, clear_anchor]}`,
			want:  engine.Effects{Anchor: strp("")},
			after: `session.anchor == ""`,
		},
		{
			name:  "record_pending keeps kinds and leaves out ids that are no call of the response",
			rules: `  - {id: rec, stage: post_response, when: "true", actions: [{record_pending: '["call_c", "call_zz", "call_b"]'}]}`,
			want: engine.Effects{PutPending: &engine.PendingPut{ResponseID: "resp_2",
				Calls: []engine.PendingCall{{ID: "call_c", Kind: "custom_tool_call"}, {ID: "call_b", Kind: "function_call"}}}},
		},
		{
			name:  "record_pending of nothing records an empty entry",
			rules: `  - {id: rec, stage: post_response, when: "true", actions: [{record_pending: '[]'}]}`,
			want:  engine.Effects{PutPending: &engine.PendingPut{ResponseID: "resp_2", Calls: []engine.PendingCall{}}},
		},
		{
			name: "delete_pending deduplicates across actions and drops empty ids",
			rules: `
  - {id: d1, stage: post_response, when: "true", actions: [{delete_pending: '[session.anchor, "resp_0", ""]'}]}
  - {id: d2, stage: post_response, when: "true", actions: [{delete_pending: '["resp_0", session.anchor]'}]}`,
			want: engine.Effects{DeletePending: []string{"resp_1", "resp_0"}},
		},
		{
			name: "transcript: last write wins",
			rules: `
  - {id: t1, stage: post_response, when: "true", actions: [reset_transcript, append_transcript]}
  - {id: t2, stage: post_response, when: "true", actions: [clear_transcript]}`,
			want: engine.Effects{Transcript: engine.TranscriptClear},
		},
		{
			name:  "set_upstream_cached: later rules read upstream.cached",
			rules: `  - {id: c, stage: post_response, when: "true", actions: [{set_upstream_cached: response.id}]}`,
			want:  engine.Effects{UpstreamCached: strp("resp_2")},
			after: `upstream.cached == "resp_2" && !upstream.fresh`,
		},
		{
			name: "shadow rules apply no effect",
			rules: `
  - id: s
    stage: post_response
    shadow: true
    when: "true"
    actions: [{set_anchor: response.id}, {record_pending: response.calls}, {delete_pending: '["resp_1"]'}, append_transcript, {set_upstream_cached: '""'}]`,
			want:  engine.Effects{},
			after: `session.anchor == "resp_1" && upstream.cached == "resp_1"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rules := tc.rules
			if tc.after != "" {
				rules += fmt.Sprintf("\n  - {id: after, stage: post_response, when: '%s'}", tc.after)
			}
			snap := compileRules(t, rules+"\n")
			turn := responseTurn(t, create("resp_1", fco("call_a", "ok")), resp())
			turn.Anchor, turn.Cached = "resp_1", "resp_1"
			turn.Pending = engine.Pending{Known: true, ResponseID: "resp_1", Calls: []engine.PendingCall{{ID: "call_a", Kind: "function_call"}}}
			out := snap.Evaluate(engine.StagePostResponse, turn)
			require.NoError(t, out.Err)
			assert.Equal(t, engine.VerdictSend, out.Verdict)
			assert.Equal(t, tc.want, out.Effects)
			if tc.after != "" {
				assert.Contains(t, firedRules(out), "after", "after the rules: %s", tc.after)
			}
		})
	}
}

// TestClearsAnchor: ClearsAnchor is true only when the last anchor write cleared it.
func TestClearsAnchor(t *testing.T) {
	tests := []struct {
		anchor *string
		want   bool
	}{{nil, false}, {strp(""), true}, {strp("resp_2"), false}}
	for _, tc := range tests {
		o := &engine.Outcome{Effects: engine.Effects{Anchor: tc.anchor}}
		assert.Equal(t, tc.want, o.ClearsAnchor())
	}
}

// TestResponseFacts: response.* are derived from the response's output items.
func TestResponseFacts(t *testing.T) {
	snap := compileRules(t, `
  - id: facts
    stage: post_response
    when: >
      response.id == "resp_2" && response.status == "incomplete" && response.event == "response.incomplete" &&
      response.calls == ["call_a", "call_b", "call_c"] && response.unanswered_calls == ["call_b", "call_c"] &&
      response.item_types == ["function_call", "function_call_output", "function_call", "local_shell_call", "message"]
  - id: context
    stage: post_response
    when: turn.lane == "lane_a" && replay.known && request.previous_response_id == "resp_1"
`)
	turn := responseTurn(t, create("resp_1", fco("call_z", "ok")), &engine.Response{ID: "resp_2", Status: "incomplete", Event: "response.incomplete",
		Items: parseItems(t, fc("call_a"), fco("call_a", "done"), fc("call_b"), lsc("call_c"), msg("assistant", "partial"))})
	turn.Lane = "lane_a"
	out := snap.Evaluate(engine.StagePostResponse, turn)
	assert.Equal(t, []string{"facts", "context"}, firedRules(out))

	// Without a response (a gateway bug) the facts are empty, not an error.
	turn = newTurn(t, create(""))
	out = snap.Evaluate(engine.StagePostResponse, turn)
	require.NoError(t, out.Err)
	assert.Empty(t, out.Fired)
}

// TestStageAvailability: variables and actions exist only in the stages where they mean
// something, and a sub-stage gets what every entry stage reaching it has.
func TestStageAvailability(t *testing.T) {
	tests := []struct {
		name  string
		rules string
		want  string // "" compiles
	}{
		{"response in pre_send", `  - {id: a, stage: pre_send, when: 'response.id != ""'}`, "undeclared reference to 'response' (response.* exists only in stage post_response; this rule runs in pre_send)"},
		{"response in on_upstream_error", `  - {id: a, stage: on_upstream_error, when: 'size(response.calls) > 0'}`, "undeclared reference to 'response' (response.* exists only in stage post_response; this rule runs in on_upstream_error)"},
		{"error.timeout in post_response", `  - {id: a, stage: post_response, when: 'error.timeout'}`, "undeclared reference to 'error' (error.* exists only in stage on_upstream_error; this rule runs in post_response)"},
		{"error.timeout in on_upstream_error", `  - {id: a, stage: on_upstream_error, when: 'error.timeout && error.transport'}`, ""},
		{"recovery in post_response", `  - {id: a, stage: post_response, when: 'recovery.client_written'}`, "undeclared reference to 'recovery' (recovery.* exists only in stage on_upstream_error; this rule runs in post_response)"},
		{"common facts everywhere", `  - {id: a, stage: post_response, when: 'replay.known && turn.lane == "" && session.anchor == "" && size(previous.item_keys) == 0'}`, ""},
		{"record_pending in pre_send", `  - {id: a, stage: pre_send, when: 'true', actions: [{record_pending: request.calls}]}`, "action record_pending is not allowed in stage pre_send (only in post_response)"},
		{"append_transcript in on_upstream_error", `  - {id: a, stage: on_upstream_error, when: 'true', actions: [append_transcript]}`, "action append_transcript is not allowed in stage on_upstream_error (only in post_response)"},
		{"set_upstream_cached in pre_send", `  - {id: a, stage: pre_send, when: 'true', actions: [{set_upstream_cached: '""'}]}`, "action set_upstream_cached is not allowed in stage pre_send (only in on_upstream_error, post_response)"},
		{"set_upstream_cached in on_upstream_error", `  - {id: a, stage: on_upstream_error, when: 'true', actions: [{set_upstream_cached: '""'}]}`, ""},
		{"reject in on_upstream_error", `  - {id: a, stage: on_upstream_error, when: 'true', actions: [{reject: {status: '504', code: '"upstream_timeout"', message: '"late"'}}]}`, ""},
		{"reject in post_response", `  - {id: a, stage: post_response, when: 'true', actions: [{reject: {code: '"x"', message: '"y"'}}]}`, "action reject is not allowed in stage post_response (only in pre_send, on_upstream_error)"},
		{"request edits in post_response", `  - {id: a, stage: post_response, when: 'true', actions: [drop_previous_response_id]}`, "action drop_previous_response_id is not allowed in stage post_response (only in pre_send, on_upstream_error)"},
		{"anchor, pending, transcript clear anywhere", `
  - {id: a, stage: pre_send, when: 'true', actions: [{set_anchor: '""'}, {delete_pending: '["resp_1"]'}, clear_transcript, clear_anchor]}
  - {id: b, stage: on_upstream_error, when: 'true', actions: [{set_anchor: '""'}, {delete_pending: '["resp_1"]'}, clear_transcript, clear_anchor]}
  - {id: c, stage: post_response, when: 'true', actions: [{set_anchor: '""'}, {delete_pending: '["resp_1"]'}, clear_transcript, clear_anchor]}`, ""},
		{"sub-stage entered from post_response refuses request edits", `
  - {id: a, stage: post_response, when: 'true', actions: [{run_stage: sub}]}
  - {id: b, stage: sub, when: 'true', actions: [{remove_outputs: request.outputs}]}`, "action remove_outputs is not allowed in stage sub (entered from post_response; only in pre_send, on_upstream_error)"},
		{"sub-stage of pre_send and on_upstream_error reads the common facts", `
  - {id: a, stage: pre_send, when: 'true', actions: [{run_stage: sub}]}
  - {id: b, stage: on_upstream_error, when: 'true', actions: [{run_stage: sub}]}
  - {id: c, stage: sub, when: 'size(request.unanswered_calls) > 0'}`, ""},
		{"sub-stage of pre_send and on_upstream_error cannot read error facts", `
  - {id: a, stage: pre_send, when: 'true', actions: [{run_stage: sub}]}
  - {id: b, stage: on_upstream_error, when: 'true', actions: [{run_stage: sub}]}
  - {id: c, stage: sub, when: 'error.code == ""'}`, "undeclared reference to 'error' (error.* exists only in stage on_upstream_error; stage sub is entered from pre_send, on_upstream_error and sees only the variables they all have)"},
		{"sub-stage of on_upstream_error only reads error facts", `
  - {id: a, stage: on_upstream_error, when: 'true', actions: [{run_stage: sub}]}
  - {id: c, stage: sub, when: 'error.code == ""'}`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap, diags := engine.Compile([]engine.Source{{Name: "test.yaml", Data: []byte(policyHeader + tc.rules + "\n")}})
			if tc.want == "" {
				require.False(t, diags.HasErrors(), diags.Error())
				require.NotNil(t, snap)
				return
			}
			require.Nil(t, snap)
			assert.Contains(t, diags.Errors().Error(), tc.want)
		})
	}
}

// TestRejectInRecovery: reject in on_upstream_error answers the client with its own error.
func TestRejectInRecovery(t *testing.T) {
	snap := compileRules(t, `
  - id: timeout
    stage: on_upstream_error
    when: error.timeout
    actions:
      - clear_anchor
      - reject: {status: '504', type: '"server_error"', code: '"upstream_timeout"', message: '"late: " + error.message'}
`)
	turn := newTurn(t, create("resp_1", msg("user", "hi")))
	turn.Anchor = "resp_1"
	turn.Error = &engine.UpstreamError{Transport: true, Timeout: true, Message: "no first event in 30s"}
	out := snap.Evaluate(engine.StageOnUpstreamError, turn)
	assert.Equal(t, engine.VerdictReject, out.Verdict)
	assert.Equal(t, &engine.Rejection{Status: 504, Type: "server_error", Code: "upstream_timeout", Message: "late: no first event in 30s"}, out.Reject)
	assert.True(t, out.ClearsAnchor())
}

// TestListHelpers: starts_with and overlaps on literals, facts and the lazy previous keys.
func TestListHelpers(t *testing.T) {
	tests := []struct {
		expr string
		want bool
	}{
		{`starts_with(["a", "b", "c"], ["a", "b"])`, true},
		{`starts_with(["a", "b"], ["a", "b"])`, true},
		{`starts_with(["a", "b"], [])`, true},
		{`starts_with([], [])`, true},
		{`starts_with(["a"], ["a", "b"])`, false},
		{`starts_with(["a", "c"], ["a", "b"])`, false},
		{`starts_with(["b", "a"], ["a"])`, false},
		{`overlaps(["a", "b"], ["c", "b"])`, true},
		{`overlaps(["a"], [])`, false},
		{`overlaps([], [])`, false},
		{`overlaps(["a", "b"], ["c", "d", "e"])`, false},
		{`starts_with(request.item_keys, previous.item_keys)`, true},
		{`starts_with(previous.item_keys, request.item_keys)`, false},
		{`starts_with(request.item_keys, ["message:msg_1"])`, true},
		{`overlaps(request.identified_keys, previous.item_keys)`, true},
		{`overlaps(previous.item_keys, request.identified_keys)`, true},
		{`overlaps(previous.item_keys, ["message:msg_9"])`, false},
		{`overlaps(["function_call:call_a"], previous.item_keys)`, true},
		{`"message:msg_1" in previous.item_keys && !("message:msg_9" in previous.item_keys)`, true},
		{`previous.item_keys[1] == "function_call:call_a" && size(previous.item_keys) == 2`, true},
		{`request.identified_keys == ["message:msg_1", "function_call:call_a", "function_call_output:call_a"]`, true},
		{`size(request.item_keys) == 4 && request.item_keys[3].startsWith("message#")`, true},
		{`previous.item_keys + ["x"] == ["message:msg_1", "function_call:call_a", "x"]`, true},
	}
	const idMsg = `{"type":"message","id":"msg_1","role":"user","content":[{"type":"input_text","text":"go"}]}`
	for _, tc := range tests {
		t.Run(tc.expr, func(t *testing.T) {
			snap := compileRules(t, fmt.Sprintf("  - {id: r, stage: pre_send, when: '%s'}\n", strings.ReplaceAll(tc.expr, "'", "''")))
			turn := newTurn(t, create("resp_1", idMsg, fc("call_a"), fco("call_a", "ok"), msg("user", "more")))
			turn.Previous = &engine.Previous{ItemKeys: []string{"message:msg_1", "function_call:call_a"}}
			for _, opt := range [][]engine.EvalOption{nil, {engine.WithTrace()}} {
				out := snap.Evaluate(engine.StagePreSend, turn, opt...)
				require.NoError(t, out.Err)
				require.Empty(t, step(t, snap.Evaluate(engine.StagePreSend, turn, engine.WithTrace()), "r").Err)
				assert.Equal(t, tc.want, len(out.Fired) == 1, "tracked=%v", opt != nil)
			}
		})
	}
}

// editsHistoryOracle is the Go heuristic that row 2 replaced (engine/context.go before issue
// 12), kept here to prove the YAML says the same.
func editsHistoryOracle(items []responses.Item, prevKeys []string) bool {
	if len(prevKeys) == 0 {
		return false
	}
	known := map[string]bool{}
	for _, k := range prevKeys {
		known[k] = true
	}
	repeats := len(items) > 1 && items[0].Key() == prevKeys[0]
	for i := range items {
		if repeats {
			break
		}
		if items[i].ID == "" && items[i].CallID == "" {
			continue
		}
		if known[items[i].Key()] {
			repeats = true
			break
		}
	}
	if !repeats {
		return false
	}
	if len(items) < len(prevKeys) {
		return true
	}
	for i, k := range prevKeys {
		if items[i].Key() != k {
			return true
		}
	}
	return false
}

// TestEditedHistoryMatchesOracle: the edit test of row 2, written with starts_with and
// overlaps, decides as the removed Go heuristic did on every combination of a small
// alphabet of items (with ids, with call ids, and id-less).
func TestEditedHistoryMatchesOracle(t *testing.T) {
	snap := loadDefaults(t, defaultPolicies)
	alphabet := []string{
		`{"type":"message","id":"msg_1","role":"user","content":[{"type":"input_text","text":"a"}]}`,
		`{"type":"message","id":"msg_2","role":"user","content":[{"type":"input_text","text":"b"}]}`,
		msg("user", "continue"),
		msg("assistant", "ok"),
		fc("call_a"),
	}
	keyOf := func(raw string) string { return parseItems(t, raw)[0].Key() }
	var seqs [][]int
	var gen func(prefix []int)
	gen = func(prefix []int) {
		seqs = append(seqs, append([]int(nil), prefix...))
		if len(prefix) == 3 {
			return
		}
		for i := range alphabet {
			gen(append(prefix, i))
		}
	}
	gen(nil)
	checked, edits := 0, 0
	for _, prev := range seqs {
		if len(prev) == 0 || len(prev) > 2 {
			continue
		}
		prevKeys := make([]string, len(prev))
		for i, p := range prev {
			prevKeys[i] = keyOf(alphabet[p])
		}
		for _, cur := range seqs {
			raws := make([]string, len(cur))
			for i, c := range cur {
				raws[i] = alphabet[c]
			}
			turn := newTurn(t, create("resp_1", raws...))
			turn.Anchor, turn.Cached = "resp_1", "resp_1"
			turn.Previous = &engine.Previous{FieldDigests: turn.Request.FieldDigests(), ItemKeys: prevKeys}
			want := editsHistoryOracle(turn.Request.Items(), prevKeys) && !slicesContainOutput(turn.Request.Items())
			out := snap.Evaluate(engine.StagePreSend, turn)
			got := out.Fired[0].Rule == "drop-prev-on-edited-history"
			require.Equal(t, want, got, "previous %v, input %v", prev, cur)
			checked++
			if want {
				edits++
			}
		}
	}
	t.Logf("%d combinations, %d edited histories", checked, edits)
	assert.Positive(t, edits)
}

func slicesContainOutput(items []responses.Item) bool {
	for i := range items {
		if items[i].IsOutput() {
			return true
		}
	}
	return false
}

// TestPreviousKeysNotBoxed: reading previous.item_keys of a 20,000-key turn allocates a
// handful of values, not one per key, and overlaps probes the key set built once per
// Previous.
func TestPreviousKeysNotBoxed(t *testing.T) {
	snap := compileRules(t, `
  - id: r
    stage: pre_send
    when: >
      size(previous.item_keys) > 0 && previous.item_keys[0] == "message:msg_0" &&
      !starts_with(request.item_keys, previous.item_keys) &&
      overlaps(request.identified_keys, previous.item_keys)
`)
	keys := make([]string, 20000)
	for i := range keys {
		keys[i] = fmt.Sprintf("message:msg_%d", i)
	}
	prev := &engine.Previous{ItemKeys: keys}
	raw := []byte(create("resp_1", `{"type":"message","id":"msg_19999","role":"user","content":[]}`))
	run := func() {
		req, err := responses.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		turn := &engine.Turn{Request: req, Mode: engine.ModeRepair, Transport: engine.TransportWebSocket, Number: 2, Previous: prev}
		if out := snap.Evaluate(engine.StagePreSend, turn); len(out.Fired) != 1 {
			t.Fatalf("fired %v, err %v", out.Fired, out.Err)
		}
	}
	run() // builds the key set once
	allocs := testing.AllocsPerRun(20, run)
	assert.Less(t, allocs, 200.0, "a turn must not box the previous turn's keys")
}
