package loadgen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Mixes of a latency phase.
const (
	// mixSmall: WebSocket, a 3 KB full create and then chained 3 KB creates (a full 3 KB
	// create again every cycleLen turns). Over HTTP: every turn a 3 KB full create.
	mixSmall = "small"
	// mixBig: WebSocket, a 175 KB full create then one chained 3 KB create (the tool
	// output), again and again. Over HTTP: every turn a 175 KB full create.
	mixBig = "big"
)

// phaseSpec describes one interleaved latency phase.
type phaseSpec struct {
	name      string
	transport string // "ws" or "http"
	mix       string
	store     string // "redis" or "local", for the report
	sessions  int
	pairs     int           // turn pairs per session (upper bound)
	maxWall   time.Duration // upper bound of the phase
	gateways  []*gatewayProc
	floor     *gatewayProc // the floor arm's proxy; nil runs the phase without one
	redis     *redisProc   // nil for the local store
}

// PhaseResult is one interleaved phase.
type PhaseResult struct {
	Name      string        `json:"name"`
	Transport string        `json:"transport"`
	Mix       string        `json:"mix"`
	Store     string        `json:"store"`
	Sessions  int           `json:"sessions"`
	Instances int           `json:"instances"`
	Pairs     int           `json:"pairs"` // matched turns: pairs, or triples with the floor
	Errors    int           `json:"errors"`
	FirstErr  string        `json:"first_error,omitempty"`
	WallSec   float64       `json:"wall_sec"`
	Classes   []ClassResult `json:"classes"`
	// GatewayCPUms is the CPU time (user+system) of the gateway process(es) during the
	// phase; CPUPerTurnUs divides it by the turns that went through the gateway.
	GatewayCPUms float64 `json:"gateway_cpu_ms"`
	CPUPerTurnUs float64 `json:"gateway_cpu_per_turn_us"`
	// CPUsPer1000 is gateway CPU seconds per 1,000 turns.
	CPUsPer1000 float64 `json:"gateway_cpu_s_per_1000_turns"`
	RSSBytes    int64   `json:"gateway_rss_bytes"`
	// FloorCPUms is the floor proxy's CPU time (its child's getrusage) during the phase,
	// FloorCPUPerTurnUs that over the turns that went through it, and CPUOverFloor the
	// gateway's CPU per turn over the floor's (0 without a floor arm).
	FloorCPUms        float64 `json:"floor_cpu_ms,omitempty"`
	FloorCPUPerTurnUs float64 `json:"floor_cpu_per_turn_us,omitempty"`
	CPUOverFloor      float64 `json:"gateway_cpu_per_turn_over_floor,omitempty"`
	// TurnsPerSec is the turns of every side (direct, gateway, floor) over the wall time:
	// the pace of the interleaved phase, not a throughput limit (see the throughput phase).
	TurnsPerSec float64     `json:"turns_per_sec"`
	Redis       *redisDelta `json:"redis,omitempty"`
	// Per 1,000 gateway turns.
	RedisReadRTPer1000  float64 `json:"redis_read_round_trips_per_1000_turns"`
	RedisWriteRTPer1000 float64 `json:"redis_write_round_trips_per_1000_turns"`
	RedisCmdsPer1000    float64 `json:"redis_commands_per_1000_turns"`
}

// env is what every phase shares.
type env struct {
	direct  *target
	httpCli func() *http.Client
	seed    atomic.Uint64
	logf    func(format string, args ...any)
}

func newHTTPClient(n int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConns:        n,
		MaxIdleConnsPerHost: n,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}}
}

func (e *env) gatewayTarget(g *gatewayProc, cli *http.Client) *target {
	return &target{name: "gateway", wsURL: g.wsURL(), httpURL: g.httpURL(), http: cli}
}

// floorTarget is the floor proxy f, in front of the emulator: the direct URLs' paths on
// the proxy's address.
func (e *env) floorTarget(f *gatewayProc, cli *http.Client) *target {
	return &target{name: "floor", wsURL: f.wsURL(), httpURL: f.httpURL(), http: cli}
}

// runPhase runs sessions workers; each holds one conversation direct and the same
// conversation through a gateway (and through the floor, when the phase has one) and runs
// every turn on each, back to back, in random order, so that all sides see the same
// machine state. Workers are spread over the gateways round robin.
func (e *env) runPhase(ctx context.Context, ps phaseSpec) PhaseResult {
	res := PhaseResult{Name: ps.name, Transport: ps.transport, Mix: ps.mix, Store: ps.store,
		Sessions: ps.sessions, Instances: len(ps.gateways)}
	directCli := newHTTPClient(ps.sessions + 4)
	directT := &target{name: "direct", wsURL: e.direct.wsURL, httpURL: e.direct.httpURL, http: directCli}
	gwCli := newHTTPClient(ps.sessions + 4)
	gts := make([]*target, len(ps.gateways))
	for i, g := range ps.gateways {
		gts[i] = e.gatewayTarget(g, gwCli)
	}
	var floorT *target
	if ps.floor != nil {
		floorCli := newHTTPClient(ps.sessions + 4)
		defer floorCli.CloseIdleConnections()
		floorT = e.floorTarget(ps.floor, floorCli)
	}
	// Connections are set up under their own bound; maxWall starts with the first turn.
	dctx, dcancel := context.WithTimeout(ctx, 60*time.Second)
	defer dcancel()
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()

	outs := make([]*convWorker, ps.sessions)
	var ready, wg sync.WaitGroup
	start := make(chan struct{})
	var meter, floorMeter *cpuMeter
	var rbefore map[string]int64
	ready.Add(ps.sessions)
	for w := 0; w < ps.sessions; w++ {
		seed := e.seed.Add(1)
		o := newConvWorker(seed)
		outs[w] = o
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			sid := fmt.Sprintf("lg-%s-%d-%d", ps.name, w, seed)
			p := newPayloads(sid, seed)
			hdr := clientHeaders(sid, fmt.Sprintf("t%d", w%4))
			gt := gts[w%len(gts)]
			if ps.transport == "ws" {
				d, err := dialWS(dctx, directT, hdr, p)
				if err != nil {
					o.err = err
					ready.Done()
					return
				}
				defer d.close()
				g, err := dialWS(dctx, gt, hdr, p)
				if err != nil {
					o.err = err
					ready.Done()
					return
				}
				defer g.close()
				if ps.mix == mixBig {
					d.big, g.big = true, true
				}
				o.turnD, o.turnG = d.turn, g.turn
				if floorT != nil {
					f, err := dialWS(dctx, floorT, hdr, p)
					if err != nil {
						o.err = err
						ready.Done()
						return
					}
					defer f.close()
					f.big = ps.mix == mixBig
					o.turnF = f.turn
				}
			} else {
				d := &httpSession{tg: directT, hdr: hdr, p: p, big: ps.mix == mixBig}
				g := &httpSession{tg: gt, hdr: hdr, p: p, big: ps.mix == mixBig}
				o.turnD, o.turnG = d.turn, g.turn
				if floorT != nil {
					o.turnF = (&httpSession{tg: floorT, hdr: hdr, p: p, big: ps.mix == mixBig}).turn
				}
			}
			ready.Done()
			<-start
			for i := 0; i < ps.pairs && pctx.Err() == nil; i++ {
				if err := o.pair(pctx, true); err != nil {
					if pctx.Err() == nil {
						o.err = err
					}
					return
				}
			}
		}(w)
	}
	ready.Wait()
	meter = newCPUMeter(ps.gateways...).withRoundTrips()
	if ps.floor != nil {
		floorMeter = newCPUMeter(ps.floor)
	}
	if ps.redis != nil {
		rbefore = ps.redis.commandStats()
	}
	t0 := time.Now()
	stopTimer := time.AfterFunc(ps.maxWall, cancel)
	defer stopTimer.Stop()
	close(start)
	wg.Wait()
	wall := time.Since(t0)
	cpu, rss := meter.stop()
	var floorCPU time.Duration
	if floorMeter != nil {
		floorCPU, _ = floorMeter.stop()
	}
	if ps.redis != nil {
		sg, pl := meter.roundTrips()
		d := diffCommandStats(rbefore, ps.redis.commandStats(), sg, pl)
		res.Redis = &d
	}
	gwTurns, floorTurns := 0, 0
	for _, o := range outs {
		res.Pairs += o.n
		gwTurns += o.gwTurns
		floorTurns += o.floorTurns
		if o.err != nil {
			res.Errors++
			if res.FirstErr == "" {
				res.FirstErr = o.err.Error()
			}
		}
	}
	res.Classes = classResults(outs)
	res.WallSec = wall.Seconds()
	res.GatewayCPUms = float64(cpu.Microseconds()) / 1e3
	if gwTurns > 0 {
		res.CPUPerTurnUs = float64(cpu.Microseconds()) / float64(gwTurns)
		res.CPUsPer1000 = cpu.Seconds() / float64(gwTurns) * 1000
		if res.Redis != nil {
			k := 1000 / float64(gwTurns)
			res.RedisReadRTPer1000 = float64(res.Redis.ReadRoundTrips) * k
			res.RedisWriteRTPer1000 = float64(res.Redis.WriteRoundTrips) * k
			var n int64
			for _, v := range res.Redis.Commands {
				n += v
			}
			res.RedisCmdsPer1000 = float64(n) * k
		}
	}
	if floorTurns > 0 {
		res.FloorCPUms = float64(floorCPU.Microseconds()) / 1e3
		res.FloorCPUPerTurnUs = float64(floorCPU.Microseconds()) / float64(floorTurns)
		res.CPUOverFloor = ratio(res.CPUPerTurnUs, res.FloorCPUPerTurnUs)
	}
	res.RSSBytes = rss
	res.TurnsPerSec = float64(cond(ps.floor != nil, 3, 2)*res.Pairs) / wall.Seconds()
	directCli.CloseIdleConnections()
	gwCli.CloseIdleConnections()
	floorNote := ""
	if floorTurns > 0 {
		floorNote = fmt.Sprintf(" (floor %.0f, %.2f×)", res.FloorCPUPerTurnUs, res.CPUOverFloor)
	}
	e.logf("phase %-22s %5d pairs in %5.1fs, gateway CPU %.0f µs/turn%s, errors %d %s", ps.name, res.Pairs, res.WallSec,
		res.CPUPerTurnUs, floorNote, res.Errors, res.FirstErr)
	return res
}

// convWorker is one conversation held twice, once direct and once through a gateway (three
// times when it also runs through the floor), and the matched turns it ran. Only its own
// goroutine touches it while a phase runs.
type convWorker struct {
	turnD, turnG func(context.Context) (sample, error)
	turnF        func(context.Context) (sample, error) // nil: no floor arm
	rng          *rand.Rand
	pairs        map[string]*pairSet
	n            int // recorded pairs
	gwTurns      int // gateway turns of recorded pairs, failed pairs included
	floorTurns   int // floor turns of recorded pairs, failed pairs included
	err          error
}

func newConvWorker(seed uint64) *convWorker {
	return &convWorker{rng: rand.New(rand.NewPCG(seed, 7)), pairs: map[string]*pairSet{}}
}

// pair runs the conversation's next turn on every side, back to back in random order, so
// that all see the same machine state; record keeps the pair (a warm-up pair is run for
// its side effects only).
func (w *convWorker) pair(ctx context.Context, record bool) error {
	arms := [3]func(context.Context) (sample, error){w.turnD, w.turnG, w.turnF}
	order, n := [3]int{0, 1, 2}, 2
	if w.turnF == nil {
		// Two sides draw exactly as before the floor existed, so that a lanes phase (which
		// has no floor) runs the same order for the same seed.
		if w.rng.IntN(2) == 1 {
			order[0], order[1] = 1, 0
		}
	} else {
		n = 3
		w.rng.Shuffle(n, func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	var smp [3]sample
	for _, a := range order[:n] {
		s, err := arms[a](ctx)
		if err != nil {
			return err
		}
		smp[a] = s
		if record && a == 1 {
			w.gwTurns++
		}
		if record && a == 2 {
			w.floorTurns++
		}
	}
	if !record {
		return nil
	}
	sd := smp[0]
	ps := w.pairs[sd.class]
	if ps == nil {
		ps = &pairSet{}
		w.pairs[sd.class] = ps
	}
	ps.add(sd, smp[1], cond(n == 3, &smp[2], nil))
	w.n++
	return nil
}

// classResults merges the workers' pairs by turn class, classes in name order.
func classResults(ws []*convWorker) []ClassResult {
	all := map[string]*pairSet{}
	for _, w := range ws {
		for c, p := range w.pairs {
			if all[c] == nil {
				all[c] = &pairSet{}
			}
			all[c].merge(p)
		}
	}
	classes := make([]string, 0, len(all))
	for c := range all {
		classes = append(classes, c)
	}
	sort.Strings(classes)
	out := make([]ClassResult, 0, len(classes))
	for _, c := range classes {
		out = append(out, all[c].result(c))
	}
	return out
}
