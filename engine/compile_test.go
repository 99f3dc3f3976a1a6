package engine_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
)

// TestLint: rules that can never fire and reasons that are not declared are lint findings
// (SevLint), not errors: the policy set still compiles.
func TestLint(t *testing.T) {
	src := `apiVersion: chainmend/v1
policy: lint
reasons:
  - {name: declared, description: "used"}
  - {name: unused, description: "never used"}
rules:
  - id: never
    stage: pre_send
    reason: declared
    when: "false"
  - id: undeclared
    stage: pre_send
    reason: not_in_list
    when: request.store_disabled
  - id: enter
    stage: pre_send
    reason: declared
    when: request.model == "x"
    actions:
      - run_stage: sub
  - id: always-stop
    stage: pre_send
    reason: declared
    when: "true"
    then: stop
  - id: unreachable
    stage: pre_send
    reason: declared
    when: request.store_disabled
  - id: err-always
    stage: on_upstream_error
    reason: declared
    when: true
    actions:
      - forward
  - id: err-after
    stage: on_upstream_error
    reason: declared
    when: "true"
  - id: g-always
    stage: sub
    group: g
    reason: declared
    when: "true"
  - id: g-never
    stage: sub
    group: g
    reason: declared
    when: request.store_disabled
  - id: const-false-expr
    stage: sub
    reason: declared
    when: 1 > 2 && "a" == "b"
  - id: shadow-stop
    stage: sub
    reason: declared
    shadow: true
    when: "true"
    then: stop
  - id: guarded-reject
    stage: sub
    reason: declared
    when: "true"
    actions:
      - if: turn.mode == "strict"
        reject: {code: '"c"', message: '"m"'}
  - id: reachable
    stage: sub
    reason: declared
    when: "true"
`
	snap, diags := engine.Compile([]engine.Source{{Name: "lint.yaml", Data: []byte(src)}})
	require.False(t, diags.HasErrors(), diags.Error())
	require.NotNil(t, snap, "lint findings do not refuse a policy set")
	for _, d := range diags {
		assert.Equal(t, engine.SevLint, d.Severity, d.String())
	}
	want := []string{
		`lint.yaml:5:5: lint: reason "unused" is declared but no rule uses it`,
		`lint.yaml:10:11: lint: rule "never" can never fire: its when is always false`,
		`lint.yaml:13:13: lint: reason "not_in_list" is not declared in any policy's reasons list`,
		`lint.yaml:26:5: lint: rule "unreachable" can never fire: rule "always-stop" before it always stops the stage`,
		`lint.yaml:36:5: lint: rule "err-after" can never fire: rule "err-always" before it always stops the stage`,
		`lint.yaml:45:5: lint: rule "g-never" can never fire: rule "g-always" before it always matches group "g"`,
		`lint.yaml:53:11: lint: rule "const-false-expr" can never fire: its when is always false`,
	}
	var got []string
	for _, d := range diags {
		got = append(got, d.String())
	}
	assert.Equal(t, want, got, "a shadow stop and a guarded reject do not make later rules unreachable")
	assert.Equal(t, diags, diags.Lints())
	assert.Empty(t, diags.Errors())
}

// TestCompileReportsEveryError: all errors of all files, sorted by file and position; no
// snapshot.
func TestCompileReportsEveryError(t *testing.T) {
	a := `policy: a
rules:
  - id: one
    stage: pre_send
    when: request.outptus == []
  - id: two
    stage: pre_send
    when: "true"
    actions:
      - teleport
  - id: three
    stage: pre_send
    when: 'turn.number + "x" == 1'
    actions:
      - set_previous_response_id: '1'
`
	b := `policy: b
rules:
  - id: four
    stage: pre_snd
    when: "true"
`
	snap, diags := engine.Compile([]engine.Source{{Name: "b.yaml", Data: []byte(b)}, {Name: "a.yaml", Data: []byte(a)}})
	assert.Nil(t, snap)
	// Parse errors (the unknown action) stop the set before type checking; fix-and-retry
	// shows the CEL errors next.
	require.Equal(t, []string{`a.yaml:10:9: unknown action "teleport" (known: append_transcript, classify, clear_anchor, clear_transcript, dedupe_items, delete_pending, drop_previous_response_id, forward, insert_outputs, record_pending, reject, remove_outputs, replay, reset_transcript, retry, run_stage, set_anchor, set_previous_response_id, set_upstream_cached)`},
		lines(diags))

	a = strings.Replace(a, "teleport", "clear_anchor", 1)
	snap, diags = engine.Compile([]engine.Source{{Name: "b.yaml", Data: []byte(b)}, {Name: "a.yaml", Data: []byte(a)}})
	assert.Nil(t, snap)
	assert.Equal(t, []string{
		`a.yaml:5:19: when: undeclared reference to 'request.outptus' (did you mean 'request.outputs'?)`,
		`a.yaml:13:24: when: cannot add int and string with + (convert the other side with string(…))`,
		`a.yaml:15:35: set_previous_response_id.value must be string, but the expression is int`,
		`b.yaml:4:12: unknown stage "pre_snd": did you mean pre_send? (entry stages: pre_send, on_upstream_error, post_response; other stages must be entered with run_stage)`,
	}, lines(diags))

	t.Run("a duplicate rule is still type-checked", func(t *testing.T) {
		b := "policy: b\nrules:\n  - {id: one, stage: pre_send, when: 'true'}\n"
		_, diags := engine.Compile([]engine.Source{{Name: "b.yaml", Data: []byte(b)}, {Name: "a.yaml", Data: []byte(a)}})
		got := lines(diags)
		knownBug(t, len(got) == 3, "compile.go skips every check of a rule whose id is a duplicate, so its CEL errors show up only after the rename")
		assert.Equal(t, []string{
			`a.yaml:3:5: duplicate rule id "one" (first defined at b.yaml:3:5)`,
			`a.yaml:5:19: when: undeclared reference to 'request.outptus' (did you mean 'request.outputs'?)`,
			`a.yaml:13:24: when: cannot add int and string with + (convert the other side with string(…))`,
			`a.yaml:15:35: set_previous_response_id.value must be string, but the expression is int`,
		}, got)
	})
}

func lines(ds engine.Diagnostics) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.String())
	}
	return out
}

// TestCompileRefuses: problems that are errors, not lint.
func TestCompileRefuses(t *testing.T) {
	tests := []struct {
		name  string
		rules string
		want  string
		bug   string
	}{
		{
			name: "run_stage into an entry stage",
			rules: `
  - id: entry
    stage: pre_send
    when: "true"
    actions:
      - run_stage: on_upstream_error
`,
			want: `test.yaml:9:9: run_stage cannot enter the entry stage on_upstream_error`,
		},
		{
			name: "pre_send reads error fields",
			rules: `
  - id: early
    stage: pre_send
    when: error.message.contains("x")
`,
			want: `test.yaml:7:11: when: undeclared reference to 'error' (error.* exists only in stage on_upstream_error; this rule runs in pre_send)`,
		},
		{
			name: "retry in a sub-stage entered only from pre_send",
			rules: `
  - id: enter
    stage: pre_send
    when: "true"
    actions:
      - run_stage: sub
  - id: sub-retry
    stage: sub
    when: "true"
    actions:
      - retry
`,
			want: `test.yaml:14:9: action retry is not allowed in stage sub (entered from pre_send; only in on_upstream_error)`,
			bug:  "compile.go checks an action's allowed stages only for rules of entry stages: retry/forward/classify (and reject from on_upstream_error) slip in through a sub-stage",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap, diags := engine.Compile([]engine.Source{{Name: "test.yaml", Data: []byte(policyHeader + tc.rules)}})
			if tc.bug != "" {
				knownBug(t, snap != nil, tc.bug)
			}
			assert.Nil(t, snap)
			assert.Equal(t, []string{tc.want}, lines(diags.Errors()))
		})
	}
}

// TestCheapExpressionsCompile: expressions with a small fixed cost pass the static cost check.
func TestCheapExpressionsCompile(t *testing.T) {
	tests := []struct {
		expr string
		bug  string
	}{
		{expr: `request.model.startsWith("gpt-") && turn.transport == "websocket"`},
		{expr: `size(without(pending.calls, request.outputs)) > 0`},
		{expr: `request.roles.exists(r, r in ["developer", "system"])`},
		{expr: `cel.bind(x, intersect(request.calls, pending.calls), size(x) == 1)`},
		{expr: `string(request.store) == "true"`},
		{expr: `"turn " + string(turn.number) == "turn 2"`,
			bug: "env.go estimator: string(int) has no size estimate, so concatenating it makes the static cost 2^64-1 and the cheapest expression is refused"},
	}
	for _, tc := range tests {
		t.Run(tc.expr, func(t *testing.T) {
			snap, diags := engine.Compile([]engine.Source{{Name: "test.yaml", Data: []byte(policyHeader +
				"  - id: cheap\n    stage: pre_send\n    when: '" + strings.ReplaceAll(tc.expr, "'", "''") + "'\n")}})
			if tc.bug != "" {
				knownBug(t, snap == nil, tc.bug)
			}
			require.False(t, diags.HasErrors(), diags.Error())
			require.NotNil(t, snap)
		})
	}
}

// TestParsePolicy: the rule fields and their defaults.
func TestParsePolicy(t *testing.T) {
	src := `apiVersion: chainmend/v1
policy: parsed
description: d
limits: {expression_cost: 5000, turn_cost: 20_000}
reasons:
  - {name: r_one, description: one}
rules:
  - id: first.rule-1
    description: the first
    stage: pre_send
    when: "true"
  - {id: second, stage: pre_send, group: g, shadow: true, reason: r_one, then: stop, when: 'size(request.calls) > 0',
     actions: [drop_previous_response_id, {remove_outputs: request.orphan_outputs}, {if: 'true', run_stage: sub}]}
  - id: third
    stage: sub
    when: |
      true
`
	p, diags := engine.ParsePolicy(engine.Source{Name: "p.yaml", Data: []byte(src)})
	require.Empty(t, diags)
	assert.Equal(t, "parsed", p.Name)
	assert.Equal(t, engine.Limits{ExpressionCost: 5000, TurnCost: 20000}, p.Limits)
	require.Len(t, p.Reasons, 1)
	assert.Equal(t, "r_one", p.Reasons[0].Name)
	require.Len(t, p.Rules, 3)

	r := p.Rules[0]
	assert.Equal(t, "first_rule_1", r.Reason, "the reason defaults to the id, as a label")
	assert.Equal(t, engine.ThenContinue, r.Then)
	assert.False(t, r.Shadow)
	assert.Equal(t, engine.Pos{File: "p.yaml", Line: 8, Col: 5}, r.Pos)
	assert.Equal(t, engine.Pos{File: "p.yaml", Line: 11, Col: 11}, r.When.Pos)

	r = p.Rules[1]
	assert.Equal(t, "g", r.Group)
	assert.True(t, r.Shadow)
	assert.Equal(t, engine.ThenStop, r.Then)
	assert.Equal(t, "r_one", r.Reason)
	assert.Equal(t, engine.Pos{File: "p.yaml", Line: 12, Col: 92}, r.When.Pos)
	require.Len(t, r.Actions, 3)
	assert.Equal(t, engine.ActDropPrev, r.Actions[0].Kind)
	assert.Equal(t, engine.ActRemoveOutputs, r.Actions[1].Kind)
	assert.Equal(t, "request.orphan_outputs", r.Actions[1].Args["calls"].Text)
	assert.Equal(t, engine.ActRunStage, r.Actions[2].Kind)
	assert.Equal(t, "sub", r.Actions[2].Word)
	require.NotNil(t, r.Actions[2].If)

	r = p.Rules[2]
	assert.Equal(t, engine.Pos{File: "p.yaml", Line: 17, Col: 7}, r.When.Pos, "a block scalar starts on the next line")
}

// TestReadSources: a directory gives its *.yaml and *.yml files in name order, hidden entries
// skipped (a Kubernetes ConfigMap mount has ..data and ..2024_… entries).
func TestReadSources(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"20-b.yml":          "policy: b\nrules: []\n",
		"10-a.yaml":         "policy: a\nrules: []\n",
		".hidden.yaml":      "not: [valid",
		"README.md":         "# not a policy",
		"..data/x.yaml":     "not: [valid",
		"sub/nested.yaml":   "not: [valid",
		"30-c.yaml.bak":     "not: [valid",
		"..2024_01_01/.yml": "not: [valid",
	} {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
	}
	srcs, err := engine.ReadSources(dir)
	require.NoError(t, err)
	var names []string
	for _, s := range srcs {
		names = append(names, filepath.Base(s.Name))
	}
	assert.Equal(t, []string{"10-a.yaml", "20-b.yml"}, names)
	snap, diags := engine.Compile(srcs)
	require.False(t, diags.HasErrors(), diags.Error())
	assert.Len(t, snap.Policies, 2)

	_, err = engine.ReadSources(filepath.Join(dir, "sub", "missing.yaml"))
	assert.Error(t, err)
	_, err = engine.ReadSources(filepath.Join(dir, "..data"))
	assert.NoError(t, err, "a directory named explicitly is read")
	empty := t.TempDir()
	_, err = engine.ReadSources(empty)
	assert.ErrorContains(t, err, "no *.yaml files")

	big := filepath.Join(t.TempDir(), "big.yaml")
	require.NoError(t, os.WriteFile(big, []byte("policy: big\n"+strings.Repeat("# padding\n", 120_000)), 0o644))
	_, err = engine.ReadSources(big)
	assert.ErrorContains(t, err, "over the limit")
}

// TestSnapshotHash: the hash follows the content, not the directory.
func TestSnapshotHash(t *testing.T) {
	src := func(body string) []engine.Source {
		return []engine.Source{{Name: "x/p.yaml", Data: []byte(policyHeader + body)}}
	}
	rule := "  - {id: a, stage: pre_send, when: 'true'}\n"
	s1, _ := engine.Compile(src(rule))
	s2, _ := engine.Compile([]engine.Source{{Name: "other/dir/p.yaml", Data: []byte(policyHeader + rule)}})
	s3, _ := engine.Compile(src(strings.Replace(rule, "'true'", "'false'", 1)))
	require.NotNil(t, s1)
	require.NotNil(t, s2)
	require.NotNil(t, s3)
	assert.Equal(t, s1.Hash, s2.Hash)
	assert.NotEqual(t, s1.Hash, s3.Hash)
}
