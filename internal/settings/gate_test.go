package settings

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
)

// compileDefaults compiles the default policies, with the normalizer's injected text
// replaced by text when it is not "aborted" (a set that compiles and that the fixtures,
// which pin "aborted", refuse).
func compileDefaults(t *testing.T, text string) *engine.Snapshot {
	t.Helper()
	srcs, err := engine.ReadSources("../../policies")
	require.NoError(t, err)
	for i := range srcs {
		if filepath.Base(srcs[i].Name) == "10-normalizer.yaml" {
			srcs[i].Data = bytes.ReplaceAll(srcs[i].Data, []byte(`output: '"aborted"'`), []byte(`output: '"`+text+`"'`))
		}
	}
	snap, diags := engine.Compile(srcs)
	require.NotNil(t, snap, "%v", diags)
	return snap
}

// TestFixtureGate: the gate passes the default set, and its refusals say which fixture
// failed and what differed, in one line.
func TestFixtureGate(t *testing.T) {
	empty := t.TempDir()
	oneFile := filepath.Join(t.TempDir(), "esc.yaml")
	data, err := os.ReadFile("../../policytests/esc.yaml")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(oneFile, data, 0o644))
	for _, tc := range []struct {
		name string
		dir  string
		text string
		// want are patterns the error must match; none means the set passes.
		want []string
	}{
		{name: "default set passes", dir: "../../policytests", text: "aborted"},
		{name: "one fixture file", dir: oneFile, text: "aborted"},
		{
			name: "failures are named",
			dir:  "../../policytests",
			text: "cancelled",
			want: []string{`^\d+ of \d+ fixtures in \.\./\.\./policytests failed: `,
				`esc/partial-outputs-no-prev \(line \d+\): request\.input\[1\]\.output: want "aborted", got "cancelled"`},
		},
		{
			name: "at most five are named",
			dir:  "../../policytests",
			text: "cancelled",
			want: []string{`; and \d+ more$`},
		},
		{name: "no fixtures", dir: empty, text: "aborted", want: []string{"^no fixtures in " + regexp.QuoteMeta(empty)}},
		{name: "missing directory", dir: filepath.Join(empty, "absent"), text: "aborted", want: []string{"^load fixtures: "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := FixtureGate(tc.dir)(compileDefaults(t, tc.text))
			if len(tc.want) == 0 {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.NotContains(t, err.Error(), "\n", "the refusal is one log line")
			for _, w := range tc.want {
				assert.Regexp(t, w, err.Error())
			}
		})
	}
}
