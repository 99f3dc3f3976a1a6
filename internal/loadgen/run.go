// Package loadgen is the side-by-side load tool of issue 7: realistic Codex conversations
// run against the upstream emulator directly, through the gateway and through the floor (a
// raw TCP copy proxy, issue 14) in one run, interleaved turn by turn; the difference is
// what the gateway costs, and its difference to the floor's what it costs beyond any hop.
//
// Layout of a run: the emulator runs in this process (recording off); each gateway and the
// floor run in a child process (this binary re-executed, see child.go and floor.go), so
// that their CPU time and RSS can be read without counting the clients or the emulator;
// Redis is a plain redis-server child on a free loopback port.
package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"chainmend/emulator"
)

// Config is a run.
type Config struct {
	Policies     string
	RedisBin     string
	JSON         bool
	JSONOut      string // also write the JSON report to this file
	OutDir       string // logs and profiles; a temporary directory when empty
	Keep         bool   // keep OutDir (always kept when given)
	PhaseWall    time.Duration
	Pairs1       int // turn pairs per 1-session phase (upper bound)
	PairsN       int // turn pairs per session of a multi-session phase (upper bound)
	Sessions     []int
	TputSessions int
	TputWindows  int
	TputWindow   time.Duration
	StreamDeltas int
	StreamReps   int
	IdleSessions int
	Moved        bool
	Local        bool
	Profile      bool
	ProfileSec   int
	Quick        bool
	Only         *regexp.Regexp // phases to run by name (nil: all); see want
	// Lanes phases (lanes.go): LaneSessions × Lanes lanes, each arm LaneRounds windows of
	// LaneWindow.
	LaneSessions []int
	Lanes        int
	LaneWindow   time.Duration
	LaneRounds   int
	ProfileMix   string // "all" or one of ws-small, ws-big, http-small, http-big
}

// Report is the whole run, printed as tables or as JSON (--json).
type Report struct {
	Started    string `json:"started"`
	GoVersion  string `json:"go_version"`
	CPUs       int    `json:"cpus"`
	LoadBefore string `json:"loadavg_before"`
	LoadAfter  string `json:"loadavg_after"`
	Method     string `json:"method"`
	// Targets are the issue-14 targets read off this run (targets.go).
	Targets    []TargetRow       `json:"targets,omitempty"`
	Phases     []PhaseResult     `json:"phases"`
	Throughput *ThroughputResult `json:"throughput,omitempty"`
	Stream     *StreamResult     `json:"stream,omitempty"`
	Idle       *IdleResult       `json:"idle,omitempty"`
	Moved      []MovedResult     `json:"moved,omitempty"`
	Lanes      []LanesResult     `json:"lanes,omitempty"`
	Profiles   []string          `json:"profiles,omitempty"`
	// RulesFired is what the policies did on every gateway over the whole run, by reason;
	// StoreCommits the gateways' store commits by result (redis, local_only, degraded: a
	// degraded commit missed Redis, e.g. over the 50 ms store timeout when the CPU is
	// saturated).
	RulesFired   map[string]float64 `json:"rules_fired"`
	StoreCommits map[string]float64 `json:"store_commits"`
	WallSec      float64            `json:"wall_sec"`
	Emulator     emulator.Stats     `json:"emulator_stats"`
}

const method = "interleaved: every turn of a conversation runs once direct to the emulator, once through the gateway " +
	"and once through the floor (a raw TCP copy proxy to the same emulator), back to back in random order; the gateway " +
	"and the floor are child processes whose CPU (getrusage in the child, else utime+stime from /proc/PID/stat) and RSS " +
	"are read per phase; the emulator and the clients run in the load tool's process"

// Main is cmd/loadgen.
func Main(args []string, stdout, stderr io.Writer) int {
	switch kind := os.Getenv(childEnv); kind {
	case "gateway", "floor":
		run := cond(kind == "gateway", runGatewayChild, runFloorChild)
		if err := run(args); err != nil {
			fmt.Fprintf(stderr, "loadgen %s child: %v\n", kind, err)
			return 1
		}
		return 0
	}
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	rep, err := Run(context.Background(), cfg, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return 1
	}
	if cfg.JSONOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err == nil {
			err = os.WriteFile(cfg.JSONOut, b, 0o644)
		}
		if err != nil {
			fmt.Fprintln(stderr, "loadgen: --json-out:", err)
		}
	}
	if cfg.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "loadgen: json:", err)
			return 1
		}
	} else {
		writeTables(stdout, rep)
	}
	if rep.failed() {
		fmt.Fprintln(stderr, "loadgen: some turns failed (see first_error)")
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Policies, "policies", "policies", "policy directory for the gateways")
	fs.StringVar(&c.RedisBin, "redis-server", "redis-server", "redis-server binary")
	fs.BoolVar(&c.JSON, "json", false, "print the report as JSON instead of tables")
	fs.StringVar(&c.JSONOut, "json-out", "", "also write the JSON report to this file")
	fs.StringVar(&c.OutDir, "out", "", "directory for gateway logs and profiles (default: a temporary one, removed)")
	fs.DurationVar(&c.PhaseWall, "phase-wall", 4*time.Second, "upper bound of one latency phase")
	fs.IntVar(&c.Pairs1, "pairs", 4000, "turn pairs of a 1-session phase (upper bound)")
	fs.IntVar(&c.PairsN, "pairs-per-session", 400, "turn pairs per session of a multi-session phase (upper bound)")
	sessions := fs.String("sessions", "1,10,100", "session counts of the latency phases (1 and 10 also run with the local store)")
	fs.IntVar(&c.TputSessions, "throughput-sessions", 32, "sessions of the saturation run (0 skips it)")
	fs.IntVar(&c.TputWindows, "throughput-windows", 4, "windows per side of the saturation run")
	fs.DurationVar(&c.TputWindow, "throughput-window", time.Second, "length of one saturation window")
	fs.IntVar(&c.StreamDeltas, "stream-deltas", 50000, "output_text.delta events of the streaming turn (0 skips it)")
	fs.IntVar(&c.StreamReps, "stream-reps", 3, "streaming turns per side")
	fs.IntVar(&c.IdleSessions, "idle", 10000, "idle sessions for the memory measurement (0 skips it)")
	fs.BoolVar(&c.Moved, "moved", true, "run the scale-out phases (two instances on one Redis, sessions that move)")
	fs.BoolVar(&c.Local, "local", true, "also run the 1-session phases, and the small 10-session ones, with the local store")
	fs.BoolVar(&c.Profile, "profile", false, "take CPU and allocation profiles of the gateway under load (written to --out)")
	fs.IntVar(&c.ProfileSec, "profile-seconds", 8, "length of the profiled load")
	fs.BoolVar(&c.Quick, "quick", false, "a short smoke run (small counts)")
	genv := fs.String("gateway-env", "", "comma-separated KEY=VALUE pairs for the gateway processes (e.g. GOMAXPROCS=1,GOGC=200)")
	only := fs.String("only", "", "run only the phases whose name matches this regexp: latency phases (e.g. 'ws-small-1-'), "+
		"lanes phases ('lanes'), and 'moved', 'throughput', 'stream', 'idle'")
	laneSessions := fs.String("lanes-sessions", "1,10", "session counts of the lanes phases (each with Redis and with the local store)")
	fs.IntVar(&c.Lanes, "lanes", 4, "lanes per session in the lanes phases (0 skips them)")
	fs.DurationVar(&c.LaneWindow, "lanes-window", 400*time.Millisecond, "length of one window of a lanes phase")
	fs.IntVar(&c.LaneRounds, "lanes-rounds", 3, "windows per arm of a lanes phase")
	fs.StringVar(&c.ProfileMix, "profile-mix", "all", "load during --profile: all, ws-small, ws-big, http-small or http-big")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if *genv != "" {
		gatewayEnv = strings.Split(*genv, ",")
	}
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			fmt.Fprintln(stderr, "loadgen: --only:", err)
			return c, err
		}
		c.Only = re
	}
	c.Sessions, c.LaneSessions = counts(*sessions), counts(*laneSessions)
	if c.Quick {
		c.PhaseWall, c.Pairs1, c.PairsN = time.Second, 300, 30
		c.TputWindows, c.TputWindow, c.StreamDeltas, c.IdleSessions = 1, 500*time.Millisecond, 5000, 500
		c.LaneRounds, c.LaneWindow = 1, 250*time.Millisecond
	}
	return c, nil
}

// counts parses a comma-separated list of positive counts, skipping anything else.
func counts(list string) []int {
	var out []int
	for _, s := range strings.Split(list, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}

// want reports whether the phase called name runs: all of them unless --only is given.
func (c *Config) want(name string) bool { return c.Only == nil || c.Only.MatchString(name) }

// laneNames are the names of the lanes phases, in the order they run.
func (c *Config) laneNames() (names, stores []string, sessions []int) {
	if c.Lanes <= 0 {
		return nil, nil, nil
	}
	for _, n := range c.LaneSessions {
		for _, st := range []string{"local", "redis"} {
			if name := fmt.Sprintf("lanes-%d-%s", n, st); c.want(name) {
				names, stores, sessions = append(names, name), append(stores, st), append(sessions, n)
			}
		}
	}
	return names, stores, sessions
}

func (r *Report) failed() bool {
	for _, p := range r.Phases {
		if p.Errors > 0 {
			return true
		}
	}
	return (r.Throughput != nil && r.Throughput.Errors > 0) || (r.Stream != nil && r.Stream.Error != "") ||
		(r.Idle != nil && r.Idle.Error != "") || slices.ContainsFunc(r.Moved, func(m MovedResult) bool { return m.Errors > 0 }) ||
		slices.ContainsFunc(r.Lanes, func(l LanesResult) bool { return l.Errors > 0 })
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// raiseNoFile lifts the open-file limit for 10,000 idle sessions (each holds a client and
// an upstream socket in the gateway, and both ends live on this machine). Raising the hard
// limit needs privileges; without them the soft limit goes up to the hard one and the idle
// count is cut to fit.
func raiseNoFile(want uint64) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 1024
	}
	if lim.Cur >= want {
		return lim.Cur
	}
	nl := syscall.Rlimit{Cur: want, Max: max(want, lim.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &nl); err == nil {
		return want
	}
	nl = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &nl)
	return lim.Max
}

// Run runs every phase and returns the report. Progress goes to logw.
func Run(ctx context.Context, cfg Config, logw io.Writer) (*Report, error) {
	t0 := time.Now()
	rep := &Report{Started: t0.UTC().Format(time.RFC3339), GoVersion: runtime.Version(), CPUs: runtime.NumCPU(),
		LoadBefore: loadavg(), Method: method}
	logf := func(format string, args ...any) {
		fmt.Fprintf(logw, "%6.1fs  %s\n", time.Since(t0).Seconds(), fmt.Sprintf(format, args...))
	}
	// --only also selects the runs that are not latency phases, by these names.
	if !cfg.want("idle") {
		cfg.IdleSessions = 0
	}
	if !cfg.want("throughput") {
		cfg.TputSessions = 0
	}
	if !cfg.want("stream") {
		cfg.StreamDeltas = 0
	}
	laneNames, laneStores, laneSessions := cfg.laneNames()
	if cfg.IdleSessions > 0 {
		// 2 sockets per session in the gateway, 2 here (client, emulator side), plus slack.
		lim := raiseNoFile(uint64(2*cfg.IdleSessions + 4096))
		if need := uint64(2*cfg.IdleSessions + 1024); lim < need {
			cfg.IdleSessions = int(lim-1024) / 2
			logf("open-file limit %d: idle sessions cut to %d", lim, cfg.IdleSessions)
		}
	}
	outDir := cfg.OutDir
	if outDir == "" {
		d, err := os.MkdirTemp("", "loadgen-")
		if err != nil {
			return nil, err
		}
		outDir = d
		if !cfg.Keep {
			defer os.RemoveAll(d)
		}
	} else if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}
	policies, err := filepath.Abs(cfg.Policies)
	if err != nil {
		return nil, err
	}

	emu := emulator.New(emulator.WithScript(script(cfg.StreamDeltas)), emulator.WithRecording(false))
	if err := emu.Listen("127.0.0.1:0"); err != nil {
		return nil, err
	}
	defer emu.Close()
	e := &env{direct: &target{name: "direct", wsURL: emu.WebSocketURL(), httpURL: emu.HTTPURL()}, logf: logf}

	rds, err := startRedis(cfg.RedisBin)
	if err != nil {
		return nil, err
	}
	defer rds.stop()
	gwArgs := func(extra ...string) []string {
		// Every simulated client dials from 127.0.0.1: the per-address cap (meant for one
		// abusive address among many) would refuse the idle phase's 10,000 sessions.
		return append([]string{"--listen", "127.0.0.1:0", "--upstream", emu.URL() + "/v1", "--policies", policies,
			"--max-source-connections", "0"}, extra...)
	}
	gwA, err := startGateway("A", filepath.Join(outDir, "gateway-A.log"), gwArgs("--redis", rds.url())...)
	if err != nil {
		return nil, err
	}
	defer gwA.stop()
	emuURL, err := url.Parse(emu.URL())
	if err != nil {
		return nil, err
	}
	floor, err := startFloor(filepath.Join(outDir, "floor.log"), emuURL.Host)
	if err != nil {
		return nil, err
	}
	defer floor.stop()
	var gwB, gwL *gatewayProc
	if cfg.Moved && (cfg.want("moved") || cfg.want("ws-small-10-redis-2inst")) {
		if gwB, err = startGateway("B", filepath.Join(outDir, "gateway-B.log"), gwArgs("--redis", rds.url())...); err != nil {
			return nil, err
		}
		defer gwB.stop()
	}
	if cfg.Local || cfg.IdleSessions > 0 || slices.Contains(laneStores, "local") {
		if gwL, err = startGateway("L", filepath.Join(outDir, "gateway-L.log"), gwArgs()...); err != nil {
			return nil, err
		}
		defer gwL.stop()
	}
	logf("emulator %s, redis %s, floor %s, gateways A(redis) %s%s%s; logs in %s", emu.URL(), rds.addr, floor.addr, gwA.addr,
		cond(gwB != nil, ", B(redis) "+addrOf(gwB), ""), cond(gwL != nil, ", L(local) "+addrOf(gwL), ""), outDir)

	// Warm-up: connection pools, page faults, the first NOSCRIPT of the replay script.
	for _, g := range []*gatewayProc{gwA, gwB, gwL} {
		if g == nil {
			continue
		}
		for _, tr := range []string{"ws", "http"} {
			e.runPhase(ctx, phaseSpec{name: "warmup-" + g.name + "-" + tr, transport: tr, mix: mixSmall, sessions: 2,
				pairs: 100, maxWall: time.Second, gateways: []*gatewayProc{g}, floor: floor})
		}
		e.runPhase(ctx, phaseSpec{name: "warmup-" + g.name + "-big", transport: "ws", mix: mixBig, sessions: 1,
			pairs: 10, maxWall: time.Second, gateways: []*gatewayProc{g}, floor: floor})
	}

	phase := func(name, tr, mix, store string, n int, gws []*gatewayProc) {
		if !cfg.want(name) {
			return
		}
		ps := phaseSpec{name: name, transport: tr, mix: mix, store: store, sessions: n, maxWall: cfg.PhaseWall, gateways: gws, floor: floor}
		if n == 1 {
			ps.pairs = cfg.Pairs1
		} else {
			ps.pairs = cfg.PairsN
		}
		if mix == mixBig {
			ps.pairs = max(1, ps.pairs/4)
		}
		if store == "redis" {
			ps.redis = rds
		}
		rep.Phases = append(rep.Phases, e.runPhase(ctx, ps))
	}
	mixes := []struct{ tr, mix string }{{"ws", mixSmall}, {"ws", mixBig}, {"http", mixSmall}, {"http", mixBig}}
	for _, n := range cfg.Sessions {
		for _, m := range mixes {
			phase(fmt.Sprintf("%s-%s-%d-redis", m.tr, m.mix, n), m.tr, m.mix, "redis", n, []*gatewayProc{gwA})
		}
		if !cfg.Local {
			continue
		}
		for _, m := range mixes {
			// With the local store: every mix at 1 session (the latency targets), the small
			// ones at 10 (the CPU target: both cores busy, nothing saturated).
			if n == 1 || (n == 10 && m.mix == mixSmall) {
				phase(fmt.Sprintf("%s-%s-%d-local", m.tr, m.mix, n), m.tr, m.mix, "local", n, []*gatewayProc{gwL})
			}
		}
	}
	for i, name := range laneNames {
		ls := lanesSpec{name: name, store: laneStores[i], sessions: laneSessions[i], lanes: cfg.Lanes,
			window: cfg.LaneWindow, rounds: max(1, cfg.LaneRounds), maxPairs: cfg.Pairs1, gateway: gwL}
		if ls.store == "redis" {
			ls.gateway, ls.redis = gwA, rds
		}
		rep.Lanes = append(rep.Lanes, e.runLanes(ctx, ls))
	}
	if cfg.Moved {
		// Scale-out: the same 10-session phase over one instance and over two.
		phase("ws-small-10-redis-1inst", "ws", mixSmall, "redis", 10, []*gatewayProc{gwA})
	}
	if gwB != nil {
		phase("ws-small-10-redis-2inst", "ws", mixSmall, "redis", 10, []*gatewayProc{gwA, gwB})
		if cfg.want("moved") {
			for _, off := range []int{cycleLen / 2, 0} {
				rep.Moved = append(rep.Moved, e.runMoved(ctx, []*gatewayProc{gwA, gwB}, rds, 10, cond(cfg.Quick, 17, 49), off))
			}
		}
	}
	if cfg.TputSessions > 0 {
		t := e.runThroughput(ctx, gwA, floor, rds, cfg.TputSessions, cfg.TputWindows, cfg.TputWindow)
		rep.Throughput = &t
	}
	if cfg.StreamDeltas > 0 {
		s := e.runStream(ctx, gwA, cfg.StreamReps)
		rep.Stream = &s
	}
	if cfg.IdleSessions > 0 && gwL != nil {
		i := e.runIdle(ctx, gwL, cfg.IdleSessions)
		rep.Idle = &i
	}
	if cfg.Profile {
		rep.Profiles = e.runProfile(ctx, gwA, outDir, cfg.ProfileSec, cfg.ProfileMix)
	}
	for _, g := range []*gatewayProc{gwA, gwB} {
		if g != nil {
			if cs, err := g.stats(false); err == nil {
				logf("gateway %s: Redis round trips %d alone %v, %d pipelined", g.name, cs.RedisSingles, cs.RedisSingleCmd, cs.RedisPipelines)
			}
		}
	}
	rep.RulesFired, rep.StoreCommits = map[string]float64{}, map[string]float64{}
	for _, g := range []*gatewayProc{gwA, gwB, gwL} {
		if g != nil {
			for k, v := range g.metricByLabel("chainmend_rule_fired_total", "reason") {
				rep.RulesFired[k] += v
			}
			for k, v := range g.metricByLabel("chainmend_store_commits_total", "result") {
				rep.StoreCommits[k] += v
			}
		}
	}
	rep.Targets = targets(rep)
	rep.Emulator = emu.Stats()
	rep.LoadAfter = loadavg()
	rep.WallSec = time.Since(t0).Seconds()
	return rep, nil
}

// runProfile loads gateway g with a mix of every turn kind while it takes a CPU profile,
// then fetches the allocation profile of the same window.
func (e *env) runProfile(ctx context.Context, g *gatewayProc, dir string, secs int, mix string) []string {
	cpuPath := filepath.Join(dir, "gateway-cpu.pprof")
	allocPath := filepath.Join(dir, "gateway-allocs.pprof")
	done := make(chan error, 2)
	go func() { done <- g.profile(time.Duration(secs)*time.Second, cpuPath) }()
	go func() {
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/allocs?seconds=%d", g.addr, secs))
		if err == nil {
			defer resp.Body.Close()
			err = writeBody(resp.Body, allocPath)
		}
		done <- err
	}()
	wall := time.Duration(secs)*time.Second + time.Second
	var mixes []struct{ tr, mix string }
	for _, m := range []struct{ tr, mix string }{{"ws", mixSmall}, {"ws", mixBig}, {"http", mixSmall}, {"http", mixBig}} {
		if mix == "all" || mix == m.tr+"-"+m.mix {
			mixes = append(mixes, m)
		}
	}
	for _, m := range mixes {
		e.runPhase(ctx, phaseSpec{name: "profile-" + m.tr + "-" + m.mix, transport: m.tr, mix: m.mix, sessions: 1,
			pairs: 100000, maxWall: wall / time.Duration(len(mixes)), gateways: []*gatewayProc{g}})
	}
	var paths []string
	for i := 0; i < 2; i++ {
		if err := <-done; err != nil {
			e.logf("profile: %v", err)
		}
	}
	for _, p := range []string{cpuPath, allocPath} {
		if st, err := os.Stat(p); err == nil && st.Size() > 0 {
			paths = append(paths, p)
		}
	}
	e.logf("profiles: %s (go tool pprof -top %s)", strings.Join(paths, ", "), cpuPath)
	return paths
}

func cond[T any](c bool, a, b T) T {
	if c {
		return a
	}
	return b
}

func addrOf(g *gatewayProc) string {
	if g == nil {
		return ""
	}
	return g.addr
}
