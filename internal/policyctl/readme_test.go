package policyctl

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fileRe finds the file a README step writes: the last `path.yaml` or `path.json` named in
// the prose before its code block.
var fileRe = regexp.MustCompile("`([A-Za-z0-9_./-]+\\.(?:yaml|json))`")

// shellCommands returns the policyctl command lines of a shell block, continuations joined and
// comments dropped.
func shellCommands(sh string) [][]string {
	var out [][]string
	joined := strings.ReplaceAll(sh, "\\\n", " ")
	for _, line := range strings.Split(joined, "\n") {
		if i := strings.Index(line, " #"); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) > 0 && fields[0] == "bin/policyctl" {
			out = append(out, fields[1:])
		}
	}
	return out
}

// TestReadmePolicySection follows the README's policy section as a newcomer would: it
// writes every file the section shows under the name the text gives it, and runs every
// policyctl command it shows, in order, in a directory that also holds the repository's
// policies and fixtures. Every command must succeed. Every YAML example of the README must
// be a valid policy or a passing fixture (or something else than a policy: the gateway's
// configuration file).
func TestReadmePolicySection(t *testing.T) {
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	data, err := os.ReadFile(filepath.Join(root, "README.md"))
	require.NoError(t, err)
	readme := string(data)
	checkExamples(t, "README.md", readme, true)

	start := strings.Index(readme, "\n## Policies\n")
	require.GreaterOrEqual(t, start, 0, "the README has no policy section")
	section := readme[start+1:]
	if end := strings.Index(section[1:], "\n## "); end >= 0 {
		section = section[:end+1]
	}

	dir := t.TempDir()
	for _, d := range []string{"policies", "policytests", "testdata", "internal"} {
		require.NoError(t, os.Symlink(filepath.Join(root, d), filepath.Join(dir, d)))
	}
	t.Chdir(dir)

	var wrote, ran []string
	outputs := map[string]string{}
	for _, b := range fencedBlocks(section) {
		switch b.lang {
		case "yaml", "json":
			names := fileRe.FindAllStringSubmatch(b.before, -1)
			require.NotEmpty(t, names, "README.md:%d: a %s example without a file name in the text before it", b.line, b.lang)
			name := names[len(names)-1][1]
			require.NoError(t, os.MkdirAll(filepath.Dir(name), 0o755))
			require.NoError(t, os.WriteFile(name, []byte(b.text), 0o644))
			wrote = append(wrote, name)
		case "sh":
			for _, args := range shellCommands(b.text) {
				code, out, errs := run(args...)
				line := "policyctl " + strings.Join(args, " ")
				assert.Equal(t, ExitOK, code, "README.md:%d: %s\n%s%s", b.line, line, out, errs)
				outputs[args[0]] += out
				ran = append(ran, line)
			}
		}
	}
	assert.Equal(t, []string{"my-policies/50-models.yaml", "my-tests/models.yaml", "request.json"}, wrote, "the files the walkthrough writes")
	require.NotEmpty(t, ran)
	assert.Contains(t, ran, "policyctl validate my-policies/")
	assert.Contains(t, outputs["validate"], "ok: 1 rules in 1 policies")
	assert.Contains(t, outputs["test"], "2 passed, 0 failed")
	assert.Regexp(t, `reject-unknown-model\s+\[pre_send\]\s+fired\s+when = true`, outputs["explain"])
	assert.Contains(t, outputs["explain"], "verdict: reject")
}
