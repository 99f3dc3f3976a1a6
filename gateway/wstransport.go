package gateway

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"chainmend/engine"
	"chainmend/responses"
)

// laneBuffer is how many upstream frames a lane holds before the upstream reader waits for
// it.
const laneBuffer = 64

// maxLanes bounds the lanes a connection keeps: twice the upstream's 32 named lanes, so every
// lane the upstream would serve (or refuse with its own error) is kept; past it, lanes that
// never got a response are forgotten first.
const maxLanes = 64

// wsLane is one lane (stream_id) of a client WebSocket connection: its queue of creates, the
// frames the upstream sent for it, its turn state, and the worker that runs its turns in
// order. It is the turn driver's transport for the lane's turns.
type wsLane struct {
	ss      *session
	name    string
	st      laneState
	creates chan queuedCreate
	frames  chan laneFrame
	ex      wsExchange
	// staleOn is set when a turn of this lane gave up waiting for its response while other
	// lanes kept the shared connection: the lane's frames from that connection are dropped
	// until the response ends.
	staleOn *upstreamConn
	// last is the id of the lane's latest response, for a successor the server starts.
	last string
	// quit stops the worker of a forgotten lane.
	quit chan struct{}
	// held counts the lane's creates not finished yet, the one in flight included (ss.mu).
	held int
}

type queuedCreate struct {
	req  *responses.Request
	size int
	// waits is set when the create arrived behind another of its lane's creates: only those
	// count against the connection's queue limits.
	waits bool
}

// laneFrame is one upstream frame and the connection it came on.
type laneFrame struct {
	up   *upstreamConn
	data []byte
}

var _ transport = (*wsLane)(nil)

// laneLocked returns the lane, creating it and starting its worker on first use. ss.mu held.
func (ss *session) laneLocked(name string) *wsLane {
	if l := ss.lanes[name]; l != nil {
		return l
	}
	if len(ss.lanes) >= maxLanes {
		ss.forgetIdleLaneLocked()
	}
	l := &wsLane{
		ss:      ss,
		name:    name,
		st:      laneState{name: name},
		creates: make(chan queuedCreate, ss.srv.cfg.MaxQueuedFrames+1),
		frames:  make(chan laneFrame, laneBuffer),
		quit:    make(chan struct{}),
	}
	ss.lanes[name] = l
	ss.workers.Add(1)
	go l.run()
	return l
}

// forgetIdleLaneLocked drops one lane that has nothing queued and never had a response: the
// upstream refused it (an invalid stream_id, the 33rd lane), so it holds no state.
func (ss *session) forgetIdleLaneLocked() {
	for name, l := range ss.lanes {
		if l.last == "" && l.held == 0 && !l.st.knowsAnchor() {
			delete(ss.lanes, name)
			close(l.quit)
			return
		}
	}
}

// enqueue puts a create on its lane's queue. The queue is bounded per connection by count and
// bytes, well above what the upstream takes (16 in flight, 32 lanes); past that the create is
// refused on its lane.
func (ss *session) enqueue(lane string, req *responses.Request, size int) {
	cfg := &ss.srv.cfg
	if ss.draining() {
		ss.writeFrameError(responses.ErrorBody{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "shutting_down",
			Message: "the gateway is shutting down; reconnect", Lane: lane})
		return
	}
	ss.mu.Lock()
	l := ss.laneLocked(lane)
	waits := l.held > 0
	if waits && (ss.queued >= cfg.MaxQueuedFrames || ss.queuedBytes+size > int(cfg.MaxQueuedBytes) || !ss.srv.queued.take(int64(size))) {
		ss.mu.Unlock()
		ss.srv.metrics.limits.WithLabelValues("queued_frames").Inc()
		ss.writeFrameError(responses.ErrorBody{Status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: "too_many_queued_frames",
			Message: fmt.Sprintf("more than %d creates or %d bytes are waiting for their lanes; this one was dropped", cfg.MaxQueuedFrames, cfg.MaxQueuedBytes),
			Lane:    lane})
		return
	}
	l.held++
	if waits {
		ss.queued++
		ss.queuedBytes += size
	}
	ss.mu.Unlock()
	// The channel holds MaxQueuedFrames+1 (the waiting creates and one that does not wait):
	// this never blocks.
	l.creates <- queuedCreate{req: req, size: size, waits: waits}
}

// run is the lane's worker: its creates one at a time, and between them the frames the
// upstream sends on its own (replies to control frames, a successor the server started).
func (l *wsLane) run() {
	ss := l.ss
	defer ss.workers.Done()
	for {
		select {
		case <-ss.ctx.Done():
			return
		case <-l.quit:
			return
		case q := <-l.creates:
			ss.mu.Lock()
			if q.waits {
				ss.queued--
				ss.queuedBytes -= q.size
				ss.srv.queued.give(int64(q.size))
			}
			ss.busy++
			ss.mu.Unlock()
			if ss.ctx.Err() == nil {
				ss.srv.drive(ss.ctx, l, &l.st, q.req, ss.connID, ss.hdr)
			}
			ss.mu.Lock()
			ss.busy--
			l.held--
			ss.mu.Unlock()
		case f := <-l.frames:
			l.unsolicited(f)
		}
	}
}

// unsolicited handles a frame that arrived while the lane had no turn in flight.
func (l *wsLane) unsolicited(f laneFrame) {
	ss := l.ss
	kind := responses.EventKind(f.data)
	if l.staleOn != nil && f.up == l.staleOn {
		// The rest of a response its turn gave up on: the client was already told.
		if responses.IsTerminal(kind) || kind == responses.EventError {
			l.staleOn = nil
		}
		return
	}
	if kind == responses.EventCreated && l.last != "" {
		// A response the server started by itself: a steer's successor. It is bookkept like
		// any other.
		ss.mu.Lock()
		ss.busy++
		ss.mu.Unlock()
		ss.srv.follow(ss.ctx, l, &l.st, l.successorRequest(), &upstreamEvent{data: f.data, raw: f.data, kind: kind}, f.up, ss.connID, ss.hdr)
		ss.mu.Lock()
		ss.busy--
		ss.mu.Unlock()
		return
	}
	// Replies to control frames (steer, inject), and anything else: to the client as is.
	_ = ss.write(f.data)
}

// successorRequest is the create the server acted on when it started a successor: the steer's
// input, chained to the lane's latest response.
func (l *wsLane) successorRequest() *responses.Request {
	ss := l.ss
	ss.mu.Lock()
	var input []responses.Item
	if c := ss.facts[l.last]; c != nil {
		input = c.steerInput
	}
	ss.mu.Unlock()
	return responses.NewCreate(l.last, input)
}

func (l *wsLane) kind() string { return engine.TransportWebSocket }

// headers is nil: a lane's requests are frames on a socket whose headers went with its
// handshake.
func (l *wsLane) headers() http.Header { return nil }

// cached is what the open upstream connection holds for the lane; a connection that is
// closed or due for rotation holds nothing, since the next send replaces it.
func (l *wsLane) cached(st *laneState) string {
	ss := l.ss
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.up == nil || !ss.up.alive(ss.srv.cfg.UpstreamMaxAge) {
		return ""
	}
	return st.cachedBy(ss.up)
}

func (l *wsLane) hold(st *laneState, responseID string) {
	ss := l.ss
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if up := l.ex.up; up != nil {
		st.setCached(responseID, up)
	}
}

// forkSource finds the lane of this connection whose latest response prev is: a create on a
// new lane chained to it is a fork of that lane.
func (l *wsLane) forkSource(prev string) *laneState {
	ss := l.ss
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for name, o := range ss.lanes {
		if name == l.name {
			continue
		}
		if src := o.st.forkView(prev); src != nil {
			return src
		}
	}
	return nil
}

// annotate adds what control frames said about a response: the outputs injected into it,
// whether it was interrupted.
func (l *wsLane) annotate(resp *engine.Response) {
	ss := l.ss
	ss.mu.Lock()
	defer ss.mu.Unlock()
	l.last = resp.ID
	c := ss.facts[resp.ID]
	if c == nil {
		return
	}
	resp.Injected = append(resp.Injected, c.injected...)
	resp.Interrupted, resp.InterruptMode = c.interrupted, c.interruptMode
	c.injected, c.interrupted = nil, false
}

// upstreamLocked returns an open upstream connection, replacing a closed or old one. ss.mu
// held: lanes wait for the one dial.
func (ss *session) upstreamLocked() (*upstreamConn, error) {
	cfg := &ss.srv.cfg
	if ss.up != nil && ss.up.alive(cfg.UpstreamMaxAge) {
		return ss.up, nil
	}
	if ss.up != nil {
		if time.Since(ss.up.born) >= cfg.UpstreamMaxAge {
			ss.srv.metrics.upstream.WithLabelValues("rotated").Inc()
		} else {
			ss.srv.metrics.upstream.WithLabelValues("lost").Inc()
		}
		ss.up.close()
		ss.up = nil
	}
	up, err := dialUpstream(ss.ctx, ss.srv.wsURL, ss.hdr, ss.srv.client, cfg.DialTimeout, ss.route)
	if err != nil {
		ss.srv.metrics.upstream.WithLabelValues("dial_failed").Inc()
		return nil, err
	}
	ss.srv.metrics.upstream.WithLabelValues("dialed").Inc()
	ss.up = up
	return up, nil
}

// route hands an upstream frame to its lane. A frame for a lane this connection never opened
// goes to the client as is.
func (ss *session) route(up *upstreamConn, data []byte) {
	name := responses.EventLane(data)
	ss.mu.Lock()
	l, accepted := ss.lanes[name], ss.client != nil
	ss.mu.Unlock()
	if l == nil {
		if accepted {
			_ = ss.write(data)
		}
		return
	}
	select {
	case l.frames <- laneFrame{up: up, data: data}:
	case <-up.quit:
	case <-l.quit:
	case <-ss.ctx.Done():
	}
}

// send puts a turn's payload on the shared upstream connection. A fresh connection (a retry)
// replaces it only when no other lane has a response in flight on it; otherwise the retry
// shares it: the default rules retry with full creates or stored chains, which need nothing
// the connection holds.
func (l *wsLane) send(ctx context.Context, payload []byte, fresh bool) (exchange, error) {
	ss := l.ss
	ss.mu.Lock()
	if fresh && ss.busy <= 1 && ss.up != nil {
		ss.up.close()
		ss.up = nil
	}
	up, err := ss.upstreamLocked()
	ss.mu.Unlock()
	if err != nil {
		return nil, err
	}
	l.staleOn = nil
	if err := up.send(ctx, payload, ss.srv.cfg.WriteTimeout); err != nil {
		return nil, err
	}
	l.ex.lane, l.ex.up = l, up
	return &l.ex, nil
}

// watch is the exchange of a response the upstream started on its own on up.
func (l *wsLane) watch(up *upstreamConn) exchange {
	l.ex.lane, l.ex.up = l, up
	return &l.ex
}

// dropUpstream gives up on the lane's response. The connection is closed when it is broken
// or no other lane has a response on it; otherwise the lane ignores the rest of its response.
func (l *wsLane) dropUpstream() {
	ss := l.ss
	ss.mu.Lock()
	defer ss.mu.Unlock()
	up := l.ex.up
	if up == nil || up != ss.up {
		return
	}
	if ss.busy > 1 && up.alive(ss.srv.cfg.UpstreamMaxAge) {
		l.staleOn = up
		return
	}
	up.close()
	ss.up = nil
}

// relay writes one event. Events already queued behind it go out with it in one socket write
// (corkConn); a failed write fails every later one, so the terminal write reports the client
// gone too.
func (l *wsLane) relay(ev *upstreamEvent, more bool) error {
	ss := l.ss
	if more {
		ss.out.cork()
	}
	if err := ss.write(ev.raw); err != nil {
		return err
	}
	if !more {
		return l.flush()
	}
	return nil
}

func (l *wsLane) flush() error {
	if err := l.ss.out.uncork(); err != nil {
		l.ss.cancel() // as in write: a client that cannot take frames ends its session
		return errClientGone
	}
	return nil
}

func (l *wsLane) writeError(e responses.ErrorBody, raw *upstreamEvent) error {
	if raw != nil {
		return l.ss.write(withStatus(raw.data, e.Status))
	}
	e.Lane = l.name
	return l.ss.write(responses.ErrorFrame(e))
}

// wsExchange is a turn in flight on a lane of the upstream WebSocket. Its event is reused from
// one call of next to the next: the driver is done with an event before it asks for another.
type wsExchange struct {
	lane  *wsLane
	up    *upstreamConn
	timer *time.Timer
	ev    upstreamEvent
}

func (x *wsExchange) next(ctx context.Context, wait time.Duration) (*upstreamEvent, error) {
	if x.timer == nil {
		x.timer = time.NewTimer(wait)
	} else {
		x.timer.Reset(wait)
	}
	defer x.timer.Stop()
	for {
		var f laneFrame
		select {
		case <-ctx.Done():
			return nil, errClientGone
		case <-x.timer.C:
			return nil, errUpstreamTimeout
		case f = <-x.lane.frames:
		case <-x.up.done:
			// Frames read before the close are already queued: relay them first.
			select {
			case f = <-x.lane.frames:
			default:
				return nil, x.up.failure()
			}
		}
		if f.up != x.up {
			continue // the rest of an older connection's traffic for this lane
		}
		x.ev = upstreamEvent{data: f.data, raw: f.data, kind: responses.EventKind(f.data)}
		return &x.ev, nil
	}
}

func (x *wsExchange) more() bool { return len(x.lane.frames) > 0 }

func (x *wsExchange) close() {}

// controlFacts are what control frames said about one response, kept for its bookkeeping.
type controlFacts struct {
	// steerInput is the input of the steer that redirected the response: its successor's.
	steerInput []responses.Item
	// injected are the call ids that response.inject answered.
	injected      []string
	interrupted   bool
	interruptMode string
}

// control relays a control frame to the upstream at once (the response it is about may be in
// flight on any lane) and keeps what it says for the bookkeeping. With no upstream connection
// one is opened, and the upstream answers for itself.
func (ss *session) control(typ string, req *responses.Request, frame []byte, lane string) {
	ss.mu.Lock()
	facts := func(id string) *controlFacts {
		if len(ss.facts) >= maxControlFacts {
			clear(ss.facts)
		}
		c := ss.facts[id]
		if c == nil {
			c = &controlFacts{}
			ss.facts[id] = c
		}
		return c
	}
	switch typ {
	case "response.steer":
		if id := req.PreviousResponseID(); id != "" {
			facts(id).steerInput = cloneItems(req.Items())
		}
	case "response.inject":
		if id := req.String("response_id"); id != "" {
			c := facts(id)
			c.injected = append(c.injected, req.Facts().Outputs...)
		}
	case "response.interrupt":
		if id := req.String("response_id"); id != "" {
			c := facts(id)
			c.interrupted, c.interruptMode = true, req.String("mode")
		}
	}
	var up *upstreamConn
	if typ == "response.processed" {
		// An acknowledgement: only the connection that produced the response wants it.
		if ss.up != nil && ss.up.alive(ss.srv.cfg.UpstreamMaxAge) {
			up = ss.up
		}
	} else {
		var err error
		if up, err = ss.upstreamLocked(); err != nil {
			ss.mu.Unlock()
			ss.writeFrameError(responses.ErrorBody{Status: http.StatusBadGateway, Type: "server_error", Code: "upstream_connection_lost",
				Message: "the upstream connection failed: " + err.Error(), Lane: lane})
			return
		}
	}
	ss.mu.Unlock()
	if up != nil && up.send(ss.ctx, frame, ss.srv.cfg.WriteTimeout) == nil {
		ss.srv.metrics.toUpstream.Inc()
	}
}

// cloneItems copies items out of a frame's buffer into a slice of their own.
func cloneItems(in []responses.Item) []responses.Item {
	out := make([]responses.Item, len(in))
	copy(out, in)
	return out
}
