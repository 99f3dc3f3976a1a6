package loadgen

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ThroughputResult is the saturation run: all sessions send as fast as they can, in
// alternating windows all direct, all through the gateway or all through the floor.
type ThroughputResult struct {
	Sessions       int     `json:"sessions"`
	Windows        int     `json:"windows_per_side"`
	WindowSec      float64 `json:"window_sec"`
	DirectTurnsPS  float64 `json:"direct_turns_per_sec"`
	GatewayTurnsPS float64 `json:"gateway_turns_per_sec"`
	Ratio          float64 `json:"ratio"`
	// GatewayCPUUtil is gateway CPU seconds per wall second during its windows (2.0 = both
	// cores); CPUPerTurnUs is the gateway CPU per turn at saturation.
	GatewayCPUUtil float64 `json:"gateway_cpu_util"`
	CPUPerTurnUs   float64 `json:"gateway_cpu_per_turn_us"`
	// LoadCPUDirectUs and LoadCPUGatewayUs are this process's CPU (clients and emulator)
	// per turn in the direct and in the gateway windows, RedisCPUUs the Redis server's per
	// gateway turn: with the gateway's own, where the machine's two cores go.
	LoadCPUDirectUs  float64 `json:"loadgen_cpu_per_direct_turn_us"`
	LoadCPUGatewayUs float64 `json:"loadgen_cpu_per_gateway_turn_us"`
	RedisCPUUs       float64 `json:"redis_cpu_per_gateway_turn_us"`
	// The floor's windows: its turns/s, those over direct's, the proxy's own CPU (cores, and
	// per turn), this process's CPU per floor turn, and the gateway's CPU per turn over the
	// floor's. Absent when the run has no floor.
	FloorTurnsPS   float64 `json:"floor_turns_per_sec,omitempty"`
	FloorRatio     float64 `json:"floor_ratio,omitempty"`
	FloorCPUUtil   float64 `json:"floor_cpu_util,omitempty"`
	FloorCPUUs     float64 `json:"floor_cpu_per_turn_us,omitempty"`
	LoadCPUFloorUs float64 `json:"loadgen_cpu_per_floor_turn_us,omitempty"`
	CPUOverFloor   float64 `json:"gateway_cpu_per_turn_over_floor,omitempty"`
	// RoundRatios are the gateway's and the floor's turns/s over direct's within each
	// round (one window per side, back to back): their spread is how much the machine's
	// other work moved the pooled ratios above.
	GatewayRoundRatios []float64 `json:"gateway_ratio_per_round"`
	FloorRoundRatios   []float64 `json:"floor_ratio_per_round,omitempty"`
	Errors             int       `json:"errors"`
	FirstErr           string    `json:"first_error,omitempty"`
}

// runThroughput rotates direct, gateway and floor windows (direct first, then gateway, then
// floor, …; no floor windows when floor is nil) with every worker running chained 3 KB
// WebSocket turns back to back on the side of the current window.
func (e *env) runThroughput(ctx context.Context, g, floor *gatewayProc, rds *redisProc, sessions, windows int, window time.Duration) ThroughputResult {
	res := ThroughputResult{Sessions: sessions, Windows: windows, WindowSec: window.Seconds()}
	cli := newHTTPClient(sessions + 4)
	defer cli.CloseIdleConnections()
	sides := []*target{{name: "direct", wsURL: e.direct.wsURL, http: cli}, e.gatewayTarget(g, cli)}
	procs := []*gatewayProc{nil, g}
	if floor != nil {
		sides, procs = append(sides, e.floorTarget(floor, cli)), append(procs, floor)
	}
	nsides := int32(len(sides))
	stopMode := nsides    // mode values are side indexes, then this one
	var mode atomic.Int32 // the side of the current window
	var done [3]atomic.Int64
	var errs atomic.Int32
	var firstErr atomic.Value
	var wg, ready sync.WaitGroup
	start := make(chan struct{})
	ctx, cancel := context.WithTimeout(ctx, time.Duration(int(nsides)*windows+4)*window+30*time.Second)
	defer cancel()
	ready.Add(sessions)
	for w := 0; w < sessions; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			seed := e.seed.Add(1)
			sid := fmt.Sprintf("lg-tput-%d-%d", w, seed)
			p := newPayloads(sid, seed)
			hdr := clientHeaders(sid, fmt.Sprintf("t%d", w%4))
			ss := make([]*wsSession, len(sides))
			var err error
			for i, tg := range sides {
				if ss[i], err = dialWS(ctx, tg, hdr, p); err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					ready.Done()
					return
				}
				defer ss[i].close()
			}
			ready.Done()
			<-start
			for i := 0; i < 1_000_000 && ctx.Err() == nil; i++ {
				m := mode.Load()
				if m == stopMode {
					return
				}
				if _, err := ss[m].turn(ctx); err != nil {
					if ctx.Err() == nil {
						errs.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
					return
				}
				done[m].Add(1)
			}
		}(w)
	}
	ready.Wait()
	close(start)
	var dur, self, cpu [3]time.Duration
	var rcpu time.Duration
	// counts[i] is done at the start of window i, and a last one once every worker has
	// stopped; winDur[i] is window i's length.
	var counts [][3]int64
	var winDur []time.Duration
	snap := func() {
		counts = append(counts, [3]int64{done[0].Load(), done[1].Load(), done[2].Load()})
	}
	for i := 0; i < int(nsides)*windows && ctx.Err() == nil; i++ {
		m := int32(i) % nsides
		snap()
		mode.Store(m)
		t0 := time.Now()
		s0 := selfCPU()
		var meter *cpuMeter
		var r0 procSample
		if procs[m] != nil {
			meter = newCPUMeter(procs[m])
		}
		if m == 1 && rds != nil {
			r0, _ = readProc(rds.cmd.Process.Pid)
		}
		time.Sleep(window)
		if meter != nil {
			c, _ := meter.stop()
			cpu[m] += c
		}
		if m == 1 && rds != nil {
			r1, _ := readProc(rds.cmd.Process.Pid)
			rcpu += r1.cpu - r0.cpu
		}
		self[m] += selfCPU() - s0
		dur[m] += time.Since(t0)
		winDur = append(winDur, time.Since(t0))
	}
	mode.Store(stopMode)
	wg.Wait()
	snap()
	turnsPS := func(m int) float64 {
		if dur[m] <= 0 {
			return 0
		}
		return float64(done[m].Load()) / dur[m].Seconds()
	}
	perTurn := func(d time.Duration, m int) float64 {
		if n := done[m].Load(); n > 0 {
			return float64(d.Microseconds()) / float64(n)
		}
		return 0
	}
	res.DirectTurnsPS, res.GatewayTurnsPS = turnsPS(0), turnsPS(1)
	res.Ratio = ratio(res.GatewayTurnsPS, res.DirectTurnsPS)
	if dur[1] > 0 {
		res.GatewayCPUUtil = cpu[1].Seconds() / dur[1].Seconds()
	}
	res.CPUPerTurnUs, res.LoadCPUGatewayUs, res.RedisCPUUs = perTurn(cpu[1], 1), perTurn(self[1], 1), perTurn(rcpu, 1)
	res.LoadCPUDirectUs = perTurn(self[0], 0)
	if floor != nil {
		res.FloorTurnsPS = turnsPS(2)
		res.FloorRatio = ratio(res.FloorTurnsPS, res.DirectTurnsPS)
		if dur[2] > 0 {
			res.FloorCPUUtil = cpu[2].Seconds() / dur[2].Seconds()
		}
		res.FloorCPUUs, res.LoadCPUFloorUs = perTurn(cpu[2], 2), perTurn(self[2], 2)
		res.CPUOverFloor = ratio(res.CPUPerTurnUs, res.FloorCPUUs)
	}
	// A window's turns are those its side completed from the window's start to the end of
	// the next window: a turn that began in it and ended after it counts (the next window
	// is another side's, which starts no turn on this one).
	winRate := func(i int) float64 {
		m := i % int(nsides)
		return float64(counts[min(i+2, len(counts)-1)][m]-counts[i][m]) / winDur[i].Seconds()
	}
	for r := 0; (r+1)*int(nsides) <= len(winDur); r++ {
		d := winRate(r * int(nsides))
		res.GatewayRoundRatios = append(res.GatewayRoundRatios, ratio(winRate(r*int(nsides)+1), d))
		if floor != nil {
			res.FloorRoundRatios = append(res.FloorRoundRatios, ratio(winRate(r*int(nsides)+2), d))
		}
	}
	res.Errors = int(errs.Load())
	if v, ok := firstErr.Load().(string); ok {
		res.FirstErr = v
	}
	e.logf("throughput %d sessions: direct %.0f turns/s, gateway %.0f turns/s (%.2f×), floor %.0f turns/s (%.2f×), gateway CPU %.0f µs/turn (floor %.0f, %.2f×)",
		sessions, res.DirectTurnsPS, res.GatewayTurnsPS, res.Ratio, res.FloorTurnsPS, res.FloorRatio, res.CPUPerTurnUs, res.FloorCPUUs, res.CPUOverFloor)
	return res
}

// selfCPU is this process's CPU time (user + system).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// StreamResult is the relay throughput of one session: a turn of many text deltas.
type StreamResult struct {
	EventsPerTurn  int     `json:"events_per_turn"`
	Reps           int     `json:"reps"`
	DirectEPS      float64 `json:"direct_events_per_sec"`
	GatewayEPS     float64 `json:"gateway_events_per_sec"`
	Ratio          float64 `json:"ratio"`
	GatewayCPUPerK float64 `json:"gateway_cpu_us_per_1000_events"`
	Error          string  `json:"error,omitempty"`
}

func (e *env) runStream(ctx context.Context, g *gatewayProc, reps int) StreamResult {
	var res StreamResult
	cli := newHTTPClient(4)
	defer cli.CloseIdleConnections()
	p := newPayloads("lg-stream", e.seed.Add(1))
	hdr := clientHeaders("lg-stream", "s")
	d, err := dialWS(ctx, &target{name: "direct", wsURL: e.direct.wsURL, http: cli}, hdr, p)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer d.close()
	gs, err := dialWS(ctx, e.gatewayTarget(g, cli), hdr, p)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer gs.close()
	var rates [2][]float64
	var cpu time.Duration
	var gwEvents int
	for i := 0; i < reps; i++ {
		for side, s := range []*wsSession{d, gs} {
			var meter *cpuMeter
			if side == 1 {
				meter = newCPUMeter(g)
			}
			smp, _, err := s.exchange(ctx, p.stream)
			if meter != nil {
				c, _ := meter.stop()
				cpu += c
				gwEvents += smp.events
			}
			if err != nil {
				res.Error = err.Error()
				return res
			}
			res.EventsPerTurn = smp.events
			rates[side] = append(rates[side], float64(smp.events)/smp.total.Seconds())
		}
	}
	res.Reps = reps
	slices.Sort(rates[0])
	slices.Sort(rates[1])
	res.DirectEPS, res.GatewayEPS = rates[0][reps/2], rates[1][reps/2]
	res.Ratio = res.GatewayEPS / res.DirectEPS
	if gwEvents > 0 {
		res.GatewayCPUPerK = float64(cpu.Microseconds()) / float64(gwEvents) * 1000
	}
	e.logf("stream: %d events/turn, direct %.0f events/s, gateway %.0f events/s (%.2f×)", res.EventsPerTurn, res.DirectEPS, res.GatewayEPS, res.Ratio)
	return res
}

// IdleResult is the memory of idle sessions on the gateway.
type IdleResult struct {
	Sessions        int     `json:"sessions"`
	Opened          int     `json:"opened"`
	RSSBefore       int64   `json:"rss_before_bytes"`
	RSSAfter        int64   `json:"rss_after_bytes"`
	HeapBefore      uint64  `json:"heap_inuse_before_bytes"`
	HeapAfter       uint64  `json:"heap_inuse_after_bytes"`
	StackBefore     uint64  `json:"stack_inuse_before_bytes"`
	StackAfter      uint64  `json:"stack_inuse_after_bytes"`
	Goroutines      int     `json:"goroutines_after"`
	RSSPerSession   float64 `json:"rss_per_session_bytes"`
	HeapPerSession  float64 `json:"heap_plus_stack_per_session_bytes"`
	GoroutinesPerSn float64 `json:"goroutines_per_session"`
	OpenSec         float64 `json:"open_sec"`
	Error           string  `json:"error,omitempty"`
}

// runIdle opens n sessions on g, each with one warm-up create (generate:false, as Codex
// starts) so that the gateway holds its upstream connection, and measures the gateway's
// memory before and after, each after a forced GC.
func (e *env) runIdle(ctx context.Context, g *gatewayProc, n int) IdleResult {
	res := IdleResult{Sessions: n}
	before, err := g.stats(true)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	time.Sleep(200 * time.Millisecond)
	res.RSSBefore = g.sample().rss
	res.HeapBefore, res.StackBefore = before.HeapInuse, before.StackInuse
	cli := newHTTPClient(64)
	defer cli.CloseIdleConnections()
	tg := e.gatewayTarget(g, cli)
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	sessions := make([]*wsSession, n)
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				sid := fmt.Sprintf("lg-idle-%d", i)
				// 100 sessions per credential: under the gateway's per-tenant cap.
				s, err := dialWS(ctx, tg, clientHeaders(sid, fmt.Sprintf("idle%d", i/100)), nil)
				if err == nil {
					err = s.warmup(ctx)
					if err != nil {
						s.close()
					}
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				sessions[i] = s
			}
		}()
	}
	wg.Wait()
	res.OpenSec = time.Since(t0).Seconds()
	for _, s := range sessions {
		if s != nil {
			res.Opened++
		}
	}
	if v, ok := firstErr.Load().(string); ok {
		res.Error = v
	}
	after, err := g.stats(true)
	if err == nil {
		time.Sleep(200 * time.Millisecond)
		res.RSSAfter = g.sample().rss
		res.HeapAfter, res.StackAfter, res.Goroutines = after.HeapInuse, after.StackInuse, after.Goroutines
		if res.Opened > 0 {
			k := float64(res.Opened)
			res.RSSPerSession = float64(res.RSSAfter-res.RSSBefore) / k
			res.HeapPerSession = (float64(res.HeapAfter) + float64(res.StackAfter) - float64(res.HeapBefore) - float64(res.StackBefore)) / k
			res.GoroutinesPerSn = float64(after.Goroutines-before.Goroutines) / k
		}
	}
	// Close them all, bounded.
	var cw sync.WaitGroup
	var ci atomic.Int64
	for w := 0; w < 64; w++ {
		cw.Add(1)
		go func() {
			defer cw.Done()
			for {
				i := int(ci.Add(1)) - 1
				if i >= n {
					return
				}
				if s := sessions[i]; s != nil {
					_ = s.conn.CloseNow()
				}
			}
		}()
	}
	cw.Wait()
	e.logf("idle: %d sessions open in %.1fs: RSS %.1f KiB/session, heap+stack %.1f KiB/session, %.1f goroutines/session",
		res.Opened, res.OpenSec, res.RSSPerSession/1024, res.HeapPerSession/1024, res.GoroutinesPerSn)
	return res
}

// MovedResult is sessions that change gateway instance mid-conversation (a client
// reconnecting elsewhere), through two instances on one Redis; gateway side only.
type MovedResult struct {
	// Kind is "chained" (the first turn on the new instance chains with
	// previous_response_id) or "full" (it is a full create, as Codex sends after a
	// reconnect).
	Kind         string      `json:"kind"`
	Sessions     int         `json:"sessions"`
	Turns        int         `json:"turns"`
	Moves        int         `json:"moves"`
	Errors       int         `json:"errors"`
	FirstErr     string      `json:"first_error,omitempty"`
	CPUPerTurnUs float64     `json:"gateway_cpu_per_turn_us"`
	Redis        *redisDelta `json:"redis"`
	// ReadRTPerMove is the read round trips per move: all reads, less one per session for
	// its very first turn (a new session: one pipelined read that finds nothing), over the
	// moves. The turns between moves read nothing.
	ReadRTPerMove  float64 `json:"read_round_trips_per_move"`
	WriteRTPerTurn float64 `json:"write_round_trips_per_turn"`
}

// moveGap is the pause of a client between losing one instance and reaching the next.
var moveGap = 5 * time.Millisecond

// runMoved: each worker runs the WebSocket conversation (a full create every cycleLen turns,
// chained turns between) and reconnects to the other instance every cycleLen turns, at turn
// offset within the cycle: 0 lands on the full create, anything else on a chained turn,
// which the gateway continues from the shared state.
func (e *env) runMoved(ctx context.Context, gws []*gatewayProc, r *redisProc, sessions, turns, offset int) MovedResult {
	res := MovedResult{Sessions: sessions, Kind: cond(offset%cycleLen == 0, "full", "chained")}
	cli := newHTTPClient(sessions + 4)
	defer cli.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	meter := newCPUMeter(gws...).withRoundTrips()
	before := r.commandStats()
	for w := 0; w < sessions; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			seed := e.seed.Add(1)
			sid := fmt.Sprintf("lg-moved-%d-%d", w, seed)
			p := newPayloads(sid, seed)
			hdr := clientHeaders(sid, "m")
			var s *wsSession
			n, moves, inst := 0, 0, w
			var err error
			for i := 0; i < turns && ctx.Err() == nil; i++ {
				if s == nil || (i%cycleLen == offset%cycleLen && i > 0) {
					if s != nil {
						s.close()
						// A client notices the lost connection and reconnects elsewhere:
						// milliseconds, not microseconds. (Reconnecting at once can beat the
						// previous instance's invalidation to the new one, which then drops
						// what it just read and reads it again.)
						time.Sleep(moveGap)
						moves++
						inst++
					}
					var ns *wsSession
					if ns, err = dialWS(ctx, e.gatewayTarget(gws[inst%len(gws)], cli), hdr, p); err != nil {
						break
					}
					if s != nil {
						ns.step, ns.prev, ns.call = s.step, s.prev, s.call
					}
					s = ns
				}
				if _, err = s.turn(ctx); err != nil {
					break
				}
				n++
			}
			if s != nil {
				s.close()
			}
			mu.Lock()
			defer mu.Unlock()
			res.Turns += n
			res.Moves += moves
			if err != nil {
				res.Errors++
				if res.FirstErr == "" {
					res.FirstErr = err.Error()
				}
			}
		}(w)
	}
	wg.Wait()
	cpu, _ := meter.stop()
	sg, pl := meter.roundTrips()
	d := diffCommandStats(before, r.commandStats(), sg, pl)
	res.Redis = &d
	if res.Turns > 0 {
		res.CPUPerTurnUs = float64(cpu.Microseconds()) / float64(res.Turns)
		res.WriteRTPerTurn = float64(d.WriteRoundTrips) / float64(res.Turns)
	}
	if res.Moves > 0 {
		res.ReadRTPerMove = float64(d.ReadRoundTrips-int64(sessions)) / float64(res.Moves)
	}
	e.logf("moved (%s): %d turns, %d moves, %.2f read round trips per move, %.2f write round trips per turn, errors %d %s",
		res.Kind, res.Turns, res.Moves, res.ReadRTPerMove, res.WriteRTPerTurn, res.Errors, res.FirstErr)
	return res
}
