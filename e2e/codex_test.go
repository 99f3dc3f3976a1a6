package e2e

// The real client (issue 6 item 2, issue 13 item 7b): Codex CLI (`codex exec`) with a model
// provider whose base_url is the gateway (through a recording proxy), the emulator playing a
// model that calls the shell tool once and then answers. The suite runs once per release of
// codexVersions (subtests named by version). `make e2e-codex` installs each release from npm
// into .cache/codex-<version> and runs this with CHAINMEND_CODEX set; `go test ./e2e/` runs
// it too with the releases it finds there. CHAINMEND_CODEX_CAPTURE=1 (re)writes
// testdata/codex/codex-<version>-gateway-<case>.json from what each release sent.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/internal/e2etest"
)

// codexKeyEnv is the env_key of the test model provider; it holds testSecret.
const codexKeyEnv = "CHAINMEND_CODEX_KEY"

// codexPrompt asks for the shell call the emulator's script makes anyway.
const codexPrompt = "Run `echo acceptance-ok` in the shell and report what it printed."

// codexBinaries returns the Codex CLI binary of each release to run, by version: those
// $CHAINMEND_CODEX lists (separated like PATH; each must exist and says its own version),
// else the installs `make e2e-codex` leaves in .cache/codex-<version>. A release of
// codexVersions with no binary is skipped loudly, or fails the test under CI=true.
func codexBinaries(t *testing.T) map[string]string {
	t.Helper()
	bins := map[string]string{}
	if list := os.Getenv("CHAINMEND_CODEX"); list != "" {
		for _, p := range filepath.SplitList(list) {
			if p == "" {
				continue
			}
			if _, err := os.Stat(p); err != nil {
				t.Fatalf("CHAINMEND_CODEX names %s: %v", p, err)
			}
			v := codexVersionOf(t, p)
			if other, ok := bins[v]; ok {
				t.Fatalf("CHAINMEND_CODEX names Codex %s twice: %s and %s", v, other, p)
			}
			bins[v] = p
		}
		return bins
	}
	for _, v := range codexVersions {
		p := filepath.Join(RepoRoot(t), ".cache", "codex-"+v, "node_modules", ".bin", "codex")
		if _, err := os.Stat(p); err == nil {
			bins[v] = p
		}
	}
	return bins
}

// codexVersionOf runs `codex --version` ("codex-cli 0.171.0") and returns the version.
func codexVersionOf(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin, "--version").CombinedOutput()
	require.NoError(t, err, "%s --version: %s", bin, out)
	line := strings.TrimSpace(string(out))
	v, ok := strings.CutPrefix(line, "codex-cli ")
	require.True(t, ok, "%s --version printed %q", bin, line)
	return v
}

// codexMissing skips a release that has no binary, loudly, or fails under CI=true: the
// matrix is the point of the suite.
func codexMissing(t *testing.T, version string) {
	t.Helper()
	msg := "Codex CLI " + version + " not found: set CHAINMEND_CODEX to codex binaries (separated like PATH), " +
		"or run `make e2e-codex` (installs @openai/codex@" + version + " from npm into .cache/codex-" + version + ")"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip("!!!!!!!! SKIPPING: " + msg + " !!!!!!!!")
}

func TestCodexCLI(t *testing.T) {
	bins := codexBinaries(t)
	// The matrix, then any other release named by hand through CHAINMEND_CODEX.
	versions := append([]string(nil), codexVersions...)
	for _, v := range slices.Sorted(maps.Keys(bins)) {
		if !slices.Contains(versions, v) {
			versions = append(versions, v)
		}
	}
	capture := os.Getenv("CHAINMEND_CODEX_CAPTURE") == "1"
	for _, version := range versions {
		t.Run(version, func(t *testing.T) {
			codex, ok := bins[version]
			if !ok {
				codexMissing(t, version)
			}
			t.Logf("codex %s: %s", version, codex)
			gateway := Build(t, "./cmd/gateway")
			for _, k := range codexCases {
				t.Run(k.name, func(t *testing.T) {
					t.Parallel()
					runCodexCase(t, k, version, codex, gateway, capture)
				})
			}
		})
	}
}

// runCodexCase runs one case with one Codex release: Codex through a recording proxy and the
// gateway binary against the case's emulator.
func runCodexCase(t *testing.T, k codexCase, version, codex, bin string, capture bool) {
	emu := k.start(t)
	gw := StartGateway(t, bin, "codex-"+version+"-"+k.name, "--upstream", emu.URL(), "--policies", policiesDir(t), "--reload-poll", "1h")
	rec := startRecorder(t, gw.URL())
	before := gw.Fired(t)

	res := runCodex(t, codex, rec.URL()+"/v1")
	require.Equal(t, 0, res.exit, "codex exec failed:\n--- stdout\n%s\n--- stderr\n%s", tail(res.stdout, 4000), tail(res.stderr, 8000))
	assert.Contains(t, res.last, e2etest.CodexEcho, "Codex's final message is the model's answer")

	reasons := gw.FiredSince(t, before)
	t.Logf("gateway reasons: %v", reasons)
	k.check(t, emu, reasons)
	checkCodexUpstream(t, emu)

	// What Codex sent, and that it never saw an error: the gateway repaired and
	// recovered everything on its side.
	conns, frames, errs := rec.snapshot()
	assert.Zero(t, errs, "Codex received an error frame")
	var ws []recConn
	for _, c := range conns {
		switch {
		case c.Transport == "ws":
			ws = append(ws, c)
		case strings.HasSuffix(c.Path, "/responses"):
			t.Errorf("Codex fell back to HTTP: %s %s", c.Method, c.Path)
		}
	}
	require.Len(t, ws, 1, "one client socket for the whole exec: upstream trouble stays behind the gateway")
	h := ws[0].Headers
	assert.Equal(t, "responses_websockets=2026-02-06", h["Openai-Beta"])
	assert.NotEmpty(t, h["Session-Id"])
	assert.Equal(t, "codex_exec", h["Originator"])
	require.NotEmpty(t, frames)
	assert.Contains(t, string(frames[0].Frame), `"generate":false`, "the warm-up comes first")
	for _, f := range frames[1:] {
		if f.Type == "response.create" {
			assert.Contains(t, string(f.Frame), `"previous_response_id"`, "on one socket Codex chains every turn")
		}
	}
	upHdr := emu.Conns()[0].Header()
	assert.Equal(t, "Bearer "+testSecret, upHdr.Get("Authorization"), "the credential goes upstream")
	assert.Equal(t, h["Session-Id"], upHdr.Get("Session-Id"))

	for where, text := range map[string]string{"gateway log": gw.Logs(), "codex stdout": res.stdout, "codex stderr": res.stderr} {
		noSecret(t, where, text)
	}
	if capture && !t.Failed() {
		writeCapture(t, k, version, conns, frames, upstreamOf(emu))
	}
}

type codexResult struct {
	exit           int
	stdout, stderr string
	last           string
}

// runCodex runs `codex exec` non-interactively in a temporary home whose config.toml
// points a model provider at baseURL.
func runCodex(t *testing.T, bin, baseURL string) codexResult {
	t.Helper()
	home := t.TempDir()
	codexHome := filepath.Join(home, ".codex")
	work := filepath.Join(home, "work")
	require.NoError(t, os.MkdirAll(codexHome, 0o700))
	require.NoError(t, os.MkdirAll(work, 0o755))
	config := fmt.Sprintf(`# chainmend e2e: Codex talks to the gateway (through a recording proxy).
model = "gpt-5.5"
model_provider = "chainmend"

[model_providers.chainmend]
name = "chainmend gateway"
base_url = %q
wire_api = "responses"
env_key = %q
supports_websockets = true
`, baseURL, codexKeyEnv)
	require.NoError(t, os.WriteFile(filepath.Join(codexHome, "config.toml"), []byte(config), 0o600))
	last := filepath.Join(home, "last-message.txt")

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "exec",
		"--skip-git-repo-check",
		"--dangerously-bypass-approvals-and-sandbox", // the emulator's only command is an echo
		"--ephemeral",
		"--color", "never",
		"-C", work,
		"-o", last,
		codexPrompt)
	cmd.Dir = work
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"CODEX_HOME=" + codexHome,
		codexKeyEnv + "=" + testSecret,
		"LANG=C.UTF-8",
		"TERM=dumb",
		"NO_COLOR=1",
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("codex exec: %s, %v", time.Since(start).Round(time.Millisecond), err)
	res := codexResult{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		res.exit = -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			res.exit = ee.ExitCode()
		}
	}
	if b, err := os.ReadFile(last); err == nil {
		res.last = string(b)
	}
	return res
}

// captureFile is one testdata/codex/codex-<version>-gateway-<case>.json.
type captureFile struct {
	CodexVersion string           `json:"codex_version"`
	Case         string           `json:"case"`
	Description  string           `json:"description"`
	Note         string           `json:"note"`
	Connections  []recConn        `json:"connections"`
	Frames       []recFrame       `json:"frames"`
	Upstream     []upstreamCreate `json:"upstream"`
}

func capturePath(t *testing.T, version, caseName string) string {
	return filepath.Join(RepoRoot(t), "testdata", "codex", "codex-"+version+"-gateway-"+caseName+".json")
}

func writeCapture(t *testing.T, k codexCase, version string, conns []recConn, frames []recFrame, up []upstreamCreate) {
	t.Helper()
	cf := captureFile{
		CodexVersion: "codex-cli " + version,
		Case:         k.name,
		Description:  k.description,
		Note: "Recorded by e2e.TestCodexCLI between `codex exec` and the gateway (what Codex sent: handshake " +
			"headers, frames in order, how the gateway answered each create), and what the emulator received " +
			"(upstream; long tool outputs shortened). Authorization value replaced. Replayed by e2e.TestCodexCaptureReplay.",
		Connections: conns,
		Frames:      frames,
		Upstream:    up,
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	require.NoError(t, enc.Encode(cf))
	require.NotContains(t, buf.String(), testSecret)
	p := capturePath(t, version, k.name)
	require.NoError(t, os.WriteFile(p, buf.Bytes(), 0o644))
	t.Logf("wrote %s (%d bytes)", p, buf.Len())
}
