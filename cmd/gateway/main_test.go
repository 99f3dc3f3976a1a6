package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
)

const secret = "sk-live-do-not-log-0123456789"

// build compiles the gateway binary, with the debug tag when asked: the two builds of
// SPEC §3 (release repairs, debug is strict).
func build(t *testing.T, tags string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gateway")
	args := []string{"build", "-o", bin}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	cmd := exec.Command("go", append(args, ".")...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

type proc struct {
	cmd  *exec.Cmd
	addr string
	mu   sync.Mutex
	logs bytes.Buffer
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

var listenRe = regexp.MustCompile(`addr=(\S+)`)

// start runs the binary and waits for it to listen.
func start(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, append([]string{"--listen", "127.0.0.1:0"}, args...)...)}
	p.cmd.Env = append(os.Environ(), env...)
	stderr, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
		}
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logs.WriteString(line + "\n")
			p.mu.Unlock()
			if strings.Contains(line, "gateway listening") {
				if m := listenRe.FindStringSubmatch(line); m != nil {
					addr <- m[1]
				}
			}
		}
	}()
	select {
	case p.addr = <-addr:
	case <-time.After(15 * time.Second):
		t.Fatalf("gateway did not start:\n%s", p.log())
	}
	return p
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// escConversation runs turn 1 (two calls) and the ESC turn (one output, no
// previous_response_id) and returns the ESC turn's terminal or error frame.
func escConversation(t *testing.T, addr string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/v1/responses", &websocket.DialOptions{HTTPHeader: http.Header{
		"Authorization": {"Bearer " + secret}, "Session-Id": {"bin-test-" + t.Name()}}})
	require.NoError(t, err)
	defer c.CloseNow()
	c.SetReadLimit(64 << 20)
	send := func(frame string) map[string]any {
		require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(frame)))
		for {
			_, data, err := c.Read(ctx)
			require.NoError(t, err)
			var ev map[string]any
			require.NoError(t, json.Unmarshal(data, &ev))
			switch ev["type"] {
			case "error", "response.completed", "response.failed":
				return ev
			}
		}
	}
	ev := send(`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"message","role":"user","content":"go"}]}`)
	require.Equal(t, "response.completed", ev["type"], "%v", ev)
	return send(`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"function_call_output","call_id":"call_A","output":"ok"},{"type":"message","role":"user","content":"next"}]}`)
}

func newEmulator(t *testing.T) *emulator.Emulator {
	t.Helper()
	return emulator.StartTest(t, emulator.WithScript(emulator.Cycle(
		emulator.CallTurn(emulator.FunctionCallID("call_A", "exec", `{}`), emulator.FunctionCallID("call_B", "exec", `{}`)),
		emulator.TextTurn("done"),
	)))
}

// TestBuilds runs the ESC case through both builds of the real binary: the release build
// repairs it, the debug build rejects it with invariant_violation naming the call.
func TestBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	for _, tc := range []struct {
		name, tags string
		strict     bool
	}{
		{"release", "", false},
		{"debug", "debug", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			emu := newEmulator(t)
			bin := build(t, tc.tags)
			p := start(t, bin, nil, "--upstream", emu.URL(), "--policies", "../../policies")
			code, _ := get(t, "http://"+p.addr+"/readyz")
			assert.Equal(t, 200, code)
			ev := escConversation(t, p.addr)
			if tc.strict {
				require.Equal(t, "error", ev["type"], "%v", ev)
				assert.EqualValues(t, 400, ev["status"])
				e := ev["error"].(map[string]any)
				assert.Equal(t, "invariant_violation", e["code"])
				assert.Contains(t, e["message"], "call_B")
			} else {
				require.Equal(t, "response.completed", ev["type"], "%v", ev)
				creates := emu.Creates()
				require.Len(t, creates, 2)
				raw, err := creates[1].InputRaw()
				require.NoError(t, err)
				assert.Contains(t, string(bytes.Join(rawBytes(raw), nil)), `"aborted"`)
			}
			_, metrics := get(t, "http://"+p.addr+"/metrics")
			assert.Contains(t, metrics, `chainmend_rule_fired_total{mode="`+map[bool]string{true: "strict", false: "repair"}[tc.strict]+`"`)
			assert.NotContains(t, p.log(), secret, "the API key must never be logged")
			assert.NotContains(t, metrics, secret)
		})
	}
}

func rawBytes(raw []json.RawMessage) [][]byte {
	out := make([][]byte, len(raw))
	for i, r := range raw {
		out[i] = r
	}
	return out
}

// copyPolicies copies every default policy file into dir (created if need be) and returns
// it: the binary must run the whole default set, which the reload gate's fixtures cover.
func copyPolicies(t *testing.T, dir string) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	files, err := filepath.Glob("../../policies/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o644))
	}
	return dir
}

// reloadRefused forces a reload (SIGHUP) and waits until the gateway reports it refused.
func (p *proc) reloadRefused(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		_, m := get(t, "http://"+p.addr+"/metrics")
		return strings.Contains(m, "chainmend_policy_last_reload_successful 0")
	}, 5*time.Second, 50*time.Millisecond)
	// The gauge moves just before the refusal is logged: wait for the line too.
	require.Eventually(t, func() bool { return strings.Contains(p.log(), "policy reload refused") },
		5*time.Second, 20*time.Millisecond, "%s", p.log())
}

// TestConfigAndReload: settings from a config file and the environment, /readyz, and a
// SIGHUP reload of a broken set that leaves the last good set active.
func TestConfigAndReload(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	emu := newEmulator(t)
	bin := build(t, "")
	dir := t.TempDir()
	pol := copyPolicies(t, filepath.Join(dir, "policies"))
	cfg := filepath.Join(dir, "gateway.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("policies: "+pol+"\nmode: strict\nreload_poll: 1h\n"), 0o644))
	// The environment overrides the file: repair, not strict.
	p := start(t, bin, []string{"GATEWAY_MODE=repair", "GATEWAY_UPSTREAM=" + emu.URL()}, "--config", cfg)
	assert.Contains(t, p.log(), "mode=repair")
	ev := escConversation(t, p.addr)
	require.Equal(t, "response.completed", ev["type"], "%v", ev)

	require.NoError(t, os.WriteFile(filepath.Join(pol, "30-broken.yaml"), []byte("policy: broken\nrules:\n  - id: x\n    stage: pre_send\n    when: request.nope\n"), 0o644))
	p.reloadRefused(t)
	assert.Contains(t, p.log(), "30-broken.yaml:5:19: when: undeclared reference to 'request.nope'")
	code, _ := get(t, "http://"+p.addr+"/readyz")
	assert.Equal(t, 200, code, "the last good set stays active")
	ev = escConversation(t, p.addr)
	require.Equal(t, "response.completed", ev["type"], "%v", ev)
}

// TestReloadGateFlag: --reload-gate wires the fixture gate into the binary. A set that
// compiles but fails the fixtures is refused on SIGHUP, the log line names the fixture
// that failed, and the gate's fixture runs never show as traffic on /metrics.
func TestReloadGateFlag(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	emu := newEmulator(t)
	bin := build(t, "")
	pol := copyPolicies(t, t.TempDir())
	p := start(t, bin, []string{"GATEWAY_RELOAD_GATE=../../policytests"},
		"--upstream", emu.URL(), "--policies", pol, "--reload-poll", "1h")
	code, _ := get(t, "http://"+p.addr+"/readyz")
	require.Equal(t, 200, code, "the default set passed the gate:\n%s", p.log())

	data, err := os.ReadFile(filepath.Join(pol, "10-normalizer.yaml"))
	require.NoError(t, err)
	edited := bytes.ReplaceAll(data, []byte(`output: '"aborted"'`), []byte(`output: '"cancelled"'`))
	require.NotEqual(t, data, edited)
	require.NoError(t, os.WriteFile(filepath.Join(pol, "10-normalizer.yaml"), edited, 0o644))
	p.reloadRefused(t)
	assert.Contains(t, p.log(), "reload gate: ")
	assert.Contains(t, p.log(), "esc/partial-outputs-no-prev (line ")
	_, metrics := get(t, "http://"+p.addr+"/metrics")
	assert.NotContains(t, metrics, "chainmend_rule_fired_total{", "fixture runs are not traffic")
	assert.NotContains(t, metrics, "chainmend_policy_verdicts_total{", "fixture runs are not traffic")
}

// TestMetricsListen: with --metrics-listen, /metrics is served on its own address and not on
// the main one (issue 11).
func TestMetricsListen(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	emu := newEmulator(t)
	bin := build(t, "")
	p := start(t, bin, nil, "--upstream", emu.URL(), "--policies", copyPolicies(t, t.TempDir()), "--metrics-listen", "127.0.0.1:0")
	var maddr string
	require.Eventually(t, func() bool {
		m := regexp.MustCompile(`msg="metrics listening" addr=(\S+)`).FindStringSubmatch(p.log())
		if m != nil {
			maddr = m[1]
		}
		return m != nil
	}, 5*time.Second, 20*time.Millisecond, "%s", p.log())
	code, body := get(t, "http://"+maddr+"/metrics")
	assert.Equal(t, 200, code)
	assert.Contains(t, body, "chainmend_policy_last_reload_successful 1")
	code, _ = get(t, "http://"+p.addr+"/metrics")
	assert.Equal(t, 404, code, "not on the main listener")
}
