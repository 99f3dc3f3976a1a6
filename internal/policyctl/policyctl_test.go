package policyctl

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Main(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestValidateDefaultPolicies(t *testing.T) {
	code, out, errs := run("validate", "../../policies")
	assert.Equal(t, ExitOK, code, errs)
	assert.Contains(t, out, "ok: ")
}

// TestValidateBrokenCorpus: every broken file exits 1 and prints the golden diagnostics.
func TestValidateBrokenCorpus(t *testing.T) {
	files, err := filepath.Glob("../../testdata/policies/broken/*.yaml")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 12)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			code, _, errs := run("validate", f)
			assert.Equal(t, ExitError, code)
			golden, err := os.ReadFile(strings.TrimSuffix(f, ".yaml") + ".golden")
			require.NoError(t, err)
			for _, line := range strings.Split(strings.TrimSpace(string(golden)), "\n") {
				// The golden names files relative to the repository root.
				want := strings.ReplaceAll(line, "testdata/policies/broken/", f[:strings.LastIndex(f, "/")+1])
				assert.Contains(t, errs, want)
			}
		})
	}
}

func TestTestDefaultFixtures(t *testing.T) {
	code, out, errs := run("test", "--policies", "../../policies", "../../policytests")
	require.Equal(t, ExitOK, code, "%s\n%s", out, errs)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	assert.Regexp(t, `^\d+ passed, 0 failed$`, last)
	assert.NotContains(t, out, "rules no case fired")
	assert.GreaterOrEqual(t, strings.Count(out, "--- PASS: "), 60)
}

func TestTestWrongExpectationShowsDiff(t *testing.T) {
	code, out, _ := run("test", "--policies", "../../policies", "testdata/wrong-expectation.yaml")
	assert.Equal(t, ExitFailed, code)
	assert.Contains(t, out, "--- FAIL: wrong/esc-expects-cancelled")
	assert.Contains(t, out, "want [infer-prev-from-pending, keep-outputs-match]")
	assert.Contains(t, out, "got  [infer-prev-from-pending, inject-aborted-for-pending, keep-outputs-match]")
	assert.Contains(t, out, `request.input[1].output: want "cancelled", got "aborted"`)
	assert.Contains(t, out, "0 passed, 1 failed")
}

func TestTestWrongEffectsShowDiff(t *testing.T) {
	code, out, _ := run("test", "--policies", "../../policies", "testdata/wrong-effects.yaml")
	assert.Equal(t, ExitFailed, code)
	for _, want := range []string{
		`effects.anchor: want "", got "resp_2"`,
		"effects.pending: want resp_2 [call_B:custom_tool_call], got resp_2 [call_B:function_call]",
		"effects.delete_pending: want [], got [resp_1]",
		"effects.transcript: want reset, got clear",
		`effects.upstream_cached: want "resp_2", got ""`,
	} {
		assert.Contains(t, out, want)
	}
}

func TestTestRunFilterAndJSON(t *testing.T) {
	code, out, _ := run("test", "--policies", "../../policies", "-run", "esc/partial-outputs-no-prev$", "--json", "../../policytests")
	assert.Equal(t, ExitOK, code)
	assert.Contains(t, out, `"passed": 1`)
	assert.Contains(t, out, `"failed": 0`)
}

func TestTestFixtureTyposFailLoudly(t *testing.T) {
	tests := []struct{ file, want string }{
		{"testdata/typo-field.yaml", "field fird not found"},
		{"testdata/unknown-rule.yaml", "unknown rule"},
		{"testdata/typo-effects-transcript.yaml", `unknown effects.transcript "apend"`},
		{"testdata/typo-effects-pending.yaml", `unknown field "response"`},
		{"testdata/response-outside-post-response.yaml", "a response is bookkept only in stage post_response"},
		{"testdata/enforce-unknown-rule.yaml", `names unknown rule "interrupt-discard-calls"`},
		{"testdata/enforce-not-shadow.yaml", `enforces rule "record-pending-calls", which is not a shadow rule`},
		{"testdata/response-contradictory.yaml", `interrupt_mode "discard_partial_items" without interrupted: true`},
	}
	for _, tc := range tests {
		code, _, errs := run("test", "--policies", "../../policies", tc.file)
		assert.Equal(t, ExitError, code, tc.file)
		assert.Contains(t, errs, tc.want, tc.file)
	}
	code, _, errs := run("test", "--policies", "../../policies", "-run", "nothing-matches-this", "../../policytests")
	assert.Equal(t, ExitError, code, "a run with zero cases fails")
	assert.Contains(t, errs, "no test cases ran")
}

func TestExplainESC(t *testing.T) {
	code, out, errs := run("explain", "--policies", "../../policies",
		"--request", "../../testdata/explain/esc-request.json", "--state", "../../testdata/explain/esc-state.yaml")
	require.Equal(t, ExitOK, code, errs)
	assert.Regexp(t, `✔\s+\d+ infer-prev-from-pending\s+\[pre_send\]\s+when = true`, out)
	assert.Regexp(t, `\d+ reject-item-id-as-prev\s+\[pre_send\]\s+when = false`, out)
	assert.Contains(t, out, "not evaluated (group keep_drop already matched)")
	assert.Contains(t, out, `+   "previous_response_id": "resp_1"`)
	assert.Contains(t, out, `+       "call_id": "call_B",`)
	assert.Contains(t, out, "verdict: send")
}

func TestExplainPostResponse(t *testing.T) {
	code, out, errs := run("explain", "--policies", "../../policies",
		"--request", "testdata/explain/post-response-request.json", "--state", "testdata/explain/post-response-state.yaml")
	require.Equal(t, ExitOK, code, errs)
	assert.Contains(t, out, "stage post_response")
	assert.Regexp(t, `✔\s+\d+ record-pending-calls\s+\[post_response\]\s+when = true`, out)
	assert.Regexp(t, `\d+ clear-anchor-after-response\s+\[post_response\]\s+when = not evaluated \(group anchor already matched\)`, out)
	for _, want := range []string{
		"session anchor: resp_2",
		"pending of resp_2: call_B (function_call)",
		"pending deleted: resp_1",
		"transcript: append",
		"upstream connection holds: resp_2",
		"verdict: send",
	} {
		assert.Contains(t, out, want)
	}
}

// TestExplainEnforce: --enforce shows the other reading a shadow rule ships, and refuses
// names that are no shadow rule.
func TestExplainEnforce(t *testing.T) {
	args := []string{"explain", "--policies", "../../policies",
		"--request", "testdata/explain/post-response-request.json", "--state", "testdata/explain/interrupt-state.yaml"}
	tests := []struct {
		name         string
		enforce      string
		code         int
		want, absent []string
	}{
		{"shadow", "", ExitOK,
			[]string{"reason interrupt_calls_discarded (shadow: counted, nothing changed)", "pending of resp_2: call_B (function_call)", "transcript: append"},
			[]string{"enforced"}},
		{"enforced", "interrupt-discards-calls", ExitOK,
			[]string{"reason interrupt_calls_discarded (shadow, enforced by --enforce)", "pending of resp_2: none"},
			[]string{"call_B (function_call)"}},
		{"unknown rule", "interrupt-discard-calls", ExitError, []string{`unknown rule "interrupt-discard-calls"`}, nil},
		{"not a shadow rule", "record-pending-calls", ExitError, []string{`rule "record-pending-calls" is not a shadow rule`}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := args
			if tc.enforce != "" {
				a = append(slices.Clone(args), "--enforce", tc.enforce)
			}
			code, out, errs := run(a...)
			require.Equal(t, tc.code, code, errs)
			for _, w := range tc.want {
				assert.Contains(t, out+errs, w)
			}
			for _, w := range tc.absent {
				assert.NotContains(t, out, w)
			}
		})
	}
}

func TestVars(t *testing.T) {
	tests := []struct {
		args         []string
		code         int
		want, absent []string
	}{
		{nil, ExitOK, []string{"request.previous_response_id", "error.timeout", "response.unanswered_calls", "session.anchor"}, []string{"session.expected", "request.edits_history"}},
		{[]string{"--stage", "post_response"}, ExitOK, []string{"response.id", "previous.item_keys", "response.incomplete_reason", "response.server_started",
			"response.injected_outputs", "response.interrupted", "response.interrupt_mode", "response.terminal_calls", "response.terminal_output"}, []string{"error.code", "recovery.enabled"}},
		{[]string{"--stage", "pre_send"}, ExitOK, []string{"request.item_keys"}, []string{"response.id", "error.code", "response.interrupted"}},
		{[]string{"--stage", "on_upstream_error"}, ExitOK, []string{"error.timeout", "recovery.client_written"}, []string{"response.status"}},
		{[]string{"--stage", "pairing"}, ExitError, nil, nil},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, _ := run(append([]string{"vars"}, tc.args...)...)
			require.Equal(t, tc.code, code)
			for _, w := range tc.want {
				assert.Regexp(t, `(?m)^`+regexp.QuoteMeta(w)+`\s`, out)
			}
			for _, a := range tc.absent {
				assert.NotRegexp(t, `(?m)^`+regexp.QuoteMeta(a)+`\s`, out)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	code, _, _ := run()
	assert.Equal(t, ExitError, code)
	code, _, _ = run("frobnicate")
	assert.Equal(t, ExitError, code)
	code, _, _ = run("explain")
	assert.Equal(t, ExitError, code)
	code, out, _ := run("vars")
	assert.Equal(t, ExitOK, code)
	assert.Contains(t, out, "request.previous_response_id")
}
