package loadgen

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"chainmend/responses"
)

// Lanes phases (issue 13). A client may run several conversations on one WebSocket, each
// on its own lane ("stream_id" on every create; every server frame of a named lane carries
// it back). A lanes phase holds N sessions, each one WebSocket with lanes lanes, and every
// lane runs the small conversation of mixSmall, turn by turn once direct (on a lane of a
// socket to the emulator) and once through the gateway (on the same lane of a socket to the
// gateway), back to back in random order, as the other phases do.
//
// What lanes cost is the lanes figures over the single-lane figures, so the phase measures
// two single-lane baselines in the same phase, on the same gateway, interleaved with the
// lanes in short windows (lanes, baseline, baseline, then again in rotated order), so that
// the three see the same machine over the same seconds; on two shared cores, figures taken
// a minute apart differ by more than the 10 % being looked for:
//
//   - single_same_sessions: N sockets, one conversation each on the default lane, the
//     single-lane phase of the same session count and store;
//   - single_same_conversations: N×lanes sockets on the default lane, as many
//     conversations in flight as the lanes arm, so the same offered load. This is the
//     baseline the target is read against: with 4× the conversations of the first baseline,
//     the lanes arm queues for the two cores 4× as much, which says nothing about lanes.
//
// Idle arms keep their sockets open between windows; a conversation goes on where it
// stopped.
const (
	armLanes        = "lanes"
	armSameSessions = "single_same_sessions"
	armSameConvs    = "single_same_conversations"
)

// lanesClass is the turn class the ratios are read on: 7 of 8 turns of mixSmall, and the
// class of the headline figures.
const lanesClass = classWSChained3K

// lanesSpec describes one lanes phase.
type lanesSpec struct {
	name     string
	store    string // "redis" or "local", for the report
	sessions int
	lanes    int
	window   time.Duration // length of one arm's window
	rounds   int           // windows per arm
	maxPairs int           // pairs per conversation per window (upper bound)
	gateway  *gatewayProc
	redis    *redisProc // nil for the local store
}

// LanesResult is one lanes phase: the lanes arm and its two single-lane baselines.
type LanesResult struct {
	Name      string    `json:"name"`
	Store     string    `json:"store"`
	Sessions  int       `json:"sessions"`
	Lanes     int       `json:"lanes_per_session"`
	Rounds    int       `json:"windows_per_arm"`
	WindowSec float64   `json:"window_sec"`
	WallSec   float64   `json:"wall_sec"` // set-up, warm-up and windows
	Class     string    `json:"ratio_class"`
	Arms      []LaneArm `json:"arms"`
	Errors    int       `json:"errors"`
	FirstErr  string    `json:"first_error,omitempty"`
}

// LaneArm is one arm of a lanes phase over all its windows.
type LaneArm struct {
	Arm            string        `json:"arm"`
	Sockets        int           `json:"sockets"`
	LanesPerSocket int           `json:"lanes_per_socket"`
	Pairs          int           `json:"pairs"`
	GatewayTurns   int           `json:"gateway_turns"`
	Errors         int           `json:"errors"`
	FirstErr       string        `json:"first_error,omitempty"`
	MeasuredSec    float64       `json:"measured_sec"`
	Classes        []ClassResult `json:"classes"`
	// Added is gateway minus direct percentile by percentile at the terminal event, for the
	// ratio class (AddedTotal of that class).
	Added        Dist    `json:"added_total"`
	DirectP50Us  float64 `json:"direct_total_p50_us"`
	GatewayCPUms float64 `json:"gateway_cpu_ms"`
	CPUPerTurnUs float64 `json:"gateway_cpu_per_turn_us"`
	// Redis round trips per gateway turn (redis store only): writes are the commits.
	RedisWriteRTPerTurn float64 `json:"redis_write_round_trips_per_turn,omitempty"`
	RedisReadRTPerTurn  float64 `json:"redis_read_round_trips_per_turn,omitempty"`
	// Vs is the lanes arm's figures over this arm's (set on the baselines): added p50, p90,
	// p99 and CPU per turn; 0 where this arm's figure is not positive.
	Vs *LaneRatio `json:"lanes_over_this,omitempty"`
}

// LaneRatio is lanes figures divided by a baseline's; the target is ≤ 1.10.
type LaneRatio struct {
	AddedP50 float64 `json:"added_p50"`
	AddedP90 float64 `json:"added_p90"`
	AddedP99 float64 `json:"added_p99"`
	CPU      float64 `json:"cpu_per_turn"`
}

// ratio is a/b, 0 when b is not positive (JSON has no NaN; the tables print "–").
func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

func laneRatio(lanes, base *LaneArm) *LaneRatio {
	return &LaneRatio{
		AddedP50: ratio(lanes.Added.P50, base.Added.P50),
		AddedP90: ratio(lanes.Added.P90, base.Added.P90),
		AddedP99: ratio(lanes.Added.P99, base.Added.P99),
		CPU:      ratio(lanes.CPUPerTurnUs, base.CPUPerTurnUs),
	}
}

// laneArm is an arm while it runs.
type laneArm struct {
	res     LaneArm
	workers []*convWorker
	closers []func()
	cpu     time.Duration
	reads   int64
	writes  int64
}

// runLanes runs one lanes phase.
func (e *env) runLanes(ctx context.Context, ls lanesSpec) LanesResult {
	t0 := time.Now()
	res := LanesResult{Name: ls.name, Store: ls.store, Sessions: ls.sessions, Lanes: ls.lanes, Rounds: ls.rounds,
		WindowSec: ls.window.Seconds(), Class: lanesClass}
	// Everything is bounded: a minute for the dials, and per window (the warm-up counts as
	// one per arm) its length plus a pair that runs to both of its 30 s turn bounds. A window
	// stops its loops by flag, not by cancelling, so that no turn is cut in the middle (its
	// late frames would land in the lane's next turn).
	ctx, cancel := context.WithTimeout(ctx, time.Minute+time.Duration(3*(ls.rounds+1))*(ls.window+time.Minute))
	defer cancel()
	conns := ls.sessions * ls.lanes
	cli := newHTTPClient(2*(2*ls.sessions+conns) + 4)
	defer cli.CloseIdleConnections()
	directT := &target{name: "direct", wsURL: e.direct.wsURL, http: cli}
	gwT := e.gatewayTarget(ls.gateway, cli)

	arms := []*laneArm{
		{res: LaneArm{Arm: armLanes, Sockets: ls.sessions, LanesPerSocket: ls.lanes}},
		{res: LaneArm{Arm: armSameSessions, Sockets: ls.sessions, LanesPerSocket: 1}},
		{res: LaneArm{Arm: armSameConvs, Sockets: conns, LanesPerSocket: 1}},
	}
	defer func() {
		for _, a := range arms {
			for _, c := range a.closers {
				c()
			}
		}
	}()
	for _, a := range arms {
		if err := e.openArm(ctx, ls, a, directT, gwT); err != nil {
			a.fail(err)
		}
	}
	// Warm-up, unrecorded: each conversation's first turn (a full create) also makes the
	// gateway dial its upstream connection; that belongs to no arm's steady state.
	for _, a := range arms {
		a.run(ctx, false, 1, nil)
	}
	for r := 0; r < ls.rounds; r++ {
		for i := range arms {
			a := arms[(i+r)%len(arms)]
			var stop atomic.Bool
			meter := newCPUMeter(ls.gateway)
			var rbefore map[string]int64
			if ls.redis != nil {
				meter.withRoundTrips()
				rbefore = ls.redis.commandStats()
			}
			w0 := time.Now()
			timer := time.AfterFunc(ls.window, func() { stop.Store(true) })
			a.run(ctx, true, ls.maxPairs, &stop)
			timer.Stop()
			a.res.MeasuredSec += time.Since(w0).Seconds()
			cpu, _ := meter.stop()
			a.cpu += cpu
			if ls.redis != nil {
				sg, pl := meter.roundTrips()
				d := diffCommandStats(rbefore, ls.redis.commandStats(), sg, pl)
				a.reads += d.ReadRoundTrips
				a.writes += d.WriteRoundTrips
			}
		}
	}
	for _, a := range arms {
		a.finish(ls.redis != nil)
		res.Arms = append(res.Arms, a.res)
		res.Errors += a.res.Errors
		if res.FirstErr == "" && a.res.FirstErr != "" {
			res.FirstErr = a.res.Arm + ": " + a.res.FirstErr
		}
	}
	for i := 1; i < len(res.Arms); i++ {
		res.Arms[i].Vs = laneRatio(&res.Arms[0], &res.Arms[i])
	}
	res.WallSec = time.Since(t0).Seconds()
	l, b := res.Arms[0], res.Arms[2]
	e.logf("phase %-22s %5d lane pairs, added p50 %.0f µs (%.2f× %s), CPU %.0f µs/turn (%.2f×) in %4.1fs, errors %d %s",
		ls.name, l.Pairs, l.Added.P50, b.Vs.AddedP50, b.Arm, l.CPUPerTurnUs, b.Vs.CPU, res.WallSec, res.Errors, res.FirstErr)
	return res
}

// openArm dials the arm's sockets, direct and through the gateway, and makes one worker per
// conversation.
func (e *env) openArm(ctx context.Context, ls lanesSpec, a *laneArm, directT, gwT *target) error {
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for s := 0; s < a.res.Sockets; s++ {
		seed := e.seed.Add(1)
		sid := fmt.Sprintf("lg-%s-%s-%d-%d", ls.name, a.res.Arm, s, seed)
		hdr := clientHeaders(sid, fmt.Sprintf("t%d", s%4))
		if a.res.LanesPerSocket == 1 {
			p := newPayloads(sid, seed)
			d, err := dialWS(dctx, directT, hdr, p)
			if err != nil {
				return err
			}
			a.closers = append(a.closers, d.close)
			g, err := dialWS(dctx, gwT, hdr, p)
			if err != nil {
				return err
			}
			a.closers = append(a.closers, g.close)
			w := newConvWorker(seed)
			w.turnD, w.turnG = d.turn, g.turn
			a.workers = append(a.workers, w)
			continue
		}
		names := make([]string, a.res.LanesPerSocket)
		for i := range names {
			names[i] = "lane" + strconv.Itoa(i)
		}
		d, err := dialLanes(dctx, directT, hdr, names)
		if err != nil {
			return err
		}
		a.closers = append(a.closers, d.close)
		g, err := dialLanes(dctx, gwT, hdr, names)
		if err != nil {
			return err
		}
		a.closers = append(a.closers, g.close)
		for _, name := range names {
			// Each lane is its own conversation (its own items, prompt_cache_key and
			// client_metadata); the session headers are the socket's.
			lseed := e.seed.Add(1)
			p := newPayloads(sid+"."+name, lseed)
			w := newConvWorker(lseed)
			w.turnD, w.turnG = d.lane(name, p).turn, g.lane(name, p).turn
			a.workers = append(a.workers, w)
		}
	}
	return nil
}

// fail records an error of the arm as a whole (a dial).
func (a *laneArm) fail(err error) {
	a.res.Errors++
	if a.res.FirstErr == "" {
		a.res.FirstErr = err.Error()
	}
}

// run runs every healthy conversation of the arm at once, each for up to maxPairs pairs or
// until stop is set, and waits for all of them. A conversation that fails stays out of
// later windows.
func (a *laneArm) run(ctx context.Context, record bool, maxPairs int, stop *atomic.Bool) {
	var wg sync.WaitGroup
	for _, w := range a.workers {
		if w.err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < maxPairs && ctx.Err() == nil && (stop == nil || !stop.Load()); i++ {
				if err := w.pair(ctx, record); err != nil {
					w.err = err
					return
				}
			}
		}()
	}
	wg.Wait()
}

// finish fills the arm's result from its workers and meters.
func (a *laneArm) finish(redis bool) {
	r := &a.res
	for _, w := range a.workers {
		r.Pairs += w.n
		r.GatewayTurns += w.gwTurns
		if w.err != nil {
			a.fail(w.err)
		}
	}
	r.Classes = classResults(a.workers)
	for _, c := range r.Classes {
		if c.Class == lanesClass {
			r.Added, r.DirectP50Us = c.AddedTotal, c.DirectTotal.P50
		}
	}
	r.GatewayCPUms = float64(a.cpu.Microseconds()) / 1e3
	if r.GatewayTurns > 0 {
		r.CPUPerTurnUs = float64(a.cpu.Microseconds()) / float64(r.GatewayTurns)
		if redis {
			r.RedisWriteRTPerTurn = float64(a.writes) / float64(r.GatewayTurns)
			r.RedisReadRTPerTurn = float64(a.reads) / float64(r.GatewayTurns)
		}
	}
}

// laneConn is one client WebSocket carrying several named lanes. One reader takes every
// frame off the socket, stamps its arrival and hands it to its lane by the frame's
// top-level stream_id; lanes write their creates concurrently (the library serialises
// writes). A frame without a stream_id, or for a lane the socket does not run, fails the
// whole socket: on a lanes socket every server frame must name its lane.
type laneConn struct {
	tg     *target
	conn   *websocket.Conn
	lanes  map[string]chan laneEvent // fixed before the reader starts
	cancel context.CancelFunc
	done   chan struct{} // closed when the reader stops
	err    error         // why it stopped; read after done
}

// laneEvent is one server frame and when the reader took it off the socket.
type laneEvent struct {
	at   time.Time
	data []byte
}

// laneQueue is how many frames a lane holds; a lane's turn is read to its terminal event,
// so the reader only waits on a lane whose turn is still running.
const laneQueue = 64

func dialLanes(ctx context.Context, tg *target, hdr http.Header, names []string) (*laneConn, error) {
	ws, err := dialWS(ctx, tg, hdr, nil)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	c := &laneConn{tg: tg, conn: ws.conn, lanes: make(map[string]chan laneEvent, len(names)), cancel: cancel,
		done: make(chan struct{})}
	for _, n := range names {
		c.lanes[n] = make(chan laneEvent, laneQueue)
	}
	go c.read(rctx)
	return c, nil
}

func (c *laneConn) read(ctx context.Context) {
	defer close(c.done)
	for {
		_, data, err := c.conn.Read(ctx)
		if err != nil {
			c.err = fmt.Errorf("%s read: %w", c.tg.name, err)
			return
		}
		at := time.Now()
		lane := responses.EventLane(data)
		ch := c.lanes[lane]
		if ch == nil {
			what := "a frame without stream_id"
			if lane != "" {
				what = "a frame for lane " + strconv.Quote(lane) + ", which this socket does not run"
			}
			c.err = fmt.Errorf("%s: %s: %.300s", c.tg.name, what, data)
			_ = c.conn.CloseNow()
			return
		}
		select {
		case ch <- laneEvent{at: at, data: data}:
		case <-ctx.Done():
			c.err = fmt.Errorf("%s: closed", c.tg.name)
			return
		}
	}
}

func (c *laneConn) close() {
	_ = c.conn.Close(websocket.StatusNormalClosure, "")
	c.cancel()
	<-c.done
}

// lane returns the client of one lane of the socket, running the conversation p.
func (c *laneConn) lane(name string, p *payloads) *laneSession {
	return &laneSession{c: c, name: name, ch: c.lanes[name], p: p, full: onLane(p.small, name)}
}

// laneSession is one conversation (mixSmall) on one lane of a laneConn.
type laneSession struct {
	c    *laneConn
	name string
	ch   chan laneEvent
	p    *payloads
	full []byte // the full create, on this lane
	step int
	prev string
	call string
	buf  []byte
}

func (s *laneSession) next() ([]byte, string) {
	if s.step%cycleLen == 0 {
		return s.full, classWSFull3K
	}
	s.buf = s.p.chained(s.buf[:0], s.name, s.prev, s.call, s.step)
	return s.buf, classWSChained3K
}

// turn sends the lane's next create and reads the lane's frames to the terminal event.
// Times are taken by the socket's reader when a frame comes off the socket, not when the
// lane's goroutine gets it.
func (s *laneSession) turn(ctx context.Context) (sample, error) {
	payload, class := s.next()
	smp := sample{class: class}
	select {
	case f := <-s.ch:
		return smp, fmt.Errorf("%s lane %s: a frame between turns: %.300s", s.c.tg.name, s.name, f.data)
	default:
	}
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := s.c.conn.Write(tctx, websocket.MessageText, payload); err != nil {
		return smp, fmt.Errorf("%s lane %s write: %w", s.c.tg.name, s.name, err)
	}
	for {
		var f laneEvent
		select {
		case f = <-s.ch:
		case <-s.c.done:
			return smp, s.c.err
		case <-tctx.Done():
			return smp, fmt.Errorf("%s lane %s: %w", s.c.tg.name, s.name, tctx.Err())
		}
		now := f.at.Sub(t0)
		if smp.events == 0 {
			smp.ttfe = now
		}
		smp.events++
		kind := responses.EventKind(f.data)
		if kind == responses.EventError {
			return smp, fmt.Errorf("%s lane %s: error frame: %.300s", s.c.tg.name, s.name, f.data)
		}
		if !responses.IsTerminal(kind) {
			continue
		}
		smp.total = now
		ev, err := responses.ParseEvent(f.data)
		if err != nil {
			return smp, fmt.Errorf("%s lane %s: terminal event: %w", s.c.tg.name, s.name, err)
		}
		if ev.Type != responses.EventCompleted {
			return smp, fmt.Errorf("%s lane %s: terminal %s", s.c.tg.name, s.name, ev.Type)
		}
		s.step++
		s.prev, s.call = ev.ResponseID, ""
		for i := range ev.Output {
			if ev.Output[i].IsCall() {
				s.call = ev.Output[i].CallID
			}
		}
		return smp, nil
	}
}
