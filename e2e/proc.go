package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RepoRoot returns the module root: the nearest directory at or above the working
// directory that holds go.mod.
func RepoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatalf("e2e: getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatalf("e2e: no go.mod above the working directory")
		}
		dir = parent
	}
}

// builds holds the binaries compiled in this test run, keyed by package and tags.
var builds struct {
	mu   sync.Mutex
	dir  string
	bins map[string]string
	errs map[string]error
}

// Build compiles a main package of this module (for example "./cmd/gateway") with
// `go build` into a temporary directory, once per test run: later calls with the same
// package and tags return the same binary. When the test binary itself runs with -race,
// the binary is built with -race too, so the multi-process suites also look for data races
// in the gateway (see Gateway.Stop). RemoveBuilds deletes the directory.
func Build(tb testing.TB, pkg string, tags ...string) string {
	tb.Helper()
	key := pkg + "|" + strings.Join(tags, ",")
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if bin, ok := builds.bins[key]; ok {
		return bin
	}
	if err, ok := builds.errs[key]; ok {
		tb.Fatalf("e2e: build %s: %v", pkg, err)
	}
	if builds.dir == "" {
		dir, err := os.MkdirTemp("", "chainmend-e2e-bin-")
		if err != nil {
			tb.Fatalf("e2e: temp dir: %v", err)
		}
		builds.dir = dir
		builds.bins = map[string]string{}
		builds.errs = map[string]error{}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	bin := filepath.Join(builds.dir, fmt.Sprintf("%s-%d", filepath.Base(pkg), len(builds.bins)))
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(args, pkg)
	cmd := exec.Command(goBin, args...)
	cmd.Dir = RepoRoot(tb)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("%w\n%s", err, out)
		builds.errs[key] = err
		tb.Fatalf("e2e: go %s: %v", strings.Join(args, " "), err)
	}
	tb.Logf("e2e: built %s (race=%v) in %s", pkg, raceEnabled, time.Since(start).Round(time.Millisecond))
	builds.bins[key] = bin
	return bin
}

// RemoveBuilds deletes the binaries Build made; TestMain calls it after the run.
func RemoveBuilds() {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir != "" {
		_ = os.RemoveAll(builds.dir)
		builds.dir, builds.bins, builds.errs = "", nil, nil
	}
}

// Gateway is one running gateway process.
type Gateway struct {
	// Name labels the instance in failure messages ("A", "B").
	Name string
	// Addr is the host:port the gateway listens on.
	Addr string

	tb   testing.TB
	cmd  *exec.Cmd
	done chan struct{}

	mu      sync.Mutex
	logs    bytes.Buffer
	stopped bool
}

var listenRe = regexp.MustCompile(`msg="gateway listening" addr=(\S+)`)

// StartGateway runs the gateway binary on a free loopback port with args (the upstream,
// the policies, Redis…) and waits until it listens and its policies are loaded. It is
// stopped when the test ends; if the test failed, the end of its log is printed.
func StartGateway(tb testing.TB, bin, name string, args ...string) *Gateway {
	tb.Helper()
	return startGateway(tb, bin, name, "/readyz", args...)
}

// StartGatewayLive is StartGateway for a gateway that is expected not to be ready (a store
// that cannot work as configured): it waits for /healthz instead of /readyz.
func StartGatewayLive(tb testing.TB, bin, name string, args ...string) *Gateway {
	tb.Helper()
	return startGateway(tb, bin, name, "/healthz", args...)
}

func startGateway(tb testing.TB, bin, name, probe string, args ...string) *Gateway {
	tb.Helper()
	g := &Gateway{Name: name, tb: tb, done: make(chan struct{})}
	g.cmd = exec.Command(bin, append([]string{"--listen", "127.0.0.1:0", "--log-level", "debug"}, args...)...)
	g.cmd.Env = scrubbedEnv()
	stderr, err := g.cmd.StderrPipe()
	if err != nil {
		tb.Fatalf("e2e: gateway %s: %v", name, err)
	}
	g.cmd.Stdout = io.Discard
	if err := g.cmd.Start(); err != nil {
		tb.Fatalf("e2e: start gateway %s: %v", name, err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			g.mu.Lock()
			g.logs.WriteString(line)
			g.logs.WriteByte('\n')
			g.mu.Unlock()
			if m := listenRe.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		_ = g.cmd.Wait()
		close(g.done)
	}()
	tb.Cleanup(func() {
		g.Stop()
		if tb.Failed() {
			tb.Logf("---- gateway %s log (tail) ----\n%s", name, tail(g.Logs(), 12000))
		}
	})
	select {
	case g.Addr = <-addr:
	case <-g.done:
		tb.Fatalf("e2e: gateway %s exited at start:\n%s", name, g.Logs())
	case <-time.After(20 * time.Second):
		tb.Fatalf("e2e: gateway %s did not start:\n%s", name, g.Logs())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(g.URL() + probe)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("e2e: gateway %s not ready:\n%s", name, g.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return g
}

// scrubbedEnv is the environment of a child process without the gateway's own settings
// (GATEWAY_*) and without credentials a developer may have exported.
func scrubbedEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "GATEWAY_"), strings.HasPrefix(k, "OPENAI_"), strings.HasPrefix(k, "CODEX_"):
			continue
		}
		env = append(env, kv)
	}
	return env
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// URL returns http://ADDR.
func (g *Gateway) URL() string { return "http://" + g.Addr }

// WSURL returns the WebSocket endpoint ws://ADDR/v1/responses.
func (g *Gateway) WSURL() string { return "ws://" + g.Addr + "/v1/responses" }

// Logs returns everything the gateway logged so far.
func (g *Gateway) Logs() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.logs.String()
}

// Stop ends the process (SIGTERM, then SIGKILL after 5 s) and waits for it. A race-enabled
// binary that reported a data race fails the test.
func (g *Gateway) Stop() {
	g.mu.Lock()
	if g.stopped {
		g.mu.Unlock()
		return
	}
	g.stopped = true
	g.mu.Unlock()
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(5 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.done
	}
	if strings.Contains(g.Logs(), "WARNING: DATA RACE") {
		g.tb.Errorf("e2e: gateway %s reported a data race:\n%s", g.Name, tail(g.Logs(), 20000))
	}
}

// Metrics returns the gateway's /metrics text.
func (g *Gateway) Metrics(tb testing.TB) string {
	tb.Helper()
	resp, err := http.Get(g.URL() + "/metrics")
	if err != nil {
		tb.Fatalf("e2e: gateway %s /metrics: %v", g.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("e2e: gateway %s /metrics: %v", g.Name, err)
	}
	return string(b)
}

// Sample is one line of the Prometheus text format.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// ParseMetrics reads the samples of a Prometheus text exposition (comments skipped).
func ParseMetrics(text string) []Sample {
	var out []Sample
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		s := Sample{Labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(rest, "{ "); i >= 0 && rest[i] == '{' {
			s.Name = rest[:i]
			rest = rest[i+1:]
			for {
				rest = strings.TrimLeft(rest, ", ")
				if strings.HasPrefix(rest, "}") {
					rest = rest[1:]
					break
				}
				eq := strings.Index(rest, `="`)
				if eq < 0 {
					break
				}
				key := rest[:eq]
				rest = rest[eq+2:]
				var val strings.Builder
				for len(rest) > 0 && rest[0] != '"' {
					if rest[0] == '\\' && len(rest) > 1 {
						switch rest[1] {
						case 'n':
							val.WriteByte('\n')
						default:
							val.WriteByte(rest[1])
						}
						rest = rest[2:]
						continue
					}
					val.WriteByte(rest[0])
					rest = rest[1:]
				}
				if len(rest) > 0 {
					rest = rest[1:]
				}
				s.Labels[key] = val.String()
			}
		} else if i >= 0 {
			s.Name = rest[:i]
			rest = rest[i:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		s.Value = v
		out = append(out, s)
	}
	return out
}

// Sum adds the samples of the metric name whose labels include match.
func (g *Gateway) Sum(tb testing.TB, name string, match map[string]string) float64 {
	tb.Helper()
	return SumSamples(ParseMetrics(g.Metrics(tb)), name, match)
}

// SumSamples adds the samples of the metric name whose labels include match.
func SumSamples(samples []Sample, name string, match map[string]string) float64 {
	var sum float64
next:
	for _, s := range samples {
		if s.Name != name {
			continue
		}
		for k, v := range match {
			if s.Labels[k] != v {
				continue next
			}
		}
		sum += s.Value
	}
	return sum
}

// Fired returns chainmend_rule_fired_total of the normalizer and the recovery summed by
// reason (shadow rules and the post_response bookkeeping, which fires on every response,
// excluded).
func (g *Gateway) Fired(tb testing.TB) map[string]float64 {
	tb.Helper()
	out := map[string]float64{}
	for _, s := range ParseMetrics(g.Metrics(tb)) {
		if s.Name == "chainmend_rule_fired_total" && s.Labels["shadow"] != "true" && s.Labels["stage"] != "post_response" {
			out[s.Labels["reason"]] += s.Value
		}
	}
	return out
}

// FiredSince returns the reasons that fired since before (a Fired snapshot), sorted, each
// once.
func (g *Gateway) FiredSince(tb testing.TB, before map[string]float64) []string {
	tb.Helper()
	var out []string
	for reason, v := range g.Fired(tb) {
		if v > before[reason] {
			out = append(out, reason)
		}
	}
	sort.Strings(out)
	return out
}
