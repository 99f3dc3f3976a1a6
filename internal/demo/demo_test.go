package demo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDemo keeps `make demo` honest: the conversation breaks without the gateway and does
// not break through it, and the report names the repairs.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	require.NoError(t, Run(ctx, &out, "../../policies"))
	report := out.String()
	assert.Contains(t, report, "-> 2 of 4 turns failed upstream")
	assert.Contains(t, report, "-> 0 of 4 turns failed")
	assert.Contains(t, report, "fresh_connection_replay")
	assert.Contains(t, report, "aborted_injected")
	assert.NotContains(t, report, "skipped")
}

// TestDemoAnyPolicySet: `make demo POLICIES=dir` runs to its end whatever the policies do.
// A set that rejects the demo's model shows each rejected turn as rejected, with its
// reason, and skips the turns that answer tool calls that never came; a set that does not
// compile is an error, not a crash.
func TestDemoAnyPolicySet(t *testing.T) {
	dir := t.TempDir()
	files, err := filepath.Glob("../../policies/*.yaml")
	require.NoError(t, err)
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "05-models.yaml"), []byte(`apiVersion: chainmend/v1
policy: models
reasons:
  - {name: model_not_allowed, description: "the request names a model outside the allow list"}
rules:
  - id: reject-unknown-model
    stage: pre_send
    reason: model_not_allowed
    when: '!(request.model in ["gpt-5", "gpt-5-codex"])'
    actions:
      - reject: {code: '"model_not_allowed"', message: '"model " + request.model + " is not allowed here"'}
    then: stop
`), 0o644))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	require.NoError(t, Run(ctx, &out, dir))
	report := out.String()
	assert.Contains(t, report, "REJECTED by the policies (reasons model_not_allowed): 400 model_not_allowed: model gpt-5.5 is not allowed here")
	assert.Contains(t, report, "skipped: it answers 2 tool call(s) of an earlier turn, and none came")
	assert.Contains(t, report, "-> 2 of 4 turns failed (2 rejected by the policies), 2 skipped")
	assert.Contains(t, report, "outcome=rejected")

	broken := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(broken, "p.yaml"), []byte("- id: bare\n"), 0o644))
	err = Run(ctx, &bytes.Buffer{}, broken)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no good policy set to serve")
}
