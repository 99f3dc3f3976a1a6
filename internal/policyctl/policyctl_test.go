package policyctl

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/internal/e2etest"
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

// TestExitCodes: the documented exit status of every command, for each way it can end.
func TestExitCodes(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		// stderr holds what the error output must say.
		stderr string
	}{
		{"validate ok", []string{"validate", "../../policies"}, ExitOK, ""},
		{"validate errors", []string{"validate", "../../testdata/policies/broken/type_error.yaml"}, ExitError, "1 error(s)"},
		{"validate lint", []string{"validate", "testdata/lint.yaml"}, ExitLint, "1 lint finding(s)"},
		{"validate missing", []string{"validate", "testdata/absent"}, ExitError, "no such file"},
		{"validate bad format", []string{"validate", "-o", "yaml", "../../policies"}, ExitError, `-o "yaml": want one of text, json`},
		{"test passes", []string{"test", "--policies", "../../policies", "../../policytests"}, ExitOK, ""},
		{"test one file passes", []string{"test", "--policies", "../../policies", "../../policytests/esc.yaml"}, ExitOK, ""},
		{"test fails", []string{"test", "--policies", "../../policies", "testdata/wrong-expectation.yaml"}, ExitFailed, ""},
		{"test fixture typo", []string{"test", "--policies", "../../policies", "testdata/typo-field.yaml"}, ExitError, "field fird not found"},
		{"test policies broken", []string{"test", "--policies", "../../testdata/policies/broken/type_error.yaml", "../../policytests"}, ExitError, "not valid"},
		{"test run matches nothing", []string{"test", "--policies", "../../policies", "-run", "nothing-matches-this", "../../policytests"}, ExitError,
			`-run "nothing-matches-this" matches none of the`},
		{"test no cases", []string{"test", "--policies", "../../policies", t.TempDir()}, ExitError, "no test cases ran"},
		{"test coverage of a full run", []string{"test", "--coverage", "--policies", "../../policies", "../../policytests"}, ExitOK, ""},
		{"test coverage of one file", []string{"test", "--coverage", "--policies", "../../policies", "../../policytests/esc.yaml"}, ExitLint, ""},
		{"test bad regexp", []string{"test", "-run", "(", "../../policytests"}, ExitError, "-run: "},
		{"explain ok", []string{"explain", "--policies", "../../policies", "--request", "../../testdata/explain/esc-request.json"}, ExitOK, ""},
		{"explain without request", []string{"explain"}, ExitError, "--request is required"},
		{"explain unknown stage", []string{"explain", "--policies", "../../policies", "--request", "../../testdata/explain/esc-request.json", "--stage", "bogus"},
			ExitError, `unknown stage "bogus"`},
		{"vars", []string{"vars"}, ExitOK, ""},
		{"vars unknown stage", []string{"vars", "--stage", "pairing"}, ExitError, `unknown entry stage "pairing"`},
		{"no command", nil, ExitError, "Usage:"},
		{"unknown command", []string{"frobnicate"}, ExitError, `unknown command "frobnicate"`},
		{"unknown command typo", []string{"valdate"}, ExitError, "did you mean validate?"},
		{"unknown flag", []string{"validate", "--frobnicate"}, ExitError, "flag provided but not defined: -frobnicate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := run(tc.args...)
			assert.Equal(t, tc.code, code, "stdout:\n%s\nstderr:\n%s", out, errs)
			assert.Contains(t, errs, tc.stderr)
		})
	}
}

// TestHelp: every command answers --help, -h and `help COMMAND` on stdout with its usage,
// flags, examples and the exit codes, and exits 0.
func TestHelp(t *testing.T) {
	for _, c := range commands {
		for _, args := range [][]string{{c.name, "--help"}, {c.name, "-h"}, {"help", c.name}} {
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				code, out, errs := run(args...)
				require.Equal(t, ExitOK, code, errs)
				assert.Empty(t, errs)
				for _, want := range []string{"usage: policyctl " + c.name, "Flags:", "Examples:", "Exit status:", "  policyctl " + c.name} {
					assert.Contains(t, out, want)
				}
			})
		}
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		code, out, _ := run(args...)
		assert.Equal(t, ExitOK, code)
		assert.Contains(t, out, "Commands:")
		assert.Contains(t, out, "Exit status:")
	}
	code, out, _ := run("vars", "--help")
	require.Equal(t, ExitOK, code)
	assert.NotContains(t, out, "request.previous_response_id", "vars --help prints help, not the variables")
	assert.Contains(t, out, "-stage")
}

func TestFlagsAfterPaths(t *testing.T) {
	code, out, _ := run("validate", "../../policies", "-o", "json")
	require.Equal(t, ExitOK, code)
	assert.Contains(t, out, `"valid": true`)
}

func TestValidateJSON(t *testing.T) {
	type diag struct {
		File     string `json:"file"`
		Line     int    `json:"line"`
		Col      int    `json:"col"`
		Severity string `json:"severity"`
		Message  string `json:"message"`
	}
	type report struct {
		Valid       bool   `json:"valid"`
		Set         string `json:"set"`
		Rules       int    `json:"rules"`
		Errors      int    `json:"errors"`
		Lints       int    `json:"lints"`
		Diagnostics []diag `json:"diagnostics"`
		Error       string `json:"error"`
		Exit        int    `json:"exit"`
	}
	tests := []struct {
		path  string
		code  int
		valid bool
		diags []diag
	}{
		{"../../policies", ExitOK, true, []diag{}},
		{"testdata/lint.yaml", ExitLint, true, []diag{{"testdata/lint.yaml", 7, 11, "lint", `rule "never" can never fire: its when is always false`}}},
		{"../../testdata/policies/broken/compare_types.yaml", ExitError, false, []diag{{"../../testdata/policies/broken/compare_types.yaml", 7, 25, "error",
			"when: cannot compare string with int using == (both sides need one type: quote a string, or convert with string(…) or int(…))"}}},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			code, out, errs := run("validate", "-o", "json", tc.path)
			require.Equal(t, tc.code, code, errs)
			assert.Empty(t, errs, "JSON mode prints nothing else")
			var rep report
			require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
			assert.Equal(t, tc.valid, rep.Valid)
			assert.Equal(t, tc.code, rep.Exit)
			assert.Equal(t, tc.diags, rep.Diagnostics)
			if tc.valid {
				assert.NotEmpty(t, rep.Set)
				assert.Positive(t, rep.Rules)
			}
		})
	}
	code, out, _ := run("validate", "-o", "json", "testdata/absent")
	assert.Equal(t, ExitError, code)
	assert.Contains(t, out, `"error": "read policies: `)
}

func TestTestWrongExpectationShowsDiff(t *testing.T) {
	code, out, _ := run("test", "--policies", "../../policies", "testdata/wrong-expectation.yaml")
	assert.Equal(t, ExitFailed, code)
	assert.Contains(t, out, "--- FAIL: wrong/esc-expects-cancelled")
	// A failure names the fixture file and the line of the expectation that failed.
	assert.Contains(t, out, "    testdata/wrong-expectation.yaml:20: fired rules:")
	assert.Contains(t, out, "want [infer-prev-from-pending, keep-outputs-match]")
	assert.Contains(t, out, "got  [infer-prev-from-pending, inject-aborted-for-pending, keep-outputs-match]")
	assert.Contains(t, out, `    testdata/wrong-expectation.yaml:24: request.input[1].output: want "cancelled", got "aborted"`)
	assert.Contains(t, out, "0 passed, 1 failed")
	assert.NotContains(t, out, "fired in no case", "no coverage note on a failing run")
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
	assert.Regexp(t, `testdata/wrong-effects\.yaml:\d+: effects\.anchor: `, out)
}

// testReport is the JSON of test -o json, as a CI script reads it.
type testReport struct {
	Results []struct {
		File     string `json:"file"`
		Fixture  string `json:"fixture"`
		Case     string `json:"case"`
		Line     int    `json:"line"`
		Passed   bool   `json:"passed"`
		Failures []struct {
			File, Case, Field, Want, Got, Message string
			Line                                  int
		} `json:"failures"`
	} `json:"results"`
	Passed   int `json:"passed"`
	Failed   int `json:"failed"`
	Coverage []struct {
		File      string   `json:"file"`
		Rules     int      `json:"rules"`
		Fired     int      `json:"fired"`
		Unfired   []string `json:"unfired"`
		UnderTest bool     `json:"under_test"`
	} `json:"coverage"`
	Exit int `json:"exit"`
}

// TestTestJSON: failures are structured (file path, line of the expectation, case, field,
// want, got), not pre-formatted strings.
func TestTestJSON(t *testing.T) {
	for _, flagSet := range [][]string{{"-o", "json"}, {"--json"}} {
		args := append([]string{"test", "--policies", "../../policies"}, flagSet...)
		code, out, _ := run(append(args, "testdata/wrong-expectation.yaml")...)
		require.Equal(t, ExitFailed, code)
		var rep testReport
		require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
		require.Len(t, rep.Results, 1)
		r := rep.Results[0]
		assert.Equal(t, "testdata/wrong-expectation.yaml", r.File, "file is the fixture's path")
		assert.Equal(t, "wrong", r.Fixture)
		assert.Equal(t, 6, r.Line)
		require.Len(t, r.Failures, 2)
		f := r.Failures[0]
		assert.Equal(t, "testdata/wrong-expectation.yaml", f.File)
		assert.Equal(t, 20, f.Line)
		assert.Equal(t, "esc-expects-cancelled", f.Case)
		assert.Equal(t, "fired", f.Field)
		assert.Equal(t, "[infer-prev-from-pending, keep-outputs-match]", f.Want)
		assert.Equal(t, "[infer-prev-from-pending, inject-aborted-for-pending, keep-outputs-match]", f.Got)
		f = r.Failures[1]
		assert.Equal(t, 24, f.Line)
		assert.Equal(t, "request.input[1].output", f.Field)
		assert.Equal(t, `"cancelled"`, f.Want)
		assert.Equal(t, `"aborted"`, f.Got)
		assert.Equal(t, ExitFailed, rep.Exit)
	}
}

func TestTestJUnit(t *testing.T) {
	code, out, _ := run("test", "--policies", "../../policies", "-o", "junit", "testdata/wrong-expectation.yaml", "../../policytests/esc.yaml")
	require.Equal(t, ExitFailed, code)
	require.True(t, strings.HasPrefix(out, "<?xml"), out)
	var suites struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Suites   []struct {
			Name     string `xml:"name,attr"`
			File     string `xml:"file,attr"`
			Tests    int    `xml:"tests,attr"`
			Failures int    `xml:"failures,attr"`
			Cases    []struct {
				Name     string `xml:"name,attr"`
				Line     int    `xml:"line,attr"`
				Failures []struct {
					Message string `xml:"message,attr"`
					Type    string `xml:"type,attr"`
					Text    string `xml:",chardata"`
				} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	require.NoError(t, xml.Unmarshal([]byte(out), &suites))
	require.Len(t, suites.Suites, 2)
	assert.Equal(t, 1, suites.Failures)
	assert.Equal(t, suites.Suites[0].Tests+suites.Suites[1].Tests, suites.Tests)
	wrong := suites.Suites[0]
	assert.Equal(t, "wrong", wrong.Name)
	assert.Equal(t, "testdata/wrong-expectation.yaml", wrong.File)
	require.Len(t, wrong.Cases, 1)
	require.Len(t, wrong.Cases[0].Failures, 2)
	assert.Equal(t, "fired", wrong.Cases[0].Failures[0].Type)
	assert.Contains(t, wrong.Cases[0].Failures[1].Text, `testdata/wrong-expectation.yaml:24: request.input[1].output: want "cancelled"`)
	assert.Zero(t, suites.Suites[1].Failures)
}

// TestCoverage: coverage is per policy file and scoped to the files a run is about; one
// fixture file that passes exits 0 unless --coverage asks.
func TestCoverage(t *testing.T) {
	code, out, _ := run("test", "--policies", "../../policies", "-o", "json", "--coverage", "../../policytests/esc.yaml")
	require.Equal(t, ExitLint, code)
	var rep testReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	require.Len(t, rep.Coverage, 3)
	norm, rec := rep.Coverage[0], rep.Coverage[1]
	assert.Equal(t, "../../policies/10-normalizer.yaml", norm.File)
	assert.True(t, norm.UnderTest)
	assert.Contains(t, norm.Unfired, "drop-prev-mismatch")
	assert.Equal(t, norm.Rules-norm.Fired, len(norm.Unfired))
	assert.False(t, rec.UnderTest, "the recovery rules are not what esc.yaml tests")

	code, out, _ = run("test", "--policies", "../../policies", "--coverage", "../../policytests/esc.yaml")
	require.Equal(t, ExitLint, code)
	assert.Regexp(t, `10-normalizer\.yaml \(normalizer\): \d+ of \d+ rules, \d+% \(under test\)`, out)
	assert.Contains(t, out, "rules no case fired: ")
	assert.Contains(t, out, "20-recovery.yaml (recovery): 0 of ")
	assert.Contains(t, out, "(not under test: no case names its rules)")

	code, out, _ = run("test", "--policies", "../../policies", "../../policytests/esc.yaml")
	require.Equal(t, ExitOK, code, "without --coverage a passing run exits 0")
	assert.Regexp(t, `\d+ rule\(s\) of the policy files under test fired in no case \(--coverage lists them\)`, out)

	code, out, _ = run("test", "--policies", "../../policies", "--coverage", "../../policytests")
	require.Equal(t, ExitOK, code, out)
	assert.NotContains(t, out, "rules no case fired")
}

// TestPairingGuard: a request whose pairing is broken after pre_send fails its case,
// naming the call, unless the case expects it; expecting it of a paired request fails too.
func TestPairingGuard(t *testing.T) {
	code, out, _ := run("test", "--policies", "testdata/pairing/policy.yaml", "testdata/pairing/fixture.yaml", "testdata/pairing/expected.yaml")
	require.Equal(t, ExitFailed, code)
	assert.Contains(t, out, "--- FAIL: pairing/outputs-removed-after-pairing")
	assert.Contains(t, out, "testdata/pairing/fixture.yaml:3: pairing broken after pre_send: call call_A has no output")
	assert.Contains(t, out, "write expect.broken_pairing: true if the case means it")
	assert.Contains(t, out, "--- PASS: pairing/paired-request")
	assert.Contains(t, out, "--- PASS: pairing-expected/outputs-removed-on-purpose")
	assert.Contains(t, out, "--- FAIL: pairing-expected/paired-but-said-broken")
	assert.Contains(t, out, "broken_pairing: want the pairing broken after pre_send, got every call answered once")
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
}

func TestTestRunFilterAndJSON(t *testing.T) {
	code, out, _ := run("test", "--policies", "../../policies", "-run", "esc/partial-outputs-no-prev$", "--json", "../../policytests")
	assert.Equal(t, ExitOK, code)
	assert.Contains(t, out, `"passed": 1`)
	assert.Contains(t, out, `"failed": 0`)
}

// TestWatch: test --watch runs once, runs again when a fixture changes, and stops when
// interrupted with the status of its last run.
func TestWatch(t *testing.T) {
	dir := t.TempDir()
	policy, err := os.ReadFile("testdata/pairing/policy.yaml")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "policy.yaml"), policy, 0o644))
	fixture := filepath.Join(t.TempDir(), "fixture.yaml")
	good := "cases:\n  - name: c\n    request: {type: response.create, model: gpt-5, input: []}\n    expect: {fired: [pair]}\n"
	require.NoError(t, os.WriteFile(fixture, []byte(good), 0o644))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	old, oldInterval := watchContext, watchInterval
	watchContext = func() (context.Context, context.CancelFunc) { return ctx, func() {} }
	watchInterval = 20 * time.Millisecond
	t.Cleanup(func() { watchContext, watchInterval = old, oldInterval })

	var out, errs e2etest.SyncBuffer
	done := make(chan int, 1)
	go func() { done <- Main([]string{"test", "--watch", "--policies", dir, fixture}, &out, &errs) }()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), "watching ") }, 5*time.Second, 10*time.Millisecond)
	assert.Contains(t, out.String(), "1 passed, 0 failed")

	bad := strings.Replace(good, "fired: [pair]", "fired: [pair, answer-calls]", 1)
	require.NoError(t, os.WriteFile(fixture, []byte(bad), 0o644))
	require.Eventually(t, func() bool { return strings.Contains(out.String(), "0 passed, 1 failed") }, 5*time.Second, 10*time.Millisecond,
		"no second run after the change:\n%s%s", out.String(), errs.String())
	assert.Contains(t, out.String(), "files changed, running again")
	cancel()
	select {
	case code := <-done:
		assert.Equal(t, ExitFailed, code, "the status of the last run")
	case <-time.After(5 * time.Second):
		t.Fatal("the watch did not stop")
	}
}

func TestExplainESC(t *testing.T) {
	code, out, errs := run("explain", "--policies", "../../policies",
		"--request", "../../testdata/explain/esc-request.json", "--state", "../../testdata/explain/esc-state.yaml")
	require.Equal(t, ExitOK, code, errs)
	assert.Regexp(t, `✔\s+\d+ infer-prev-from-pending\s+\[pre_send\]\s+fired\s+when = true`, out)
	assert.Regexp(t, `\d+ reject-item-id-as-prev\s+\[pre_send\]\s+false\s+when = false`, out)
	assert.Regexp(t, `\d+ drop-no-anchor\s+\[pre_send\]\s+skipped\s+when = not evaluated \(group keep_drop already matched\)`, out)
	assert.Contains(t, out, `+   "previous_response_id": "resp_1"`)
	assert.Contains(t, out, `+       "call_id": "call_B",`)
	assert.Contains(t, out, "verdict: send")
	// The parts of a when, with their values: why align-prev-to-pending did not fire.
	assert.Regexp(t, `(?m)^\s+request\.previous_response_id != session\.anchor\s+= false$`, out)
	assert.Regexp(t, `(?m)^\s+session\.anchor\s+= "resp_1"$`, out)
	// Parts after a false operand of && were not evaluated.
	assert.Regexp(t, `(?m)^\s+size\(request\.outputs\) == 0\s+= not evaluated$`, out)
}

// TestExplainRuleStates: every rule of the stage and of the sub-stages it can enter is
// listed, including those a stop kept from being evaluated.
func TestExplainRuleStates(t *testing.T) {
	state := filepath.Join(t.TempDir(), "strict.yaml")
	require.NoError(t, os.WriteFile(state, []byte("mode: strict\nturn: 2\nanchor: resp_1\ncached: resp_1\npending: {calls: [call_A, call_B]}\n"), 0o644))
	code, out, errs := run("explain", "--policies", "../../policies",
		"--request", "../../testdata/explain/esc-request.json", "--state", state)
	require.Equal(t, ExitOK, code, errs)
	assert.Regexp(t, `✔\s+\d+ inject-aborted-for-pending\s+\[pre_send\]\s+fired`, out)
	assert.Contains(t, out, "reject applied: invariant_violation: no output for pending call(s) call_B of resp_1")
	assert.Regexp(t, `\d+ keep-outputs-match\s+\[pre_send\]\s+not evaluated\s+when = not evaluated \(after the stop at rule inject-aborted-for-pending\)`, out)
	assert.Regexp(t, `\d+ remove-orphan-outputs\s+\[pairing\]\s+not evaluated`, out)
	assert.Contains(t, out, "verdict: reject")
	rules := regexp.MustCompile(`(?m)^..\s*\d+ ([a-z0-9-]+)\s+\[`).FindAllStringSubmatch(out, -1)
	assert.Len(t, rules, 21, "every pre_send and pairing rule of the default set, once")
}

func TestExplainPostResponse(t *testing.T) {
	code, out, errs := run("explain", "--policies", "../../policies",
		"--request", "testdata/explain/post-response-request.json", "--state", "testdata/explain/post-response-state.yaml")
	require.Equal(t, ExitOK, code, errs)
	assert.Contains(t, out, "stage post_response")
	assert.Regexp(t, `✔\s+\d+ record-pending-calls\s+\[post_response\]\s+fired\s+when = true`, out)
	assert.Regexp(t, `\d+ clear-anchor-after-response\s+\[post_response\]\s+skipped\s+when = not evaluated \(group anchor already matched\)`, out)
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

// TestExplainEnforce: a shadow rule shows what it would change; --enforce shows the other
// reading a shadow rule ships, and refuses names that are no shadow rule.
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
			[]string{"interrupt-discards-calls", "shadow: would fire", "reason interrupt_calls_discarded (shadow: counted, nothing changed)",
				"enforced (--enforce interrupt-discards-calls), it would:", "record_pending applied: pending of resp_2: 0 call(s)",
				"pending of resp_2: call_B (function_call)", "transcript: append"},
			[]string{"shadow, enforced"}},
		{"enforced", "interrupt-discards-calls", ExitOK,
			[]string{"fired (enforced)", "reason interrupt_calls_discarded (shadow, enforced by --enforce)", "pending of resp_2: none"},
			[]string{"call_B (function_call)", "it would:"}},
		{"unknown rule", "interrupt-discard-calls", ExitError, []string{`unknown rule "interrupt-discard-calls" (did you mean interrupt-discards-calls?)`}, nil},
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

// TestExplainStage: an unknown stage is an error with a suggestion; a sub-stage of the set
// can be explained on its own.
func TestExplainStage(t *testing.T) {
	base := []string{"explain", "--policies", "../../policies", "--request", "../../testdata/explain/esc-request.json"}
	code, out, errs := run(append(slices.Clone(base), "--stage", "presend")...)
	assert.Equal(t, ExitError, code)
	assert.Empty(t, out, "no verdict for a stage that does not exist")
	assert.Contains(t, errs, `unknown stage "presend" (did you mean pre_send?) (stages of this set: pre_send, on_upstream_error, post_response, pairing)`)

	state := filepath.Join(t.TempDir(), "state.yaml")
	require.NoError(t, os.WriteFile(state, []byte("stage: bogus\n"), 0o644))
	code, _, errs = run(append(slices.Clone(base), "--state", state)...)
	assert.Equal(t, ExitError, code)
	assert.Contains(t, errs, `unknown stage "bogus"`)

	code, out, errs = run(append(slices.Clone(base), "--stage", "pairing")...)
	require.Equal(t, ExitOK, code, errs)
	assert.Contains(t, out, "stage pairing")
	assert.Regexp(t, `\d+ inject-aborted-inline\s+\[pairing\]`, out)
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
	code, out, _ := run("vars", "-o", "json", "--stage", "on_upstream_error")
	require.Equal(t, ExitOK, code)
	var vs []Variable
	require.NoError(t, json.Unmarshal([]byte(out), &vs))
	i := slices.IndexFunc(vs, func(v Variable) bool { return v.Name == "error.code" })
	require.GreaterOrEqual(t, i, 0)
	assert.Equal(t, Variable{Name: "error.code", Type: "string", Stages: []string{"on_upstream_error"}, Meaning: "upstream error code"}, vs[i])
	code, out, _ = run("vars", "-o", "markdown")
	require.Equal(t, ExitOK, code)
	assert.Equal(t, VariablesMarkdown(), out)
}
