package engine_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
)

// update rewrites the golden files: `go test ./engine/ -run 'TestBrokenPolicies|TestFuzzSeeds' -update`.
var update = flag.Bool("update", false, "rewrite golden files and the FuzzCompile seed corpus")

// brokenDir is the broken corpus, relative to the repository root. The test runs from the root
// so that diagnostics name files the way `policyctl validate testdata/policies/broken/X.yaml`
// prints them. Files whose golden the engine does not meet yet (open bugs) live in
// knownBugsDir, so that other users of the corpus (policyctl's tests) see only goldens the
// engine meets; fixing the bug means moving the file and its golden up.
const (
	brokenDir    = "testdata/policies/broken"
	knownBugsDir = brokenDir + "/known-bugs"
)

// brokenFiles lists the corpus: brokenDir/*.yaml and knownBugsDir/*.yaml.
func brokenFiles(t testing.TB, root string) []string {
	t.Helper()
	var files []string
	for _, dir := range []string{brokenDir, knownBugsDir} {
		fs, err := filepath.Glob(filepath.Join(root, dir, "*.yaml"))
		require.NoError(t, err)
		files = append(files, fs...)
	}
	return files
}

// brokenCase is one file of the broken corpus. at lists, for each diagnostic in order, the text
// its column must land on in the file's line ("" means the end of the line). bug names a known
// engine bug: while the case still fails it is skipped with the bug's text, and once it
// passes the test asks for the mark to be removed.
type brokenCase struct {
	file string
	at   []string
	bug  string
}

var brokenCases = []brokenCase{
	{file: "yaml_syntax.yaml", at: []string{"&& false"}},
	{file: "yaml_unclosed_flow.yaml", at: []string{"[drop_previous_response_id"}},
	{file: "yaml_bad_indent.yaml", at: []string{"then: stop"}},
	{file: "empty.yaml", at: []string{""}},
	{file: "unknown_top_field.yaml", at: []string{"rule:"}},
	{file: "unknown_rule_field.yaml", at: []string{"descripton:"}},
	{file: "unknown_action.yaml", at: []string{"delete_previous_response_id"}},
	{file: "unknown_action_arg.yaml", at: []string{"position: after_call"}},
	{file: "missing_action_arg.yaml", at: []string{"reject:"}},
	{file: "when_not_bool.yaml", at: []string{"request.previous_response_id"}},
	{file: "when_not_bool_block.yaml", at: []string{`request.store_disabled ? "yes"`}},
	{file: "if_guard_error.yaml", at: []string{"turn.number"}},
	{file: "type_error.yaml", at: []string{"+ 1)"}},
	{file: "arg_type_error.yaml", at: []string{"pending.calls"}},
	{file: "syntax_error_cel.yaml", at: []string{""}},
	{file: "misspelled_field.yaml", at: []string{`previous_respons_id == ""`}},
	{file: "error_var_in_pre_send.yaml", at: []string{"error.code"}},
	{file: "quoted_error.yaml", at: []string{"is_respons_id("}},
	{file: "quoted_escape_error.yaml", at: []string{`stor_disabled"`}},
	{file: "single_quoted_error.yaml", at: []string{`mod == "strict"`}},
	{file: "plain_multiline_error.yaml", at: []string{"outptus) > 0"}},
	{file: "block_folded_error.yaml", at: []string{"outptus) > 0"}},
	{file: "block_literal_error.yaml", at: []string{`+ "1" > 2`}},
	{file: "duplicate_id.yaml", at: []string{"id: same"}},
	{file: "runaway_cost.yaml", at: []string{"request.calls.all(a,"}},
	{file: "unknown_stage.yaml", at: []string{"pre_sned"}},
	{file: "action_not_allowed.yaml", at: []string{"retry"}},
	{file: "run_stage_no_rules.yaml", at: []string{"run_stage: paring"}},
	{file: "run_stage_cycle.yaml", at: []string{"run_stage: stage_a"}},
	{file: "missing_when.yaml", at: []string{"id: no-when"}},
	{file: "bad_then.yaml", at: []string{"halt"}},
	{file: "bad_reason.yaml", at: []string{"Prev-Dropped!"}},
	{file: "error_var_in_sub_stage.yaml", at: []string{"error.code"}},
	{file: "response_var_in_pre_send.yaml", at: []string{"response.status"}},
	{file: "unquoted_string_arg.yaml", at: []string{"model_not_allowed"}},
	{file: "unquoted_message_arg.yaml", at: []string{"not allowed here"}},
	{file: "stage_typo.yaml", at: []string{"presend"}},
	{file: "run_stage_typo.yaml", at: []string{"run_stage: pairng", "pairing"}},
	{file: "function_overload.yaml", at: []string{`without(request.calls, "call_1")`}},
	{file: "method_overload.yaml", at: []string{"join(1)"}},
	{file: "compare_types.yaml", at: []string{"== 5"}},
	{file: "bare_list.yaml", at: []string{"- id: inject-aborted"}},
}

func TestBrokenPolicies(t *testing.T) {
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	t.Chdir(root)

	files := brokenFiles(t, "")
	main, err := filepath.Glob(filepath.Join(brokenDir, "*.yaml"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(main), 14, "the broken corpus needs at least 14 files")
	var listed []string
	for _, c := range brokenCases {
		listed = append(listed, filepath.Join(brokenDir, c.file))
		inKnownBugs := strings.HasPrefix(c.file, "known-bugs/")
		assert.Equal(t, c.bug != "", inKnownBugs, "%s: files with a bug mark, and only those, belong in %s", c.file, knownBugsDir)
	}
	for _, f := range files {
		assert.Contains(t, listed, f, "%s has no entry in brokenCases", f)
	}

	for _, c := range brokenCases {
		t.Run(strings.TrimSuffix(c.file, ".yaml"), func(t *testing.T) {
			path := filepath.Join(brokenDir, c.file)
			golden := strings.TrimSuffix(path, ".yaml") + ".golden"
			srcs, err := engine.ReadSources(path)
			require.NoError(t, err)
			snap, diags := engine.Compile(srcs)
			assert.Nil(t, snap, "a broken policy must not compile")
			require.True(t, diags.HasErrors(), "a broken policy must report an error")

			var got strings.Builder
			for _, d := range diags {
				got.WriteString(d.String() + "\n")
			}
			if *update && c.bug == "" {
				require.NoError(t, os.WriteFile(golden, []byte(got.String()), 0o644))
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err, "missing golden file (run with -update)")

			problems := checkDiagnostics(path, diags, c.at)
			if got.String() != string(want) {
				problems = append(problems, fmt.Sprintf("diagnostics differ from %s:\n--- want\n%s--- got\n%s", golden, want, got.String()))
			}
			switch {
			case len(problems) > 0 && c.bug != "":
				knownBug(t, true, c.bug+"\n"+strings.Join(problems, "\n"))
			case len(problems) > 0:
				t.Error(strings.Join(problems, "\n"))
			case c.bug != "":
				t.Errorf("known bug %q no longer reproduces: remove the bug mark of %s", c.bug, c.file)
			}
		})
	}
}

// checkDiagnostics checks that every diagnostic names the file, has a line and a column, and
// that its column lands on the expected text of that line. Columns count characters (runes),
// as YAML and CEL both do.
func checkDiagnostics(path string, diags engine.Diagnostics, at []string) []string {
	data, err := os.ReadFile(path)
	if err != nil {
		return []string{err.Error()}
	}
	lines := strings.Split(string(data), "\n")
	var problems []string
	if len(diags) != len(at) {
		problems = append(problems, fmt.Sprintf("want %d diagnostic(s), got %d:\n%s", len(at), len(diags), diags.Error()))
	}
	for i, d := range diags {
		if d.Pos.File != path {
			problems = append(problems, fmt.Sprintf("%s: file is %q, want %q", d, d.Pos.File, path))
		}
		if d.Pos.Line < 1 || d.Pos.Col < 1 {
			problems = append(problems, fmt.Sprintf("%s: needs a line and a column", d))
			continue
		}
		if d.Pos.Line > len(lines) {
			problems = append(problems, fmt.Sprintf("%s: line %d is past the end of the file", d, d.Pos.Line))
			continue
		}
		if i >= len(at) {
			continue
		}
		line := []rune(lines[d.Pos.Line-1])
		if d.Pos.Col-1 > len(line) {
			problems = append(problems, fmt.Sprintf("%s: column %d is past the end of line %q", d, d.Pos.Col, string(line)))
			continue
		}
		rest := string(line[d.Pos.Col-1:])
		if at[i] == "" && rest != "" || !strings.HasPrefix(rest, at[i]) {
			problems = append(problems, fmt.Sprintf("%s: column lands on %q, want %q", d, rest, at[i]))
		}
	}
	return problems
}

// TestBrokenGoldensAreExact guards the golden format: one `file:line:col: message` per line.
func TestBrokenGoldensAreExact(t *testing.T) {
	var goldens []string
	for _, dir := range []string{brokenDir, knownBugsDir} {
		gs, err := filepath.Glob(filepath.Join("..", dir, "*.golden"))
		require.NoError(t, err)
		goldens = append(goldens, gs...)
	}
	require.GreaterOrEqual(t, len(goldens), 14)
	for _, g := range goldens {
		data, err := os.ReadFile(g)
		require.NoError(t, err)
		yaml := strings.TrimSuffix(g, ".golden") + ".yaml"
		require.FileExists(t, yaml, "golden without a policy file")
		lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		require.NotEmpty(t, lines)
		for _, l := range lines {
			prefix := strings.TrimPrefix(filepath.ToSlash(yaml), "../") + ":"
			require.True(t, strings.HasPrefix(l, prefix), "%s: %q does not start with %q", g, l, prefix)
			var line, col int
			var msg string
			n, _ := fmt.Sscanf(strings.TrimPrefix(l, prefix), "%d:%d: %s", &line, &col, &msg)
			assert.Equal(t, 3, n, "%s: %q is not file:line:col: message", g, l)
			assert.Positive(t, line, l)
			assert.Positive(t, col, l)
		}
	}
}
