package policyctl

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"chainmend/engine"
	"chainmend/internal/policytest"
)

// update rewrites the generated sections of docs/policies.md:
// `go test ./internal/policyctl/ -run TestPolicyDocs -update`.
var update = flag.Bool("update", false, "rewrite the generated tables of docs/policies.md")

const policyDoc = "../../docs/policies.md"

// actionsMarkdown is the action table of docs/policies.md, generated from the engine's
// registry so that a new action cannot go undocumented.
func actionsMarkdown() string {
	var b strings.Builder
	b.WriteString("| action | arguments | stages | what it does |\n|---|---|---|---|\n")
	for _, a := range engine.Actions() {
		var args []string
		for _, arg := range a.Args {
			s := "`" + arg.Name + "` " + arg.Type
			switch {
			case len(arg.Values) > 0:
				s += " (" + strings.Join(arg.Values, ", ") + ")"
			}
			switch {
			case arg.Required:
				s += ", required"
			case arg.Default != "":
				s += ", default `" + arg.Default + "`"
			}
			args = append(args, s)
		}
		if len(args) == 0 {
			args = []string{"none"}
		}
		if a.Short != "" {
			args = append(args, "short form `- "+a.Name+": EXPR` sets `"+a.Short+"`")
		}
		stages := "all"
		if len(a.Stages) > 0 {
			stages = strings.Join(a.Stages, ", ")
		}
		if a.Name == string(engine.ActRunStage) {
			args = append(args, "written `- run_stage: NAME`")
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", a.Name, strings.Join(args, "; "), stages, a.Doc)
	}
	return b.String()
}

// generated replaces the body of a generated section of md, between its BEGIN and END
// markers.
func generated(t *testing.T, md, name, body string) string {
	t.Helper()
	begin := regexp.MustCompile(`(?m)^<!-- BEGIN GENERATED ` + name + `\b.*-->\n`)
	end := "<!-- END GENERATED " + name + " -->"
	loc := begin.FindStringIndex(md)
	require.NotNil(t, loc, "docs/policies.md lost its %s markers", name)
	stop := strings.Index(md[loc[1]:], end)
	require.GreaterOrEqual(t, stop, 0, "docs/policies.md lost its %s end marker", name)
	return md[:loc[1]] + body + md[loc[1]+stop:]
}

// TestPolicyDocs keeps docs/policies.md true: its tables of variables and actions are
// the engine's own (regenerate them with -update), every variable, action and helper
// function the engine registers is named in it, and every YAML example in it compiles or
// passes.
func TestPolicyDocs(t *testing.T) {
	data, err := os.ReadFile(policyDoc)
	require.NoError(t, err)
	md := string(data)
	want := generated(t, md, "variables", VariablesMarkdown())
	want = generated(t, want, "actions", actionsMarkdown())
	if *update && want != md {
		require.NoError(t, os.WriteFile(policyDoc, []byte(want), 0o644))
		md = want
	}
	assert.Equal(t, want, md, "docs/policies.md's generated tables are stale: run go test ./internal/policyctl/ -run TestPolicyDocs -update")

	for _, v := range engine.Variables() {
		assert.Contains(t, md, "`"+v[0]+"`", "variable %s is not documented", v[0])
	}
	for _, a := range engine.Actions() {
		assert.Contains(t, md, "`"+a.Name+"`", "action %s is not documented", a.Name)
	}
	for _, h := range engine.Helpers() {
		assert.Contains(t, md, "`"+h+"(", "helper function %s is not documented", h)
	}
	for _, s := range engine.EntryStages() {
		assert.Contains(t, md, "**`"+s+"`**", "stage %s is not documented", s)
	}
	checkExamples(t, policyDoc, md, false)
}

// block is one fenced code block of a Markdown file.
type block struct {
	lang, text string
	// line is the line of the opening fence; before is the prose since the previous block.
	line   int
	before string
}

var fenceRe = regexp.MustCompile("(?m)^```([a-z]*)[^\n]*\n")

func fencedBlocks(md string) []block {
	var out []block
	rest, offset, last := md, 0, 0
	for {
		loc := fenceRe.FindStringSubmatchIndex(rest)
		if loc == nil {
			return out
		}
		lang := rest[loc[2]:loc[3]]
		body := rest[loc[1]:]
		end := strings.Index(body, "\n```")
		if end < 0 {
			return out
		}
		start := offset + loc[0]
		out = append(out, block{lang: lang, text: body[:end+1], line: strings.Count(md[:start], "\n") + 1, before: md[last:start]})
		consumed := loc[1] + end + len("\n```")
		offset += consumed
		rest = rest[consumed:]
		last = offset
	}
}

// exampleKind tells a policy file, a fixture file and an explain state apart. Anything
// else is "other" (a gateway configuration file); a list is "list", the mistake the README
// once made.
func exampleKind(t *testing.T, where, text string) string {
	var doc yaml.Node
	require.NoError(t, yaml.Unmarshal([]byte(text), &doc), "%s: not YAML", where)
	require.NotEmpty(t, doc.Content, "%s: empty", where)
	root := doc.Content[0]
	if root.Kind == yaml.SequenceNode {
		return "list"
	}
	keys := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		keys[root.Content[i].Value] = true
	}
	switch {
	case keys["rules"]:
		return "policy"
	case keys["cases"]:
		return "fixture"
	}
	var es policytest.ExplainState
	dec := yaml.NewDecoder(bytes.NewReader([]byte(text)))
	dec.KnownFields(true)
	if dec.Decode(&es) == nil {
		return "state"
	}
	return "other"
}

// checkExamples validates every YAML example of a Markdown file: policies compile without
// errors or lint findings, fixtures pass against the last policy shown before them, explain
// states load. Unless allowOther, every YAML block must be one of these.
func checkExamples(t *testing.T, file, md string, allowOther bool) {
	t.Helper()
	dir := t.TempDir()
	lastPolicy := ""
	n := 0
	for _, b := range fencedBlocks(md) {
		if b.lang != "yaml" {
			continue
		}
		n++
		where := fmt.Sprintf("%s:%d", file, b.line)
		path := filepath.Join(dir, fmt.Sprintf("example-%d.yaml", b.line))
		require.NoError(t, os.WriteFile(path, []byte(b.text), 0o644))
		switch kind := exampleKind(t, where, b.text); kind {
		case "policy":
			code, out, errs := run("validate", path)
			assert.Equal(t, ExitOK, code, "%s: the example policy does not validate:\n%s%s", where, out, errs)
			lastPolicy = path
		case "fixture":
			if !assert.NotEmpty(t, lastPolicy, "%s: a fixture example needs a policy example before it", where) {
				continue
			}
			code, out, errs := run("test", "--policies", lastPolicy, path)
			assert.Equal(t, ExitOK, code, "%s: the example fixture does not pass against %s:\n%s%s", where, lastPolicy, out, errs)
		case "state":
			_, _, err := policytest.BuildExplainTurn([]byte(`{"type":"response.create","input":[]}`), []byte(b.text))
			assert.NoError(t, err, "%s: the example state does not load", where)
		case "list":
			t.Errorf("%s: a YAML example is a bare list; a policy file is a mapping with apiVersion, policy and rules", where)
		default:
			if !allowOther {
				t.Errorf("%s: a YAML example is neither a policy, a fixture nor an explain state", where)
			}
		}
	}
	assert.Positive(t, n, "%s has no YAML example", file)
}
