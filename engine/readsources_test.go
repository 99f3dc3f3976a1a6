package engine_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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

// TestReadSourcesNonRegular: a FIFO named like a policy file is refused at once, never
// opened (a read would block every reload, and at start-up the gateway would never listen);
// a directory of too many files is refused.
func TestReadSourcesNonRegular(t *testing.T) {
	dir := t.TempDir()
	policy := []byte("policy: p\nrules:\n  - {id: r, stage: pre_send, when: 'true'}\n")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a.yaml"), policy, 0o644))
	require.NoError(t, syscall.Mkfifo(filepath.Join(dir, "b.yaml"), 0o644))
	done := make(chan error, 1)
	go func() {
		_, err := engine.ReadSources(dir)
		done <- err
	}()
	select {
	case err := <-done:
		require.Error(t, err)
		assert.Contains(t, err.Error(), "not a regular file")
	case <-time.After(5 * time.Second):
		t.Fatal("ReadSources blocked on a FIFO")
	}

	many := t.TempDir()
	for i := 0; i < 257; i++ {
		require.NoError(t, os.WriteFile(filepath.Join(many, fmt.Sprintf("%03d.yaml", i)), policy, 0o644))
	}
	_, err := engine.ReadSources(many)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "more than 256 policy files")
}
