package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
	"chainmend/engine"
	"chainmend/gateway"
	"chainmend/internal/e2etest"
	"chainmend/internal/settings"
)

// reloadEnv is a gateway whose policy directory the test edits.
type reloadEnv struct {
	dir string
	srv *gateway.Server
	rl  *gateway.Reloader
	reg *prometheus.Registry
	url string
	log *e2etest.SyncBuffer
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
	logs := &e2etest.SyncBuffer{}
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

// gateEnv is a gateway with a policy directory the test edits and a Reloader built with
// opts; Reload is called by the test, no watcher runs.
type gateEnv struct {
	dir  string
	srv  *gateway.Server
	rl   *gateway.Reloader
	reg  *prometheus.Registry
	logs *e2etest.SyncBuffer
}

func newGateEnv(t *testing.T, opts ...gateway.ReloaderOption) *gateEnv {
	t.Helper()
	// Every default policy file: the fixtures the gate runs cover all of them.
	dir := t.TempDir()
	files, err := filepath.Glob(filepath.Join("..", "policies", "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(f)), readPolicy(t, filepath.Base(f)), 0o644))
	}
	emu := emulator.StartTest(t, emulator.WithScript(emulator.Reply("ok")), emulator.WithRecording(false))
	reg := prometheus.NewRegistry()
	logs := &e2etest.SyncBuffer{}
	cfg := gateway.DefaultConfig()
	cfg.Upstream = emu.URL()
	cfg.Policies = dir
	srv, err := gateway.New(cfg, gateway.WithRegistry(reg), gateway.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	return &gateEnv{dir: dir, srv: srv, rl: gateway.NewReloader(srv, opts...), reg: reg, logs: logs}
}

// edit rewrites the normalizer with another injected text: the set compiles, and the
// fixtures, which pin "aborted", fail for it.
func (e *gateEnv) edit(t *testing.T, text string) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, "10-normalizer.yaml"), withText(t, text), 0o644))
}

// TestReloadGate: a set that compiles but fails the gate is refused, the last good set
// stays active, and the error and the log line say why (for the fixture gate of
// --reload-gate: which fixture and what differed).
func TestReloadGate(t *testing.T) {
	for _, tc := range []struct {
		name string
		gate gateway.ReloadGate
		// want are substrings of the refusal of the edited set, in the error and the log.
		want []string
	}{
		{
			name: "fixtures",
			gate: settings.FixtureGate("../policytests"),
			want: []string{"reload gate: ", "fixtures in ../policytests failed: ", "esc/partial-outputs-no-prev (line ",
				`"aborted"`, `"cancelled"`},
		},
		{
			name: "injected check",
			gate: func(snap *engine.Snapshot) error {
				if injects(snap, `"cancelled"`) {
					return errors.New("cancelled is not a word we inject")
				}
				return nil
			},
			want: []string{"reload gate: cancelled is not a word we inject"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newGateEnv(t, gateway.WithReloadGate(tc.gate))
			_, err := env.rl.Reload()
			require.NoError(t, err, "the default set passes the gate")
			good := env.srv.Snapshot().Hash

			env.edit(t, "cancelled")
			_, err = env.rl.Reload()
			require.Error(t, err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
				assert.Contains(t, env.logs.String(), strings.Trim(strconv.Quote(w), `"`), "the log line says why")
			}
			assert.Equal(t, good, env.srv.Snapshot().Hash, "the last good set stays active")
			assert.Equal(t, 0.0, testutil.ToFloat64(metric(t, env.reg, "chainmend_policy_last_reload_successful")))
			assert.Equal(t, 1.0, testutil.ToFloat64(metric(t, env.reg, "chainmend_policy_reload_failures_total")))
		})
	}
}

// injects reports whether some action argument of the set contains text.
func injects(snap *engine.Snapshot, text string) bool {
	for _, p := range snap.Policies {
		for _, r := range p.Rules {
			for _, a := range r.Actions {
				for _, e := range a.Args {
					if strings.Contains(e.Text, text) {
						return true
					}
				}
			}
		}
	}
	return false
}

// TestReloadGateSeesTheNewSet: the gate judges the set that is about to be activated
// (same content hash), not the active one.
func TestReloadGateSeesTheNewSet(t *testing.T) {
	var seen []string
	env := newGateEnv(t, gateway.WithReloadGate(func(snap *engine.Snapshot) error {
		seen = append(seen, snap.Hash)
		return nil
	}))
	for _, text := range []string{"aborted", "cancelled"} {
		env.edit(t, text)
		_, err := env.rl.Reload()
		require.NoError(t, err)
		require.Equal(t, env.srv.Snapshot().Hash, seen[len(seen)-1])
	}
	assert.NotEqual(t, seen[0], seen[1])
}

// TestReloadGateIsNotTraffic: the fixture gate evaluates hundreds of turns per reload, and
// none of them count in the engine metrics /metrics serves: a gateway that served nothing
// shows no fired rule and no stage verdict after any number of gated reloads, passed or
// refused. One real turn then does show, so the test looks at the right series.
func TestReloadGateIsNotTraffic(t *testing.T) {
	env := newGateEnv(t, gateway.WithReloadGate(settings.FixtureGate("../policytests")))
	passed := 0
	for i, text := range []string{"aborted", "cancelled", "aborted", "interrupted", "aborted"} {
		env.edit(t, text)
		if _, err := env.rl.Reload(); err == nil {
			passed++
		} else {
			require.Contains(t, err.Error(), "reload gate", "reload %d", i)
		}
	}
	require.Equal(t, 3, passed)
	hs := httptest.NewServer(env.srv.Handler())
	defer hs.Close()
	scrape := func() string {
		resp, err := http.Get(hs.URL + "/metrics")
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return string(b)
	}
	engineSeries := []string{"chainmend_rule_fired_total", "chainmend_policy_verdicts_total", "chainmend_policy_evaluation_seconds_count"}
	idle := scrape()
	for _, name := range engineSeries {
		assert.Zero(t, seriesSum(idle, name), "%s after 5 gated reloads of a gateway that served nothing", name)
	}
	assert.Equal(t, 3.0, seriesSum(idle, "chainmend_policy_reloads_total"))
	assert.Equal(t, 2.0, seriesSum(idle, "chainmend_policy_reload_failures_total"))

	c := dialURL(t, "ws"+strings.TrimPrefix(hs.URL, "http")+"/v1/responses",
		http.Header{"Authorization": {"Bearer " + testSecret}, "Session-Id": {"gate-traffic"}})
	c.ok(`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"message","role":"user","content":"go"}]}`)
	eventually(t, "the turn to be counted", func() bool { return seriesSum(scrape(), "chainmend_policy_verdicts_total") > 0 })
	served := scrape()
	for _, name := range engineSeries {
		assert.Positive(t, seriesSum(served, name), "%s after one turn", name)
	}
}

// TestRuntimeImportsNoHarness: the gateway gets its reload gate injected, so no test
// harness (fixture runner, end-to-end helpers, the emulator) nor the process wiring that
// builds the gate ends up in the runtime's dependencies.
func TestRuntimeImportsNoHarness(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "chainmend/gateway").CombinedOutput()
	require.NoError(t, err, "%s", out)
	deps := strings.Fields(string(out))
	require.Contains(t, deps, "chainmend/engine", "go list answered the wrong question")
	for _, harness := range []string{"chainmend/internal/policytest", "chainmend/internal/e2etest", "chainmend/emulator", "chainmend/internal/settings"} {
		assert.NotContains(t, deps, harness)
	}
}

// seriesSum sums the samples of a metric family in a Prometheus text exposition.
func seriesSum(exposition, name string) float64 {
	var sum float64
	for _, line := range strings.Split(exposition, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// TestReloadLogLines: each turn of the reload story leaves one line an operator can act
// on: a set refused at start-up says there is no good set (not that the last one stays),
// a set accepted with lint findings says so with the findings, and the reload that ends a
// spell of refusals says the gateway is good again.
func TestReloadLogLines(t *testing.T) {
	t.Run("start-up without a good set", func(t *testing.T) {
		env := newGateEnv(t)
		require.NoError(t, os.WriteFile(filepath.Join(env.dir, "40-broken.yaml"), []byte("apiVersion: chainmend/v1\npolicy: broken\nrules:\n  - {id: x, stage: pre_sned, when: 'true'}\n"), 0o644))
		_, err := env.rl.Reload()
		require.Error(t, err)
		assert.Contains(t, err.Error(), "no good policy set to serve: policy set does not compile:")
		assert.Contains(t, err.Error(), `40-broken.yaml:4:20: unknown stage "pre_sned": did you mean pre_send?`)
		assert.Contains(t, env.logs.String(), "policy set refused; there is no good policy set to serve")
		assert.NotContains(t, env.logs.String(), "last good set stays active")
		assert.Nil(t, env.srv.Snapshot())
	})
	t.Run("refused, then good again", func(t *testing.T) {
		env := newGateEnv(t)
		_, err := env.rl.Reload()
		require.NoError(t, err)
		good := env.srv.Snapshot().Hash
		broken := filepath.Join(env.dir, "40-broken.yaml")
		require.NoError(t, os.WriteFile(broken, []byte("apiVersion: chainmend/v1\npolicy: broken\nrules:\n  - {id: x, stage: pre_sned, when: 'true'}\n"), 0o644))
		for range 2 {
			_, err = env.rl.Reload()
			require.Error(t, err)
			assert.NotContains(t, err.Error(), "no good policy set", "a good set is active")
		}
		assert.Contains(t, env.logs.String(), "policy reload refused; the last good set stays active")
		require.NoError(t, os.Remove(broken))
		_, err = env.rl.Reload()
		require.NoError(t, err)
		assert.Equal(t, good, env.srv.Snapshot().Hash)
		assert.Regexp(t, `msg="policy reload good again" set=`+good+` rules=\d+ dir=\S+ refused_before=2 same_set=true`, env.logs.String())
		assert.Equal(t, 1.0, testutil.ToFloat64(metric(t, env.reg, "chainmend_policy_last_reload_successful")))

		before := strings.Count(env.logs.String(), "good again")
		_, err = env.rl.Reload()
		require.NoError(t, err)
		assert.Equal(t, before, strings.Count(env.logs.String(), "good again"), "only the reload that ends the refusals says it")
	})
	t.Run("accepted with lint findings", func(t *testing.T) {
		env := newGateEnv(t)
		require.NoError(t, os.WriteFile(filepath.Join(env.dir, "40-lint.yaml"), []byte("apiVersion: chainmend/v1\npolicy: lint\nrules:\n  - {id: never-fires, stage: pre_send, when: 'false'}\n"), 0o644))
		diags, err := env.rl.Reload()
		require.NoError(t, err)
		require.Len(t, diags.Lints(), 2, "an undeclared reason and a rule that never fires")
		require.NotNil(t, env.srv.Snapshot())
		logs := env.logs.String()
		assert.Contains(t, logs, `msg="policy set active with lint findings"`)
		assert.Contains(t, logs, `lint=2`)
		assert.Contains(t, logs, `rule \"never-fires\" can never fire: its when is always false`)
	})
}

// TestReloadGateLint: a gate's lint findings (engine.Diagnostics without errors) do not
// refuse the set; they are returned and logged with it. The fixture gate so reports a case
// whose request would go upstream with its pairing broken.
func TestReloadGateLint(t *testing.T) {
	fixtures := t.TempDir()
	// The store:true case of esc.yaml without its broken_pairing: the default policies leave
	// call_B unanswered on purpose, and this fixture does not say so.
	require.NoError(t, os.WriteFile(filepath.Join(fixtures, "store-true.yaml"), []byte(`name: store-true
cases:
  - name: pending-call-left-to-the-upstream
    request:
      type: response.create
      model: gpt-5-codex
      store: true
      previous_response_id: resp_1
      input:
        - {type: function_call_output, call_id: call_A, output: "exit 0"}
    state:
      turn: 2
      anchor: resp_1
      cached: resp_1
      pending: {calls: [call_A, call_B]}
      previous: {same: true}
    expect:
      verdict: send
      unchanged: true
`), 0o644))
	for _, tc := range []struct {
		name string
		gate gateway.ReloadGate
		want string
	}{
		{"fixture gate", settings.FixtureGate(fixtures),
			"lint: case store-true/pending-call-left-to-the-upstream: pairing broken after pre_send: pending call call_B of the chained response has no output"},
		{"any gate", func(*engine.Snapshot) error {
			return fmt.Errorf("checked: %w", engine.Diagnostics{{Pos: engine.Pos{File: "x.yaml", Line: 1, Col: 1}, Severity: engine.SevLint, Msg: "a warning"}})
		}, "x.yaml:1:1: lint: a warning"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newGateEnv(t, gateway.WithReloadGate(tc.gate))
			diags, err := env.rl.Reload()
			require.NoError(t, err, "lint does not refuse the set")
			require.NotNil(t, env.srv.Snapshot())
			assert.Contains(t, diags.Error(), tc.want)
			assert.Contains(t, env.logs.String(), `msg="policy set active with lint findings"`)
			assert.Contains(t, env.logs.String(), strings.Trim(strconv.Quote(tc.want), `"`))
		})
	}
	env := newGateEnv(t, gateway.WithReloadGate(func(*engine.Snapshot) error {
		return engine.Diagnostics{{Pos: engine.Pos{File: "x.yaml", Line: 1, Col: 1}, Severity: engine.SevError, Msg: "an error"}}
	}))
	_, err := env.rl.Reload()
	require.Error(t, err, "a gate's error findings refuse the set")
	assert.Contains(t, err.Error(), "reload gate: x.yaml:1:1: an error")
}
