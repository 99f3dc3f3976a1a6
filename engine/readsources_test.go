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

// TestReadSourcesBoundary: links inside the policy directory (a ConfigMap's ..data layout)
// are followed; a link that leads out of it, and an oversized file, are refused.
func TestReadSourcesBoundary(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "policies")
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "..2026"), 0o755))
	policy := []byte("policy: p\nrules:\n  - {id: r, stage: pre_send, when: 'true'}\n")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "..2026", "a.yaml"), policy, 0o644))
	require.NoError(t, os.Symlink("..2026", filepath.Join(dir, "..data")))
	require.NoError(t, os.Symlink(filepath.Join("..data", "a.yaml"), filepath.Join(dir, "a.yaml")))
	srcs, err := engine.ReadSources(dir)
	require.NoError(t, err)
	require.Len(t, srcs, 1)

	outside := filepath.Join(base, "secret.yaml")
	require.NoError(t, os.WriteFile(outside, policy, 0o644))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "b.yaml")))
	_, err = engine.ReadSources(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "outside")
	require.NoError(t, os.Remove(filepath.Join(dir, "b.yaml")))

	big := append([]byte("policy: big\n# "), []byte(strings.Repeat("x", 1<<20))...)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "c.yaml"), big, 0o644))
	_, err = engine.ReadSources(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "over the limit")
}
