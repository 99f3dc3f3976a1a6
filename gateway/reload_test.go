package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/gateway"
)

// reloadEnv is a gateway whose policy directory the test edits.
type reloadEnv struct {
	dir string
	srv *gateway.Server
	rl  *gateway.Reloader
	reg *prometheus.Registry
	url string
	log *syncBuffer
}

func readPolicy(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "policies", name))
	require.NoError(t, err)
	return data
}

// newReloadEnv copies the default policies into dir (laid out by layout) and starts a
// gateway with a running Reloader.
func newReloadEnv(t *testing.T, dir string) *reloadEnv {
	t.Helper()
	emu := emulator.StartTest(t, emulator.WithScript(emulator.Reply("ok")), emulator.WithRecording(false))
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	cfg := gateway.DefaultConfig()
	cfg.Upstream = emu.URL()
	cfg.Policies = dir
	cfg.ReloadPoll = 200 * time.Millisecond
	srv, err := gateway.New(cfg, gateway.WithRegistry(reg),
		gateway.WithLogger(slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))))
	require.NoError(t, err)
	rl := gateway.NewReloader(srv)
	_, err = rl.Reload()
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		if err := rl.Run(ctx); err != nil {
			t.Errorf("reloader: %v", err)
		}
		close(done)
	}()
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		cancel()
		<-done
		hs.Close()
		srv.Close()
	})
	// Give the watcher a moment to be in place before the test edits the directory.
	time.Sleep(100 * time.Millisecond)
	return &reloadEnv{dir: dir, srv: srv, rl: rl, reg: reg, url: "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/responses", log: logs}
}

func (e *reloadEnv) hash() string { return e.srv.Snapshot().Hash }

func (e *reloadEnv) waitHash(t *testing.T, changedFrom string) string {
	t.Helper()
	require.Eventually(t, func() bool { return e.hash() != changedFrom }, 10*time.Second, 20*time.Millisecond,
		"the policy set was not reloaded; log:\n%s", e.log.String())
	return e.hash()
}

// withText returns the normalizer with the injected text replaced: a real, compilable edit.
func withText(t *testing.T, text string) []byte {
	data := readPolicy(t, "10-normalizer.yaml")
	return bytes.ReplaceAll(data, []byte(`output: '"aborted"'`), []byte(`output: '"`+text+`"'`))
}

func TestReloadEditorRename(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "10-normalizer.yaml"), readPolicy(t, "10-normalizer.yaml"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "20-recovery.yaml"), readPolicy(t, "20-recovery.yaml"), 0o644))
	env := newReloadEnv(t, dir)
	before := env.hash()
	// An editor writes a temporary file and renames it over the original.
	tmp := filepath.Join(dir, ".10-normalizer.yaml.swp")
	require.NoError(t, os.WriteFile(tmp, withText(t, "cancelled"), 0o644))
	require.NoError(t, os.Rename(tmp, filepath.Join(dir, "10-normalizer.yaml")))
	env.waitHash(t, before)
	assert.Equal(t, 1.0, testutil.ToFloat64(metric(t, env.reg, "chainmend_policy_last_reload_successful")))
}

func TestReloadConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	// The layout Kubernetes gives a mounted ConfigMap: files are symlinks through ..data,
	// which points at a timestamped directory; an update swaps ..data atomically and
	// touches no visible file.
	write := func(name string, files map[string][]byte) {
		d := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(d, 0o755))
		for f, data := range files {
			require.NoError(t, os.WriteFile(filepath.Join(d, f), data, 0o644))
		}
	}
	write("..2026_11_28_01", map[string][]byte{
		"10-normalizer.yaml": readPolicy(t, "10-normalizer.yaml"),
		"20-recovery.yaml":   readPolicy(t, "20-recovery.yaml"),
	})
	require.NoError(t, os.Symlink("..2026_11_28_01", filepath.Join(dir, "..data")))
	for _, f := range []string{"10-normalizer.yaml", "20-recovery.yaml"} {
		require.NoError(t, os.Symlink(filepath.Join("..data", f), filepath.Join(dir, f)))
	}
	env := newReloadEnv(t, dir)
	before := env.hash()
	write("..2026_11_28_02", map[string][]byte{
		"10-normalizer.yaml": withText(t, "interrupted"),
		"20-recovery.yaml":   readPolicy(t, "20-recovery.yaml"),
	})
	require.NoError(t, os.Symlink("..2026_11_28_02", filepath.Join(dir, "..data_tmp")))
	require.NoError(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	env.waitHash(t, before)
}

func TestReloadBrokenThenFixed(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "10-normalizer.yaml"), readPolicy(t, "10-normalizer.yaml"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "20-recovery.yaml"), readPolicy(t, "20-recovery.yaml"), 0o644))
	env := newReloadEnv(t, dir)
	good := env.hash()
	broken := bytes.Replace(readPolicy(t, "20-recovery.yaml"), []byte("error.class == \"\" &&"), []byte("error.clas == \"\" &&"), 1)
	require.NotEqual(t, readPolicy(t, "20-recovery.yaml"), broken)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "20-recovery.yaml"), broken, 0o644))
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(metric(t, env.reg, "chainmend_policy_reload_failures_total")) >= 1
	}, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, 0.0, testutil.ToFloat64(metric(t, env.reg, "chainmend_policy_last_reload_successful")))
	assert.Equal(t, good, env.hash(), "the last good set stays active")
	assert.Contains(t, env.log.String(), "20-recovery.yaml:")
	assert.Contains(t, env.log.String(), "undeclared reference to 'error.clas'")
	// Turns keep working on the last good set.
	c := dialURL(t, env.url, http.Header{"Authorization": {"Bearer " + testSecret}, "Session-Id": {"reload-broken"}})
	c.ok(`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"message","role":"user","content":"go"}]}`)

	require.NoError(t, os.WriteFile(filepath.Join(dir, "20-recovery.yaml"), readPolicy(t, "20-recovery.yaml"), 0o644))
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(metric(t, env.reg, "chainmend_policy_last_reload_successful")) == 1
	}, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, good, env.hash(), "the fixed set is the same content as the good one")
}

// TestReloadDuringBurst flips the policy set while turns run, under -race: every turn is
// evaluated against exactly one snapshot, which its log line names, and both sets serve.
func TestReloadDuringBurst(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "10-normalizer.yaml"), readPolicy(t, "10-normalizer.yaml"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "20-recovery.yaml"), readPolicy(t, "20-recovery.yaml"), 0o644))
	env := newReloadEnv(t, dir)
	hashes := map[string]bool{env.hash(): true}
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		c := dialURL(t, env.url, http.Header{"Authorization": {"Bearer " + testSecret}, "Session-Id": {fmt.Sprintf("burst-%d", i)}})
		wg.Add(1)
		go func() {
			defer wg.Done()
			frame := []byte(`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"message","role":"user","content":"go"}]}`)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if typ, err := rawTurn(c.c, frame); err != nil || typ != "response.completed" {
					t.Errorf("turn failed: %s %v", typ, err)
					return
				}
			}
		}()
	}
	for k, text := range []string{"one", "two", "aborted"} {
		before := env.hash()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "10-normalizer.yaml"), withText(t, text), 0o644))
		env.rl.Force()
		h := env.waitHash(t, before)
		mu.Lock()
		hashes[h] = true
		mu.Unlock()
		_ = k
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	turns, seen := 0, map[string]bool{}
	for _, line := range strings.Split(env.log.String(), "\n") {
		if !strings.Contains(line, `"msg":"turn"`) {
			continue
		}
		var rec struct {
			Set string `json:"set"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &rec))
		require.True(t, hashes[rec.Set], "turn evaluated against an unknown set %q", rec.Set)
		seen[rec.Set] = true
		turns++
	}
	assert.Greater(t, turns, 8)
	assert.GreaterOrEqual(t, len(seen), 2, "turns ran on more than one set during the burst")
}

// rawTurn runs one turn without test assertions, for use off the test goroutine.
func rawTurn(c *websocket.Conn, frame []byte) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, frame); err != nil {
		return "", err
	}
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			return "", err
		}
		var e struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(data, &e); err != nil {
			return "", err
		}
		if isTerminal(e.Type) {
			return e.Type, nil
		}
	}
}

func metric(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return collectorFunc(func(ch chan<- prometheus.Metric) {
		mfs, err := reg.Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() == name {
				for _, m := range mf.GetMetric() {
					var v float64
					switch {
					case m.GetGauge() != nil:
						v = m.GetGauge().GetValue()
					case m.GetCounter() != nil:
						v = m.GetCounter().GetValue()
					}
					ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, "", nil, nil), prometheus.UntypedValue, v)
				}
			}
		}
	})
}

type collectorFunc func(chan<- prometheus.Metric)

func (f collectorFunc) Describe(chan<- *prometheus.Desc)    {}
func (f collectorFunc) Collect(ch chan<- prometheus.Metric) { f(ch) }

// TestReloadGate: with --reload-gate, a set that compiles but fails the fixtures is refused
// and the last good set stays active.
func TestReloadGate(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "10-normalizer.yaml"), readPolicy(t, "10-normalizer.yaml"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "20-recovery.yaml"), readPolicy(t, "20-recovery.yaml"), 0o644))
	emu := emulator.StartTest(t, emulator.WithScript(emulator.Reply("ok")), emulator.WithRecording(false))
	reg := prometheus.NewRegistry()
	cfg := gateway.DefaultConfig()
	cfg.Upstream = emu.URL()
	cfg.Policies = dir
	cfg.ReloadGate = "../policytests"
	srv, err := gateway.New(cfg, gateway.WithRegistry(reg), gateway.WithLogger(slog.New(slog.NewTextHandler(&syncBuffer{}, nil))))
	require.NoError(t, err)
	defer srv.Close()
	rl := gateway.NewReloader(srv)
	_, err = rl.Reload()
	require.NoError(t, err, "the default set passes its fixtures")
	good := srv.Snapshot().Hash

	// Compiles, but the fixtures pin the injected text "aborted".
	require.NoError(t, os.WriteFile(filepath.Join(dir, "10-normalizer.yaml"), withText(t, "cancelled"), 0o644))
	_, err = rl.Reload()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "reload gate")
	assert.Equal(t, good, srv.Snapshot().Hash)
	assert.Equal(t, 0.0, testutil.ToFloat64(metric(t, reg, "chainmend_policy_last_reload_successful")))
}
