package loadgen

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"chainmend/gateway"
	"chainmend/internal/settings"
	"chainmend/statestore"
)

// The gateway runs in a child process: the load tool re-executes its own binary with
// childEnv=gateway. Its CPU time and RSS are then exactly the gateway's (read from
// /proc/PID/stat and /proc/PID/status), while the load clients and the emulator live in
// the parent. The child is built like cmd/gateway (same settings parser, store, policy
// reloader and handler) and adds two things for the load tool on the same listener:
// net/http/pprof under /debug/pprof/ and /loadgen/stats (Go heap figures).
const childEnv = "CHAINMEND_LOADGEN_CHILD"

// runGatewayChild is the child's main. args are gateway flags (cmd/gateway syntax).
func runGatewayChild(args []string) error {
	st, err := settings.Parse(args, os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	log := gateway.NewLogger(os.Stderr, st.LogLevel, st.LogFormat)
	statestore.RouteRedisLogs(log)
	srv, reloader, err := st.NewGateway(log, prometheus.NewRegistry(), statestore.WithRedisHook(rtCounter))
	if err != nil {
		return err
	}
	defer srv.Close()
	if _, err := reloader.Reload(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { _ = reloader.Run(ctx) }()

	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/loadgen/stats", serveChildStats)
	mux.HandleFunc("/loadgen/cpu", serveChildCPU)
	mux.Handle("/", srv.Handler())
	ln, err := net.Listen("tcp", st.Listen)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// The parent reads this line to learn the address.
	fmt.Printf("LISTEN %s\n", ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}
	return nil
}

// rtHook counts the store's Redis round trips: a command sent alone is one, a pipeline is
// one, whatever it holds. Connection handshakes and health-check pings are not counted.
type rtHook struct {
	singles, pipelines atomic.Int64
	mu                 sync.Mutex
	byName             map[string]int64
}

var rtCounter = &rtHook{byName: map[string]int64{}}

func (h *rtHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *rtHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		switch cmd.Name() {
		case "hello", "ping": // connection handshake, health checks
		default:
			h.singles.Add(1)
			h.mu.Lock()
			h.byName[cmd.Name()]++
			h.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

func (h *rtHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.pipelines.Add(1)
		return next(ctx, cmds)
	}
}

func (h *rtHook) names() map[string]int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int64, len(h.byName))
	for k, v := range h.byName {
		out[k] = v
	}
	return out
}

// childStats is what /loadgen/stats answers.
type childStats struct {
	RedisSingles   int64            `json:"redis_singles"`
	RedisPipelines int64            `json:"redis_pipelines"`
	RedisSingleCmd map[string]int64 `json:"redis_single_commands"`
	HeapInuse      uint64           `json:"heap_inuse"`
	HeapAlloc      uint64           `json:"heap_alloc"`
	StackInuse     uint64           `json:"stack_inuse"`
	Sys            uint64           `json:"sys"`
	NumGC          uint32           `json:"num_gc"`
	Goroutines     int              `json:"goroutines"`
}

func serveChildStats(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("gc") == "1" {
		runtime.GC()
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	_ = json.NewEncoder(w).Encode(childStats{
		HeapInuse: ms.HeapInuse, HeapAlloc: ms.HeapAlloc, StackInuse: ms.StackInuse, Sys: ms.Sys,
		NumGC: ms.NumGC, Goroutines: runtime.NumGoroutine(),
		RedisSingles: rtCounter.singles.Load(), RedisPipelines: rtCounter.pipelines.Load(),
		RedisSingleCmd: rtCounter.names(),
	})
}

// serveChildCPU answers the process's CPU time (user+system, all threads, exited ones
// included) in nanoseconds. getrusage counts the scheduler's exact run time, where
// /proc/PID/stat counts 10 ms ticks: over a 400 ms window of one busy core that is ±2.5 %,
// too coarse for ratios read against 1.10. No ReadMemStats here: it stops the world.
func serveChildCPU(w http.ResponseWriter, _ *http.Request) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	fmt.Fprintln(w, ru.Utime.Nano()+ru.Stime.Nano())
}

// cpuClient bounds the CPU reads: a meter must not hang on a child that stopped answering.
var cpuClient = &http.Client{Timeout: 5 * time.Second}

// cpu returns the child's CPU time from /loadgen/cpu, and false when it cannot.
func (g *gatewayProc) cpu() (time.Duration, bool) {
	resp, err := cpuClient.Get("http://" + g.ctl + "/loadgen/cpu")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64))
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, false
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return time.Duration(ns), err == nil
}

// gatewayEnv is added to the gateway children's environment (--gateway-env).
var gatewayEnv []string

// gatewayProc is a running child: a gateway, or the floor proxy (floor.go). Both answer
// /readyz and /loadgen/cpu on ctl, which is the gateway's own listener; the floor copies
// every byte of its listener upstream, so it serves them on a second one.
type gatewayProc struct {
	name string
	cmd  *exec.Cmd
	addr string // where clients connect
	ctl  string // /readyz, /loadgen/cpu
	pid  int
	done chan struct{}
	log  *os.File
}

// startGateway starts a gateway child with the given flags and waits for its address.
func startGateway(name string, logPath string, args ...string) (*gatewayProc, error) {
	return startChild("gateway", name, logPath, gatewayEnv, args...)
}

// startChild re-executes this binary as a child of the given kind (the value of childEnv)
// with extra environment and args, and waits until it is ready. The child prints
// "LISTEN addr" on stdout when it accepts connections, after "CONTROL addr" when its
// control endpoints live on a listener of their own.
func startChild(kind, name, logPath string, env []string, args ...string) (*gatewayProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(append(os.Environ(), childEnv+"="+kind), env...)
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = lf
	out, err := cmd.StdoutPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	g := &gatewayProc{name: name, cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{}), log: lf}
	type addrs struct{ addr, ctl string }
	addrc := make(chan addrs, 1)
	go func() {
		var ctl string
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "CONTROL "); ok {
				ctl = a
			}
			if a, ok := strings.CutPrefix(sc.Text(), "LISTEN "); ok {
				addrc <- addrs{a, cond(ctl != "", ctl, a)}
			}
		}
	}()
	go func() { _ = cmd.Wait(); close(g.done) }()
	select {
	case a := <-addrc:
		g.addr, g.ctl = a.addr, a.ctl
	case <-g.done:
		lf.Close()
		return nil, fmt.Errorf("%s child exited during start-up; see %s", kind, logPath)
	case <-time.After(20 * time.Second):
		g.stop()
		return nil, fmt.Errorf("%s child did not start in 20s; see %s", kind, logPath)
	}
	// Ready means a policy set is active (the floor is ready once it listens).
	for i := 0; i < 200; i++ {
		resp, err := http.Get("http://" + g.ctl + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return g, nil
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	g.stop()
	return nil, fmt.Errorf("%s child not ready; see %s", kind, logPath)
}

func (g *gatewayProc) wsURL() string   { return "ws://" + g.addr + "/v1/responses" }
func (g *gatewayProc) httpURL() string { return "http://" + g.addr + "/v1/responses" }

// stop ends the child (SIGTERM, then SIGKILL after 5 s).
func (g *gatewayProc) stop() {
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(5 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.done
	}
	g.log.Close()
}

// procSample is the child's cumulative CPU time and current RSS.
type procSample struct {
	at  time.Time
	cpu time.Duration // utime + stime
	rss int64         // bytes
}

// clkTck is USER_HZ, 100 on every Linux this runs on.
const clkTck = 100

// sample reads the child's CPU time (exact, from the child itself, else in ticks from
// /proc) and RSS.
func (g *gatewayProc) sample() procSample {
	s, err := readProc(g.pid)
	if err != nil {
		s = procSample{at: time.Now()}
	}
	if cpu, ok := g.cpu(); ok {
		s.cpu = cpu
	}
	return s
}

// readProc reads /proc/PID/stat (utime, stime: fields 14 and 15) and /proc/PID/status
// (VmRSS).
func readProc(pid int) (procSample, error) {
	ps := procSample{at: time.Now()}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ps, err
	}
	// The command name may contain spaces: fields start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ps, errors.New("bad stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14 → f[11], stime f[12].
	if len(f) < 13 {
		return ps, errors.New("short stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stt, _ := strconv.ParseInt(f[12], 10, 64)
	ps.cpu = time.Duration(ut+stt) * time.Second / clkTck
	b, err = os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return ps, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			ps.rss = kb << 10
		}
	}
	return ps, nil
}

// stats fetches /loadgen/stats, after a forced GC when gc is set.
func (g *gatewayProc) stats(gc bool) (childStats, error) {
	u := "http://" + g.addr + "/loadgen/stats"
	if gc {
		u += "?gc=1"
	}
	var cs childStats
	resp, err := http.Get(u)
	if err != nil {
		return cs, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&cs)
	return cs, err
}

// profile takes a CPU profile of the child for d and writes it to path.
func (g *gatewayProc) profile(d time.Duration, path string) error {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", g.addr, int(d.Seconds())))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return writeBody(resp.Body, path)
}

// heapProfile writes the child's allocation profile (alloc_space since start).
func (g *gatewayProc) heapProfile(path string) error {
	resp, err := http.Get("http://" + g.addr + "/debug/pprof/allocs")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return writeBody(resp.Body, path)
}

func writeBody(r io.Reader, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cpuMeter attributes child CPU to a phase: delta of utime+stime between two samples.
type cpuMeter struct {
	mu    sync.Mutex
	procs []*gatewayProc
	start []procSample
	rt0   []childStats
}

func newCPUMeter(procs ...*gatewayProc) *cpuMeter {
	m := &cpuMeter{procs: procs}
	for _, p := range procs {
		m.start = append(m.start, p.sample())
	}
	return m
}

// withRoundTrips makes the meter also count the children's Redis round trips.
func (m *cpuMeter) withRoundTrips() *cpuMeter {
	for _, p := range m.procs {
		cs, _ := p.stats(false)
		m.rt0 = append(m.rt0, cs)
	}
	return m
}

// roundTrips returns the Redis round trips (alone, pipelined) since the meter started.
func (m *cpuMeter) roundTrips() (singles, pipelines int64) {
	for i, p := range m.procs {
		if i >= len(m.rt0) {
			break
		}
		cs, _ := p.stats(false)
		singles += cs.RedisSingles - m.rt0[i].RedisSingles
		pipelines += cs.RedisPipelines - m.rt0[i].RedisPipelines
	}
	return singles, pipelines
}

// stop returns the CPU time all children used since the meter started, and the
// largest RSS seen now.
func (m *cpuMeter) stop() (cpu time.Duration, rss int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, p := range m.procs {
		s := p.sample()
		cpu += s.cpu - m.start[i].cpu
		rss += s.rss
	}
	return cpu, rss
}

// metricByLabel reads a counter family from the child's /metrics, summed by the value of
// one label (e.g. chainmend_rule_fired_total by reason).
func (g *gatewayProc) metricByLabel(name, label string) map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get("http://" + g.addr + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		i := strings.Index(line, label+`="`)
		j := strings.LastIndexByte(line, ' ')
		if i < 0 || j < 0 {
			continue
		}
		v := line[i+len(label)+2:]
		v = v[:strings.IndexByte(v, '"')]
		f, _ := strconv.ParseFloat(line[j+1:], 64)
		out[v] += f
	}
	return out
}
