package settings

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"chainmend/engine"
	"chainmend/gateway"
)

// exampleFile is the documented configuration at the repository root.
const exampleFile = "../../gateway.example.yaml"

// flagNames returns the name of every flag, read from the usage text the way an operator
// reads `gateway --help`, so the check cannot miss a flag that Parse defines.
func flagNames(t *testing.T) []string {
	t.Helper()
	var usage bytes.Buffer
	_, err := Parse([]string{"-h"}, func(string) string { return "" }, &usage)
	require.True(t, errors.Is(err, flag.ErrHelp), "%v", err)
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(usage.String(), -1) {
		names = append(names, m[1])
	}
	require.NotEmpty(t, names)
	return names
}

// TestExampleConfig: gateway.example.yaml has a documented key for every flag (and nothing
// else), every key parses, and parsing the file yields exactly the defaults.
func TestExampleConfig(t *testing.T) {
	data, err := os.ReadFile(exampleFile)
	require.NoError(t, err)
	var doc yaml.Node
	require.NoError(t, yaml.Unmarshal(data, &doc))
	require.Len(t, doc.Content, 1)
	root := doc.Content[0]
	require.Equal(t, yaml.MappingNode, root.Kind)

	keys := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := root.Content[i]
		assert.False(t, keys[k.Value], "key %s listed twice", k.Value)
		keys[k.Value] = true
		assert.Equal(t, yaml.ScalarNode, root.Content[i+1].Kind, "%s: a scalar", k.Value)
		// A key is documented by the comment above it, or shares the one of the key
		// group it follows directly (pending_ttl, anchor_ttl, replay_ttl).
		if k.HeadComment == "" {
			require.Positive(t, i, "%s: the first key needs a comment", k.Value)
			prev := root.Content[i-2]
			assert.Equal(t, prev.Line+1, k.Line, "%s (line %d) has no comment and does not follow a documented key", k.Value, k.Line)
		}
	}

	var want []string
	for _, name := range flagNames(t) {
		if name == "config" {
			continue // the file itself
		}
		key := strings.ReplaceAll(name, "-", "_")
		want = append(want, key)
		assert.True(t, keys[key], "flag --%s has no key %s in %s", name, key, exampleFile)
	}
	var extra []string
	for k := range keys {
		if !contains(want, k) {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	assert.Empty(t, extra, "keys that are no flag")

	env := func(string) string { return "" }
	defaults, err := Parse(nil, env, &bytes.Buffer{})
	require.NoError(t, err)
	got, err := Parse([]string{"--config", exampleFile}, env, &bytes.Buffer{})
	require.NoError(t, err, "every key parses")
	got.ConfigFile = ""
	if gateway.DefaultMode != engine.ModeRepair {
		// A -tags debug build is strict by default; the file documents the release build.
		assert.Equal(t, engine.ModeRepair, got.Mode)
		got.Mode = defaults.Mode
	}
	assert.Equal(t, defaults, got, "the file lists the defaults")
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
