package engine_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
)

// defaultPolicies is the shipped policy set, relative to this package.
const defaultPolicies = "../policies"

func loadDefaults(t testing.TB, dir string, opts ...engine.CompileOption) *engine.Snapshot {
	t.Helper()
	snap, diags, err := engine.LoadDir(dir, opts...)
	require.NoError(t, err)
	require.False(t, diags.HasErrors(), "%s:\n%s", dir, diags.Error())
	return snap
}

// escTurn is the ESC case of issue 2: pending [A, B], the client answers A only and sends no
// previous_response_id.
func escTurn(t testing.TB) *engine.Turn {
	turn := newTurn(t, create("", fco("call_A", "ok"), msg("user", "<turn_aborted>interrupted</turn_aborted>")))
	turn.Anchor = "resp_1"
	turn.Cached = "resp_1"
	turn.Pending = engine.Pending{Known: true, ResponseID: "resp_1", Calls: []engine.PendingCall{
		{ID: "call_A", Kind: "function_call"}, {ID: "call_B", Kind: "function_call"}}}
	return turn
}

// fullCreateTurn is a full create whose last call has no output.
func fullCreateTurn(t testing.TB) *engine.Turn {
	turn := newTurn(t, create("", msg("developer", "base"), msg("user", "go"), ctc("call_C"), msg("user", "next")))
	turn.Number = 1
	return turn
}

// TestDefaultPoliciesCompile: the shipped set compiles without errors.
func TestDefaultPoliciesCompile(t *testing.T) {
	snap, diags, err := engine.LoadDir(defaultPolicies)
	require.NoError(t, err)
	require.False(t, diags.HasErrors(), diags.Error())
	assert.Empty(t, diags.Lints(), "the default set should be lint-clean:\n%s", diags.Lints().Error())
	assert.True(t, snap.HasRule("inject-aborted-for-pending"))
	assert.Len(t, snap.Hash, 16)
}

// TestInjectedTextIsPolicy: changing the injected text in the YAML alone changes what is
// injected (issue 2, "Done when").
func TestInjectedTextIsPolicy(t *testing.T) {
	dir := t.TempDir()
	srcs, err := engine.ReadSources(defaultPolicies)
	require.NoError(t, err)
	replaced := 0
	for _, s := range srcs {
		replaced += bytes.Count(s.Data, []byte(`'"aborted"'`))
		data := bytes.ReplaceAll(s.Data, []byte(`'"aborted"'`), []byte(`'"cancelled"'`))
		require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(s.Name)), data, 0o644))
	}
	require.Positive(t, replaced, `the default policies spell the injected text as '"aborted"'`)

	orig := loadDefaults(t, defaultPolicies)
	edited := loadDefaults(t, dir)
	assert.NotEqual(t, orig.Hash, edited.Hash)

	tests := []struct {
		name   string
		turn   func(testing.TB) *engine.Turn
		call   string
		reason string
		items  []string
	}{
		{"pending call without output (ESC)", escTurn, "call_B", "aborted_injected",
			[]string{"function_call_output:call_A", "function_call_output:call_B", "message:user"}},
		{"call in a full create without output", fullCreateTurn, "call_C", "aborted_injected_inline",
			[]string{"message:developer", "message:user", "custom_tool_call:call_C", "custom_tool_call_output:call_C", "message:user"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range []struct {
				snap *engine.Snapshot
				text string
			}{{orig, "aborted"}, {edited, "cancelled"}} {
				turn := tc.turn(t)
				out := v.snap.Evaluate(engine.StagePreSend, turn)
				require.NoError(t, out.Err)
				assert.Equal(t, engine.VerdictSend, out.Verdict)
				assert.Contains(t, out.Reasons(), tc.reason)
				assert.Equal(t, tc.items, items(turn))
				assert.Equal(t, v.text, outputText(t, turn, tc.call))
			}
		})
	}
	t.Run("ESC: previous_response_id inferred", func(t *testing.T) {
		turn := escTurn(t)
		out := orig.Evaluate(engine.StagePreSend, turn)
		assert.Equal(t, "resp_1", turn.Request.PreviousResponseID())
		assert.Equal(t, []string{"pending_prev_infer", "aborted_injected", "pairing_checked", "function_call_output_call_id_match"}, out.Reasons())
	})
}

// outcomeSummary is what must not depend on concurrency.
type outcomeSummary struct {
	Fired       []engine.Fired
	Verdict     engine.Verdict
	Reject      *engine.Rejection
	ClearAnchor bool
	Err         string
	Cost        uint64
	Request     string
	Replayed    bool
}

func summarize(o *engine.Outcome, turn *engine.Turn) outcomeSummary {
	s := outcomeSummary{Fired: o.Fired, Verdict: o.Verdict, Reject: o.Reject, ClearAnchor: o.ClearsAnchor(),
		Cost: o.Cost, Request: string(turn.Request.Bytes()), Replayed: turn.Replayed}
	if o.Err != nil {
		s.Err = o.Err.Error()
	}
	return s
}

// TestConcurrentEvaluation: one snapshot evaluated from 8 goroutines (run under -race) gives
// the outcomes a sequential evaluation gives.
func TestConcurrentEvaluation(t *testing.T) {
	snap := loadDefaults(t, defaultPolicies, engine.WithObserver(engine.NewMetrics(nil)))
	type tcase struct {
		stage string
		turn  func(testing.TB) *engine.Turn
	}
	cases := []tcase{
		{engine.StagePreSend, escTurn},
		{engine.StagePreSend, fullCreateTurn},
		{engine.StagePreSend, func(t testing.TB) *engine.Turn {
			turn := newTurn(t, create("msg_123", msg("user", "hi")))
			turn.Mode = engine.ModeStrict
			return turn
		}},
		{engine.StagePreSend, func(t testing.TB) *engine.Turn {
			turn := newTurn(t, create("", fc("call_a"), fco("call_a", "ok"), fco("call_orphan", "x"), msg("user", "hi")))
			turn.Transport = engine.TransportHTTP
			return turn
		}},
		{engine.StageOnUpstreamError, func(t testing.TB) *engine.Turn {
			turn := newTurn(t, create("resp_1", fco("call_a", "ok")))
			turn.Anchor = "resp_1"
			turn.Replay = engine.Replay{Available: true, LastResponseID: "resp_1", Items: nil}
			turn.Error = &engine.UpstreamError{Status: 400, Code: "previous_response_not_found", Message: "Previous response with id 'resp_1' not found."}
			return turn
		}},
		{engine.StageOnUpstreamError, func(t testing.TB) *engine.Turn {
			turn := newTurn(t, create("resp_1", fco("call_a", "ok")))
			turn.Error = &engine.UpstreamError{Status: 500, Code: "server_error"}
			return turn
		}},
	}
	want := make([]outcomeSummary, len(cases))
	for i, c := range cases {
		turn := c.turn(t)
		want[i] = summarize(snap.Evaluate(c.stage, turn), turn)
		require.NotEmpty(t, want[i].Fired, "case %d fires nothing; it would not exercise much", i)
	}
	const goroutines, rounds = 8, 25
	var wg sync.WaitGroup
	errs := make(chan string, goroutines*rounds*len(cases))
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				for k := range cases {
					i := (g + r + k) % len(cases)
					turn := cases[i].turn(t)
					got := summarize(snap.Evaluate(cases[i].stage, turn), turn)
					if !assert.ObjectsAreEqual(want[i], got) {
						errs <- fmt.Sprintf("goroutine %d, case %d:\nwant %+v\ngot  %+v", g, i, want[i], got)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
