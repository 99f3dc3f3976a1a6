package policyctl

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
	"chainmend/internal/decisionlog"
	"chainmend/responses"
)

const defaultPolicies = "../../policies"

// loggedStage evaluates stage on turn with snap and returns the stage as the gateway's hook
// logs it: the facts the stage began with, and what it decided.
func loggedStage(t *testing.T, snap *engine.Snapshot, stage string, turn *engine.Turn) decisionlog.Stage {
	t.Helper()
	in := engine.FactsOf(turn)
	in.Previous = nil
	out := snap.Evaluate(stage, turn)
	require.NoError(t, out.Err)
	st := decisionlog.Stage{Stage: stage, Input: in, Verdict: string(out.Verdict), Reject: decisionlog.RejectOf(out.Reject),
		Fired: out.Fired, Effects: engine.EffectsFactsOf(&out.Effects)}
	if turn.Request.Modified() {
		after := engine.RequestFactsOf(turn.Request, turn.Replay.Items)
		st.After = &after
	}
	return st
}

func parsed(t *testing.T, frame string) *responses.Request {
	t.Helper()
	r, err := responses.Parse([]byte(frame))
	require.NoError(t, err)
	return r
}

// writeLog writes a decision log of three turns logged under the default policies: an ESC
// turn (row 5 injects "aborted"), a plain turn, and the bookkeeping of an interrupted
// response (a shadow rule watches it). It returns the file.
func writeLog(t *testing.T) string {
	t.Helper()
	snap, diags, err := engine.LoadDir(defaultPolicies)
	require.NoError(t, err)
	require.False(t, diags.HasErrors())

	esc := &engine.Turn{Mode: engine.ModeRepair, Transport: engine.TransportWebSocket, Number: 2, Anchor: "resp_1", Cached: "resp_1",
		Request: parsed(t, `{"type":"response.create","model":"gpt-5","store":false,"previous_response_id":"resp_1","input":[`+
			`{"type":"function_call_output","call_id":"call_A","output":"ok"},{"type":"message","role":"user","content":"esc"}]}`),
		Pending: engine.Pending{Known: true, ResponseID: "resp_1", Calls: []engine.PendingCall{{ID: "call_A", Kind: "function_call"}, {ID: "call_B", Kind: "function_call"}}}}
	plain := &engine.Turn{Mode: engine.ModeRepair, Transport: engine.TransportWebSocket, Number: 1,
		Request: parsed(t, `{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"message","role":"user","content":"hi"}]}`)}
	interrupted := &engine.Turn{Mode: engine.ModeRepair, Transport: engine.TransportWebSocket, Number: 3,
		Request: parsed(t, `{"type":"response.create","model":"gpt-5","store":false,"input":[]}`),
		Response: &engine.Response{ID: "resp_3", Status: "incomplete", Event: "response.incomplete", Interrupted: true, InterruptMode: "discard_partial_items",
			Items: []responses.Item{{Raw: []byte(`{"type":"function_call","call_id":"call_X"}`), Type: "function_call", CallID: "call_X"}}}}

	recs := []*decisionlog.Record{
		{ID: "c1#2", Session: "s1", Number: 2, Stages: []decisionlog.Stage{loggedStage(t, snap, engine.StagePreSend, esc)}},
		{ID: "c2#1", Session: "s2", Number: 1, Stages: []decisionlog.Stage{loggedStage(t, snap, engine.StagePreSend, plain)}},
		{ID: "c3#3", Session: "s3", Number: 3, Stages: []decisionlog.Stage{loggedStage(t, snap, engine.StagePostResponse, interrupted)}},
	}
	var b strings.Builder
	for _, r := range recs {
		r.V, r.Time, r.PolicySet, r.Transport, r.Outcome = decisionlog.Version, time.Unix(1700000000, 0).UTC(), snap.Hash, "websocket", "completed"
		line, err := json.Marshal(r)
		require.NoError(t, err)
		b.Write(line)
		b.WriteByte('\n')
	}
	path := filepath.Join(t.TempDir(), "decisions.jsonl")
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
	return path
}

// cancelledPolicies is the default set with every injected "aborted" spelled "cancelled".
func cancelledPolicies(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	srcs, err := engine.ReadSources(defaultPolicies)
	require.NoError(t, err)
	for _, s := range srcs {
		data := strings.ReplaceAll(string(s.Data), `'"aborted"'`, `'"cancelled"'`)
		require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(s.Name)), []byte(data), 0o644))
	}
	return dir
}

// TestReplayCommand: the exit status and report of replay for each way it can end.
func TestReplayCommand(t *testing.T) {
	log := writeLog(t)
	cancelled := cancelledPolicies(t)
	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	require.NoError(t, os.WriteFile(bad, []byte("{\"v\":1,\"id\":\"x\",\"stages\":[]}\nnot json\n"), 0o600))
	empty := filepath.Join(t.TempDir(), "empty.jsonl")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr string
	}{
		{"the set the log was made under changes nothing", []string{"replay", "--decisions", log, "--policies", defaultPolicies}, ExitOK,
			[]string{"replayed 3 turns (3 stages)", "0 turns would change (0 stages: verdict 0, fired 0, request 0, effects 0), 3 unchanged"}, ""},
		{"another output text changes the ESC turn's request", []string{"replay", "--decisions", log, "--policies", cancelled}, ExitFailed,
			[]string{"1 turn would change (1 stage: verdict 0, fired 0, request 1, effects 0), 2 unchanged", "c1#2  session s1",
				"pre_send: request", "function_call_output:call_B (made "}, ""},
		{"an enforced shadow rule changes the interrupted response's effects", []string{"replay", "--decisions", log, "--policies", defaultPolicies,
			"--enforce", "interrupt-discards-calls"}, ExitFailed,
			[]string{"1 turn would change", "c3#3  session s3", "post_response: fired, effects",
				"fired    was interrupt-discards-calls (shadow), record-pending-interrupted, ", "now interrupt-discards-calls, anchor-to-response",
				"effects  was anchor \"resp_3\"; pending of resp_3 [call_X]", "now anchor \"resp_3\"; pending of resp_3 []"}, ""},
		{"flags after the command's name in any order", []string{"replay", "-o", "text", "--policies", defaultPolicies, "--decisions", log}, ExitOK, nil, ""},
		{"--decisions is required", []string{"replay"}, ExitError, nil, "--decisions is required"},
		{"a log that does not exist", []string{"replay", "--decisions", "nope.jsonl", "--policies", defaultPolicies}, ExitError, nil, "decision log: open nope.jsonl"},
		{"a line that is no record", []string{"replay", "--decisions", bad, "--policies", defaultPolicies}, ExitError, nil, "bad.jsonl: line 2: invalid character"},
		{"an empty log", []string{"replay", "--decisions", empty, "--policies", defaultPolicies}, ExitError, nil, "no records in"},
		{"policies that do not compile", []string{"replay", "--decisions", log, "--policies", "testdata/unknown-rule.yaml"}, ExitError, nil, ""},
		{"an unknown rule to enforce", []string{"replay", "--decisions", log, "--policies", defaultPolicies, "--enforce", "nope"}, ExitError, nil, `unknown rule "nope"`},
		{"an unknown format", []string{"replay", "--decisions", log, "-o", "xml"}, ExitError, nil, `-o "xml"`},
		{"a positional argument", []string{"replay", "--decisions", log, "extra"}, ExitError, nil, `unexpected argument "extra"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := run(tc.args...)
			assert.Equal(t, tc.code, code, "stdout:\n%s\nstderr:\n%s", out, errs)
			for _, want := range tc.stdout {
				assert.Contains(t, out, want)
			}
			assert.Contains(t, errs, tc.stderr)
		})
	}
}

// TestReplayJSON: -o json is the report with structured changes and summary counts.
func TestReplayJSON(t *testing.T) {
	log := writeLog(t)
	code, out, errs := run("replay", "--decisions", log+","+log, "--policies", cancelledPolicies(t), "-o", "json")
	require.Equal(t, ExitFailed, code, errs)
	var rep ReplayReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	assert.Equal(t, ReplaySummary{Turns: 6, Stages: 6, ChangedTurns: 2, ChangedStages: 2, UnchangedTurns: 4, Request: 2}, rep.Summary,
		"two files, read in order")
	assert.Equal(t, ExitFailed, rep.Exit)
	require.Len(t, rep.Turns, 2)
	turn := rep.Turns[0]
	assert.Equal(t, "c1#2", turn.ID)
	assert.Equal(t, log, turn.File)
	assert.Equal(t, 1, turn.Line)
	require.Len(t, turn.Stages, 1)
	st := turn.Stages[0]
	assert.Equal(t, []string{"request"}, st.Changes)
	assert.Nil(t, st.Verdict)
	assert.Nil(t, st.Fired)
	require.NotNil(t, st.Request)
	assert.Equal(t, "resp_1", st.Request.Was.PreviousResponseID)
	var keys []string
	for i, it := range st.Request.Now.Items {
		keys = append(keys, it.Key)
		assert.Equal(t, it.Key, st.Request.Was.Items[i].Key)
	}
	assert.Equal(t, []string{"function_call_output:call_A", "function_call_output:call_B", st.Request.Now.Items[2].Key}, keys)
	assert.NotEqual(t, st.Request.Was.Items[1].Made, st.Request.Now.Items[1].Made, "the made output's text changed")
}
