package policytests_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"chainmend/engine"
	"chainmend/internal/policytest"
)

// mutant is the default policy set with one rule deleted.
type mutant struct {
	file, rule string
	// actions is false for a rule that only labels a decision (no actions): its effect is
	// its reason and the group it claims.
	actions bool
	srcs    []engine.Source
}

// mutants deletes each rule of srcs in turn, editing the YAML itself.
func mutants(t *testing.T, srcs []engine.Source) []mutant {
	t.Helper()
	var out []mutant
	for i, src := range srcs {
		var doc yaml.Node
		require.NoError(t, yaml.Unmarshal(src.Data, &doc), src.Name)
		rules := mappingValue(doc.Content[0], "rules")
		require.NotNil(t, rules, "%s has no rules", src.Name)
		for j, rn := range rules.Content {
			id := mappingValue(rn, "id")
			require.NotNil(t, id, "%s: rule %d has no id", src.Name, j)
			kept := slices.Delete(slices.Clone(rules.Content), j, j+1)
			orig := rules.Content
			rules.Content = kept
			data, err := yaml.Marshal(&doc)
			rules.Content = orig
			require.NoError(t, err)
			m := mutant{file: filepath.Base(src.Name), rule: id.Value, actions: mappingValue(rn, "actions") != nil, srcs: slices.Clone(srcs)}
			m.srcs[i] = engine.Source{Name: src.Name, Data: data}
			out = append(out, m)
		}
	}
	return out
}

func mappingValue(n *yaml.Node, key string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// firstFailure names the first failing case of a report, with its first difference.
func firstFailure(rep *policytest.Report) string {
	for _, r := range rep.Results {
		if !r.Passed {
			return r.Name() + ": " + strings.SplitN(r.Failures[0], "\n", 2)[0]
		}
	}
	return ""
}

// TestEveryRuleMatters is the mutation test of issue 12: it deletes each rule of the default
// policies in turn and requires some fixture to fail for every one, so that no behaviour of
// the default set is left unpinned (and none is decided in Go where a deleted rule would
// not show). Fixtures are judged by outcome (verdict, request, rejection, class, effects,
// reasons), not by the rule ids they name, since a deleted rule trivially does not fire.
// The reasons count: they are the metric labels every decision carries (SPEC R3), and some
// rules exist only to label a decision whose actions a later rule would repeat (row 10's
// first-match reasons, abort_no_replay before upstream_error_forwarded).
func TestEveryRuleMatters(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the policy set once per rule")
	}
	srcs, err := engine.ReadSources("../policies")
	require.NoError(t, err)
	files, err := policytest.LoadFiles(".")
	require.NoError(t, err)

	ms := mutants(t, srcs)
	snap, diags := engine.Compile(srcs)
	require.NotNil(t, snap, diags.Error())
	require.Len(t, ms, len(snap.Rules()), "one mutant per rule")

	var survivors []string
	for _, m := range ms {
		mutated, diags := engine.Compile(m.srcs)
		if mutated == nil {
			t.Logf("%s/%s: the set without it does not compile:\n%s", m.file, m.rule, diags.Error())
			continue
		}
		rep, err := policytest.RunWith(mutated, files, policytest.Options{OutcomeOnly: true, IgnoreReasons: true})
		require.NoError(t, err, m.rule)
		if rep.Failed > 0 {
			t.Logf("%-36s caught by %s", m.rule, firstFailure(rep))
			continue
		}
		rep, err = policytest.RunWith(mutated, files, policytest.Options{OutcomeOnly: true})
		require.NoError(t, err, m.rule)
		switch {
		case rep.Failed == 0:
			survivors = append(survivors, fmt.Sprintf("%s/%s: every fixture still passes without it", m.file, m.rule))
		case m.actions:
			t.Logf("%-36s caught by its reason (a later rule repeats its actions): %s", m.rule, firstFailure(rep))
		default:
			t.Logf("%-36s caught by its reason: %s", m.rule, firstFailure(rep))
		}
	}
	if len(survivors) > 0 {
		t.Errorf("%d rule(s) survive their deletion; add fixtures that pin them:\n\t%s", len(survivors), strings.Join(survivors, "\n\t"))
	}
}
