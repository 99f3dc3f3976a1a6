package policytest

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
	"chainmend/responses"
)

func strp(s string) *string { return &s }

// parseCase parses a one-case fixture file.
func parseCase(t *testing.T, body string) (*File, *Case) {
	t.Helper()
	f, err := ParseFile("test.yaml", []byte("cases:\n"+body))
	require.NoError(t, err)
	require.Len(t, f.Cases, 1)
	return f, &f.Cases[0]
}

// TestBuildTurnState: the state fields of a fixture reach the turn.
func TestBuildTurnState(t *testing.T) {
	tests := []struct {
		name  string
		state string
		check func(t *testing.T, turn *engine.Turn)
	}{
		{"defaults: the store answered, no transcript", "", func(t *testing.T, turn *engine.Turn) {
			assert.Equal(t, engine.Replay{Known: true}, turn.Replay)
			assert.Empty(t, turn.Lane)
			assert.Nil(t, turn.Response)
		}},
		{"a given replay is known and available", "state: {replay: {last_response_id: resp_1}}", func(t *testing.T, turn *engine.Turn) {
			assert.True(t, turn.Replay.Known)
			assert.True(t, turn.Replay.Available)
			assert.Equal(t, "resp_1", turn.Replay.LastResponseID)
		}},
		{"replay unknown", "state: {replay: {known: false}}", func(t *testing.T, turn *engine.Turn) {
			assert.Equal(t, engine.Replay{}, turn.Replay)
		}},
		{"replay known absent", "state: {replay: {available: false}}", func(t *testing.T, turn *engine.Turn) {
			assert.Equal(t, engine.Replay{Known: true}, turn.Replay)
		}},
		{"a timeout is a transport failure", "state: {error: {timeout: true, message: late}}", func(t *testing.T, turn *engine.Turn) {
			assert.Equal(t, &engine.UpstreamError{Transport: true, Timeout: true, Message: "late"}, turn.Error)
		}},
		{"anchor, lane and the pending calls' response", "state: {anchor: resp_1, lane: lane_a, pending: {calls: [call_a, 'call_b:custom_tool_call']}}", func(t *testing.T, turn *engine.Turn) {
			assert.Equal(t, "resp_1", turn.Anchor)
			assert.Equal(t, "lane_a", turn.Lane)
			assert.Equal(t, engine.Pending{Known: true, ResponseID: "resp_1", Calls: []engine.PendingCall{
				{ID: "call_a", Kind: "function_call"}, {ID: "call_b", Kind: "custom_tool_call"}}}, turn.Pending)
		}},
		{"the response of a post_response case", "stage: post_response\n    response: {id: resp_2, status: completed, event: response.completed, output: [{type: function_call, call_id: call_b, name: f, arguments: '{}'}]}", func(t *testing.T, turn *engine.Turn) {
			require.NotNil(t, turn.Response)
			assert.Equal(t, "resp_2", turn.Response.ID)
			assert.Equal(t, "completed", turn.Response.Status)
			assert.Equal(t, "response.completed", turn.Response.Event)
			require.Len(t, turn.Response.Items, 1)
			assert.Equal(t, "call_b", turn.Response.Items[0].CallID)
		}},
		{"the in-flight facts of a response", "stage: post_response\n    response: {id: resp_2, incomplete_reason: interrupted, server_started: true, injected_outputs: [call_a], interrupted: true, interrupt_mode: discard_partial_items, terminal_calls: [call_b]}", func(t *testing.T, turn *engine.Turn) {
			assert.Equal(t, &engine.Response{ID: "resp_2", IncompleteReason: "interrupted", ServerStarted: true, Injected: []string{"call_a"},
				Interrupted: true, InterruptMode: "discard_partial_items", TerminalCalls: []string{"call_b"}, TerminalOutput: true}, turn.Response)
		}},
		{"an empty terminal output list is an output list", "stage: post_response\n    response: {id: resp_2, terminal_calls: []}", func(t *testing.T, turn *engine.Turn) {
			assert.True(t, turn.Response.TerminalOutput)
			assert.Empty(t, turn.Response.TerminalCalls)
		}},
		{"terminal_output alone", "stage: post_response\n    response: {id: resp_2, terminal_output: true}", func(t *testing.T, turn *engine.Turn) {
			assert.True(t, turn.Response.TerminalOutput)
		}},
		{"no terminal output list unless given", "stage: post_response\n    response: {id: resp_2}", func(t *testing.T, turn *engine.Turn) {
			assert.False(t, turn.Response.TerminalOutput)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := "  - name: c\n    request: {type: response.create}\n"
			if tc.state != "" {
				body += "    " + tc.state + "\n"
			}
			f, c := parseCase(t, body)
			turn, err := BuildTurn(f, c)
			require.NoError(t, err)
			tc.check(t, turn)
		})
	}
	_, c := parseCase(t, "  - name: c\n    request: {type: response.create}\n    state: {replay: {known: false, last_response_id: resp_1}}\n")
	_, err := BuildTurn(&File{}, c)
	assert.ErrorContains(t, err, "describe no transcript")
}

// TestContradictoryResponseFacts: a response that cannot happen fails the fixture loudly.
func TestContradictoryResponseFacts(t *testing.T) {
	tests := []struct{ response, want string }{
		{"{id: resp_2, interrupt_mode: discard_partial_items}", "interrupt_mode \"discard_partial_items\" without interrupted: true"},
		{"{id: resp_2, terminal_output: false, terminal_calls: [call_a]}", "terminal_calls given with terminal_output: false"},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			f, c := parseCase(t, "  - name: c\n    stage: post_response\n    request: {type: response.create}\n    response: "+tc.response+"\n")
			_, err := BuildTurn(f, c)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}

// TestEnforce: enforce names shadow rules that act as enforced in the case; a name that is
// no rule, or no shadow rule, is an error of the fixture.
func TestEnforce(t *testing.T) {
	snap, diags := engine.Compile([]engine.Source{{Name: "p.yaml", Data: []byte(`apiVersion: chainmend/v1
policy: p
rules:
  - {id: watched, stage: pre_send, shadow: true, when: "true", actions: [drop_previous_response_id]}
  - {id: plain, stage: pre_send, when: "true"}
`)}})
	require.NotNil(t, snap, diags.Error())
	tests := []struct {
		name, enforce, expect, err string
		passed                     bool
	}{
		{"shadow: nothing changes", "[]", "{unchanged: true, fired: [watched, plain]}", "", true},
		{"enforced: the rule acts", "[watched]", "{request_absent: [previous_response_id], fired: [watched, plain]}", "", true},
		{"enforced, but the case expects the shadow outcome", "[watched]", "{unchanged: true}", "", false},
		{"unknown rule", "[nope]", "{}", `names unknown rule "nope"`, false},
		{"not a shadow rule", "[plain]", "{}", `enforces rule "plain", which is not a shadow rule`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := parseCase(t, "  - name: c\n    request: {type: response.create, previous_response_id: resp_1}\n    enforce: "+tc.enforce+"\n    expect: "+tc.expect+"\n")
			rep, err := Run(snap, []*File{f}, nil)
			if tc.err != "" {
				assert.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Len(t, rep.Results, 1)
			assert.Equal(t, tc.passed, rep.Results[0].Passed, rep.Results[0].Failures)
		})
	}
}

// TestEffectsDiff: every expected effect is compared, and only those given.
func TestEffectsDiff(t *testing.T) {
	got := &engine.Effects{
		Anchor:         strp("resp_2"),
		PutPending:     &engine.PendingPut{ResponseID: "resp_2", Calls: []engine.PendingCall{{ID: "call_b", Kind: "function_call"}}},
		DeletePending:  []string{"resp_1"},
		Transcript:     engine.TranscriptAppend,
		UpstreamCached: strp("resp_2"),
	}
	tests := []struct {
		name, effects string
		want          []string
	}{
		{"nothing given", "{}", nil},
		{"all match", "{anchor: resp_2, pending: {response_id: resp_2, calls: [call_b]}, delete_pending: [resp_1], transcript: append, upstream_cached: resp_2}", nil},
		{"anchor cleared wanted", `{anchor: ""}`, []string{`effects.anchor: want "", got "resp_2"`}},
		{"pending kind differs", "{pending: {response_id: resp_2, calls: ['call_b:custom_tool_call']}}", []string{"effects.pending: want resp_2 [call_b:custom_tool_call], got resp_2 [call_b:function_call]"}},
		{"no pending wanted", "{pending: null}", []string{"effects.pending: want none, got resp_2 [call_b:function_call]"}},
		{"nothing deleted wanted", "{delete_pending: []}", []string{"effects.delete_pending: want [], got [resp_1]"}},
		{"transcript differs", "{transcript: keep}", []string{"effects.transcript: want keep, got append"}},
		{"upstream differs", `{upstream_cached: ""}`, []string{`effects.upstream_cached: want "", got "resp_2"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, c := parseCase(t, "  - name: c\n    request: {type: response.create}\n    expect: {effects: "+tc.effects+"}\n")
			diffs, err := effectsDiff(c.Expect.Effects, got)
			require.NoError(t, err)
			assert.Equal(t, tc.want, messages(diffs))
		})
	}
	_, c := parseCase(t, "  - name: c\n    request: {type: response.create}\n    expect: {effects: {anchor: x, upstream_cached: y, pending: {response_id: r}}}\n")
	diffs, err := effectsDiff(c.Expect.Effects, &engine.Effects{})
	require.NoError(t, err)
	assert.Equal(t, `effects.anchor: want "x", got unchanged|effects.pending: want r [], got none|effects.upstream_cached: want "y", got unchanged`, strings.Join(messages(diffs), "|"))
}

func messages(ds []diff) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.msg)
	}
	return out
}

// TestPairingViolations: the pairing rule of SPEC §2 on a request as sent, with and without
// a chain whose pending calls are known.
func TestPairingViolations(t *testing.T) {
	const (
		call   = `{"type":"function_call","call_id":"call_A","name":"f","arguments":"{}"}`
		out    = `{"type":"function_call_output","call_id":"call_A","output":"ok"}`
		outB   = `{"type":"function_call_output","call_id":"call_B","output":"ok"}`
		custom = `{"type":"custom_tool_call","call_id":"call_C","name":"p","input":"x"}`
	)
	pending := engine.Pending{Known: true, ResponseID: "resp_1", Calls: []engine.PendingCall{{ID: "call_B", Kind: "function_call"}}}
	tests := []struct {
		name    string
		prev    string
		items   []string
		pending engine.Pending
		want    []string
	}{
		{"paired full create", "", []string{call, out}, engine.Pending{}, nil},
		{"call without output", "", []string{call}, engine.Pending{}, []string{"unanswered_call call_A"}},
		{"custom call without output", "", []string{custom}, engine.Pending{}, []string{"unanswered_call call_C"}},
		{"output without call", "", []string{outB}, engine.Pending{}, []string{"orphan_output call_B"}},
		{"output twice", "", []string{call, out, out}, engine.Pending{}, []string{"duplicate_output call_A"}},
		{"chained output answers a pending call", "resp_1", []string{outB}, pending, nil},
		{"chained without the pending call's output", "resp_1", []string{call, out}, pending, []string{"unanswered_pending call_B"}},
		{"chained output answers neither", "resp_1", []string{out, outB}, pending, []string{"orphan_output call_A"}},
		{"chained to a response whose calls are unknown", "resp_9", []string{outB}, pending, nil},
		{"chained, pending unknown", "resp_1", []string{outB}, engine.Pending{ResponseID: "resp_1"}, nil},
		{"chained, unknown pending, a call of the input still needs its output", "resp_9", []string{call}, pending, []string{"unanswered_call call_A"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prev := ""
			if tc.prev != "" {
				prev = `"previous_response_id":"` + tc.prev + `",`
			}
			req, err := responses.Parse([]byte(`{"type":"response.create",` + prev + `"input":[` + strings.Join(tc.items, ",") + `]}`))
			require.NoError(t, err)
			var got []string
			for _, v := range PairingViolations(req, tc.pending) {
				got = append(got, v.Kind+" "+v.CallID)
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestPairingLint: the reload gate's view of the guard: broken pairing is a lint finding at
// the case, not a failure, and a case that expects it is no finding.
func TestPairingLint(t *testing.T) {
	snap, diags := engine.Compile([]engine.Source{{Name: "p.yaml", Data: []byte(`apiVersion: chainmend/v1
policy: p
rules:
  - {id: drop-outputs, stage: pre_send, when: "size(request.outputs) > 0", actions: [{remove_outputs: request.outputs}]}
`)}})
	require.NotNil(t, snap, diags.Error())
	f, err := ParseFile("f.yaml", []byte(`cases:
  - name: breaks
    request: {type: response.create, input: [{type: function_call, call_id: call_A, name: f, arguments: "{}"}, {type: function_call_output, call_id: call_A, output: ok}]}
    expect: {fired: [drop-outputs]}
  - name: expected
    request: {type: response.create, input: [{type: function_call, call_id: call_A, name: f, arguments: "{}"}, {type: function_call_output, call_id: call_A, output: ok}]}
    expect: {fired: [drop-outputs], broken_pairing: true}
`))
	require.NoError(t, err)
	lint, err := PairingLint(snap, []*File{f})
	require.NoError(t, err)
	require.Len(t, lint, 1)
	assert.Equal(t, "f.yaml:2:5: lint: case f/breaks: pairing broken after pre_send: call call_A has no output (SPEC §2; the upstream refuses it)", lint[0].String())

	rep, err := Run(snap, []*File{f}, nil)
	require.NoError(t, err)
	assert.Equal(t, 1, rep.Failed, "policyctl test fails the case")
	assert.Empty(t, rep.Lint)
}

// TestFailureLines: each failure points at the line of its expectation in the fixture.
func TestFailureLines(t *testing.T) {
	snap, diags := engine.Compile([]engine.Source{{Name: "p.yaml", Data: []byte("apiVersion: chainmend/v1\npolicy: p\nrules:\n  - {id: a, stage: pre_send, when: 'true'}\n")}})
	require.NotNil(t, snap, diags.Error())
	f, err := ParseFile("f.yaml", []byte(`cases:
  - name: c
    request:
      type: response.create
      model: gpt-5
      input: [{type: message, role: user, content: hi}]
    expect:
      verdict: reject
      fired: [a]
      request:
        model: gpt-4
        input:
          - {type: message,
             role: developer}
      reject: {code: x}
`))
	require.NoError(t, err)
	rep, err := Run(snap, []*File{f}, nil)
	require.NoError(t, err)
	require.Len(t, rep.Results, 1)
	type at struct {
		field string
		line  int
	}
	var got []at
	for _, d := range rep.Results[0].Details {
		got = append(got, at{d.Field, d.Line})
		assert.Equal(t, "f.yaml", d.File)
		assert.Equal(t, "c", d.Case)
	}
	assert.Equal(t, []at{{"verdict", 8}, {"reject", 15}, {"request.input[0].role", 14}, {"request.model", 11}}, got)
}

func TestPathSegments(t *testing.T) {
	assert.Equal(t, []string{"request", "input", "[1]", "output"}, pathSegments("request.input[1].output"))
	assert.Equal(t, []string{"request", "a", "[0]", "[2]"}, pathSegments("request.a[0][2]"))
	assert.Equal(t, []string{"effects", "anchor"}, pathSegments("effects.anchor"))
}
