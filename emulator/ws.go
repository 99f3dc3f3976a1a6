package emulator

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Client frame types besides response.create.
const (
	typeProcessed = "response.processed"
	typeSteer     = "response.steer"
	typeInject    = "response.inject"
	typeInterrupt = "response.interrupt"
)

// multiAgentBeta is the OpenAI-Beta value that unlocks response.inject.
const multiAgentBeta = "responses_multi_agent=v1"

// inbound is one client create waiting on its lane.
type inbound struct {
	data []byte
	p    *parsedCreate
	perr *APIError
}

// wsSession is one WebSocket connection. The reader records every frame on
// arrival and never waits on a response: creates go to their lane's worker
// (FIFO within a lane, lanes concurrent up to MaxInFlight responses), and
// control frames (acks, steer, inject, interrupt) are answered at once. One
// writer mutex serialises frames from all lanes onto the socket.
type wsSession struct {
	e     *Emulator
	c     *websocket.Conn
	conn  *Conn
	ctx   context.Context
	beta  bool
	slots chan struct{}
	wg    sync.WaitGroup
	wmu   sync.Mutex

	mu         sync.Mutex
	closing    bool
	lanes      map[string]*lane
	named      int
	flights    map[string]*flight
	ended      map[string]string
	endedOrder []string
	inFlight   int
	// generated counts responses that generated output, for the close faults.
	generated int
}

func (e *Emulator) serveWS(w http.ResponseWriter, r *http.Request) {
	opts := &websocket.AcceptOptions{InsecureSkipVerify: true}
	if e.cfg.compression {
		opts.CompressionMode = websocket.CompressionContextTakeover
	}
	seq := e.nextConnSeq()
	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		// Accept has already answered the bad handshake.
		return
	}
	c.SetReadLimit(e.cfg.maxFrame)
	conn := e.newConn(seq, transportWS, r.Header)
	s := &wsSession{
		e:       e,
		c:       c,
		conn:    conn,
		beta:    hasBeta(r.Header, multiAgentBeta),
		slots:   make(chan struct{}, MaxInFlight),
		lanes:   make(map[string]*lane),
		flights: make(map[string]*flight),
		ended:   make(map[string]string),
	}
	drop := func() { _ = c.CloseNow() }
	conn.setDrop(func() {
		e.count.drops.Add(1)
		drop()
	})
	e.track(conn, drop)
	defer e.untrack(conn)

	ctx, cancel := context.WithCancel(e.ctx)
	s.ctx = ctx
	limitDone := make(chan struct{})
	go func() {
		defer close(limitDone)
		s.watchAge(ctx)
	}()
	reason := s.read(ctx)
	cancel()
	_ = c.CloseNow()
	<-limitDone
	s.wg.Wait()
	e.endConn(conn, reason)
	e.cfg.logger.Debug("emulator connection closed", "conn", conn.seq, "reason", reason)
}

// hasBeta reports whether an OpenAI-Beta header (comma-separated, possibly
// repeated) carries feature.
func hasBeta(h http.Header, feature string) bool {
	for _, v := range h.Values("OpenAI-Beta") {
		for part := range strings.SplitSeq(v, ",") {
			if strings.TrimSpace(part) == feature {
				return true
			}
		}
	}
	return false
}

// watchAge ends the connection at its age cap with the API's error.
func (s *wsSession) watchAge(ctx context.Context) {
	if s.e.cfg.connLimit <= 0 {
		return
	}
	t := time.NewTimer(s.e.cfg.connLimit)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	_ = s.sendError(ctx, "", ErrConnectionLimit())
	s.close(CloseNormal)
}

// read records every frame on arrival, so the recording shows the wire order
// even while lanes are streaming.
func (s *wsSession) read(ctx context.Context) string {
	for {
		typ, data, err := s.c.Read(ctx)
		if err != nil {
			if st := websocket.CloseStatus(err); st != -1 {
				return "close " + st.String()
			}
			return err.Error()
		}
		s.e.count.framesIn.Add(1)
		f := s.conn.add(Received, "", "", data)
		s.dispatch(ctx, typ, data, f)
	}
}

// dispatch routes one client frame without waiting on any response.
func (s *wsSession) dispatch(ctx context.Context, typ websocket.MessageType, data []byte, f *Frame) {
	if typ != websocket.MessageText {
		_ = s.sendError(ctx, "", invalidRequest(CodeInvalidValue, "", "Binary frames are not supported; send each event as a JSON text frame."))
		return
	}
	// Every frame is decoded as a create once: creates are the large ones,
	// and the control handlers re-read their small frames themselves.
	p, perr := parseCreate(data)
	if p == nil {
		_ = s.sendError(ctx, "", perr)
		return
	}
	s.conn.setType(f, p.wire.Type, "")
	switch p.wire.Type {
	case typeProcessed:
		// An ack from the client; the API sends nothing back.
		s.e.count.acks.Add(1)
		return
	case typeSteer:
		s.steer(ctx, data, f)
		return
	case typeInject:
		s.inject(ctx, data)
		return
	case typeInterrupt:
		s.interrupt(ctx, data)
		return
	}
	if p.wire.Type != "response.create" {
		if perr == nil {
			perr = checkTop(p, transportWS)
		}
		_ = s.sendError(ctx, "", perr)
		return
	}
	if p.hasLane && !p.laneOK {
		s.refuse(ctx, data, p, p.laneEcho, ErrInvalidStreamID())
		return
	}
	if p.hasLane {
		s.conn.setType(f, p.wire.Type, p.lane)
	}
	ln, err := s.laneFor(p)
	if err != nil {
		s.refuse(ctx, data, p, &p.lane, err)
		return
	}
	if ln == nil {
		return
	}
	s.enqueue(ln, inbound{data: data, p: p, perr: perr})
}

// refuse answers a create that cannot reach a lane (bad stream_id, lane
// limit). It is recorded like any create that failed validation.
func (s *wsSession) refuse(ctx context.Context, data []byte, p *parsedCreate, lane *string, err *APIError) {
	s.e.refuse(s.conn, data, p, lane, err)
	name := ""
	frame := err.Frame()
	if lane != nil {
		name = *lane
		frame = err.LaneFrame(name)
	}
	s.e.count.errors.Add(1)
	_ = s.send(ctx, "error", name, frame)
}

// create answers one create on its lane, then any successor a steer asks
// for. It returns false when the connection is done.
func (s *wsSession) create(ln *lane, in inbound) bool {
	ctx := s.ctx
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	s.enterFlight()
	defer s.leaveFlight()
	x := s.e.begin(s.conn, transportWS, in.data, in.p, in.perr, s.scope(ln))
	for x != nil {
		r, next, ok := s.respond(ctx, ln, x)
		if !ok {
			return false
		}
		if len(next) == 0 {
			return true
		}
		// The successor keeps the slot of the response it continues.
		x = s.successor(ctx, ln, x, r, next)
	}
	return true
}

// respond streams one exchange. It returns the steers a successor must carry
// when the response was steered, and false when the connection is done.
func (s *wsSession) respond(ctx context.Context, ln *lane, x *exchange) (*response, []*steer, bool) {
	if x.fault.Stall {
		s.e.count.stalls.Add(1)
		s.e.finish(x, OutcomeStalled, nil, nil)
		<-ctx.Done()
		return nil, nil, false
	}
	if sleepCtx(ctx, x.fault.Delay) != nil {
		return nil, nil, false
	}
	if x.err != nil {
		return nil, nil, s.fail(ctx, ln, x, x.err)
	}
	var fl *flight
	hooks := &runHooks{
		open: func(r *response, t Turn, st *streamer) *flight {
			fl = s.open(ln, r, t, st)
			return fl
		},
		commit: func(r *response) {
			s.commit(ln, r)
			if len(x.steers) > 0 && !x.rec.Successor {
				s.e.updateControls(x.steers, "applied")
			}
		},
	}
	out := func(typ string, data []byte) error { return s.send(ctx, typ, ln.name, data) }
	r, apiErr, err := s.e.run(ctx, x, out, hooks)
	if apiErr != nil {
		return nil, nil, s.fail(ctx, ln, x, apiErr)
	}
	if err != nil {
		s.abandon(fl)
		s.e.finish(x, OutcomeDropped, r, nil)
		if errors.Is(err, errDropped) {
			s.e.count.drops.Add(1)
			_ = s.c.CloseNow()
		}
		return nil, nil, false
	}
	next := s.land(ctx, fl)
	if r.warmup {
		return r, next, true
	}
	s.mu.Lock()
	s.generated++
	generated := s.generated
	s.mu.Unlock()
	f := x.closing
	if x.fault.CloseAfter ||
		(f.CloseAfterCompleted && r.status == StatusCompleted) ||
		(f.CloseAfterResponses > 0 && generated >= f.CloseAfterResponses) {
		s.e.count.closes.Add(1)
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		s.close(f.CloseMode)
		return r, nil, false
	}
	return r, next, true
}

// commit makes r its lane's latest response right before the terminal event,
// so a client reacting to that event finds the cache updated. A failed
// response replaces whatever the lane held and cannot be continued. Queued
// steering belonged to the previous latest response: this create consumed it
// or left it behind.
func (s *wsSession) commit(ln *lane, r *response) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ln.fresh = false
	ln.steers = nil
	if r.status == StatusFailed {
		ln.last = nil
		return
	}
	ln.last = r
}

// fail answers a create with an error frame. A failed continuation evicts
// the lane's cached response if it referenced it, as the API does; a failed
// fork leaves the source lane alone.
func (s *wsSession) fail(ctx context.Context, ln *lane, x *exchange, err *APIError) bool {
	s.mu.Lock()
	if x.chainsTo(ln.last) {
		ln.last = nil
		ln.steers = nil
	}
	s.mu.Unlock()
	s.e.finish(x, OutcomeError, nil, err)
	return s.sendError(ctx, ln.name, err) == nil
}

// send records the frame before writing it, so a client that reacts to a
// frame always finds it in the recording. The mutex keeps the recording in
// wire order when several lanes write.
func (s *wsSession) send(ctx context.Context, typ, lane string, data []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.conn.add(Sent, typ, lane, data)
	if err := s.c.Write(ctx, websocket.MessageText, data); err != nil {
		return err
	}
	s.e.count.framesOut.Add(1)
	return nil
}

// sendError sends an error frame, on lane when it is named.
func (s *wsSession) sendError(ctx context.Context, lane string, err *APIError) error {
	s.e.count.errors.Add(1)
	frame := err.Frame()
	if lane != "" {
		frame = err.LaneFrame(lane)
	}
	return s.send(ctx, "error", lane, frame)
}

func (s *wsSession) close(mode CloseMode) {
	switch mode {
	case CloseAbrupt:
		_ = s.c.CloseNow()
	case CloseGoingAway:
		_ = s.c.Close(websocket.StatusGoingAway, "")
	default:
		_ = s.c.Close(websocket.StatusNormalClosure, "")
	}
}
