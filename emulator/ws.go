package emulator

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/coder/websocket"
)

// inbound is one client frame queued for the connection's worker.
type inbound struct {
	typ   websocket.MessageType
	data  []byte
	frame *Frame
}

// wsSession is one WebSocket connection: a reader that records frames as
// they arrive and a worker that answers them one at a time, which is what
// makes a second response.create wait for the first.
type wsSession struct {
	e     *Emulator
	c     *websocket.Conn
	conn  *Conn
	queue chan inbound

	// last is the connection-local cache: the only store:false response a
	// create on this connection may chain to. Only the worker touches it.
	last *response
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
	s := &wsSession{e: e, c: c, conn: conn, queue: make(chan inbound, defaultQueueDepth)}
	drop := func() { _ = c.CloseNow() }
	conn.setDrop(func() {
		e.count.drops.Add(1)
		drop()
	})
	e.track(conn, drop)
	defer e.untrack(conn)

	ctx, cancel := context.WithCancel(e.ctx)
	workerDone := make(chan struct{})
	go func() {
		defer close(workerDone)
		s.work(ctx)
	}()
	reason := s.read(ctx)
	cancel()
	_ = c.CloseNow()
	<-workerDone
	e.endConn(conn, reason)
	e.cfg.logger.Debug("emulator connection closed", "conn", conn.seq, "reason", reason)
}

// read records every frame on arrival, so the recording shows the wire order
// even while the worker is busy streaming.
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
		f := s.conn.add(Received, "", data)
		select {
		case s.queue <- inbound{typ: typ, data: data, frame: f}:
		case <-ctx.Done():
			return "emulator closed"
		}
	}
}

func (s *wsSession) work(ctx context.Context) {
	var limit <-chan time.Time
	if s.e.cfg.connLimit > 0 {
		t := time.NewTimer(s.e.cfg.connLimit)
		defer t.Stop()
		limit = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-limit:
			_ = s.sendError(ctx, ErrConnectionLimit())
			s.close(CloseNormal)
			return
		case in := <-s.queue:
			if !s.handle(ctx, in) {
				return
			}
		}
	}
}

// handle answers one client frame; false means the connection is done.
func (s *wsSession) handle(ctx context.Context, in inbound) bool {
	if in.typ != websocket.MessageText {
		return s.sendError(ctx, invalidRequest(CodeInvalidValue, "", "Binary frames are not supported; send each event as a JSON text frame.")) == nil
	}
	p, perr := parseCreate(in.data)
	if p == nil {
		return s.sendError(ctx, perr) == nil
	}
	s.conn.setType(in.frame, p.wire.Type)
	switch p.wire.Type {
	case "response.processed":
		// An ack from the client; the API sends nothing back.
		s.e.count.acks.Add(1)
		return true
	case "response.create":
	default:
		if perr == nil {
			perr = checkTop(p, transportWS)
		}
		return s.sendError(ctx, perr) == nil
	}

	x := s.e.begin(s.conn, transportWS, in.data, p, perr, s.last)
	if x.fault.Stall {
		s.e.count.stalls.Add(1)
		s.e.finish(x, OutcomeStalled, nil, nil)
		<-ctx.Done()
		return false
	}
	if sleepCtx(ctx, x.fault.Delay) != nil {
		return false
	}
	if x.err != nil {
		return s.fail(ctx, x, x.err)
	}
	out := func(typ string, data []byte) error { return s.send(ctx, typ, data) }
	r, apiErr, err := s.e.run(ctx, x, out, func(r *response) {
		if r.status == StatusFailed {
			// A failed response cannot be continued, and it replaced whatever
			// the connection held before.
			s.last = nil
		} else {
			s.last = r
		}
	})
	if apiErr != nil {
		return s.fail(ctx, x, apiErr)
	}
	if err != nil {
		s.e.finish(x, OutcomeDropped, r, nil)
		if errors.Is(err, errDropped) {
			s.e.count.drops.Add(1)
			_ = s.c.CloseNow()
		}
		return false
	}
	if r.warmup {
		return true
	}
	s.generated++
	f := s.e.Faults()
	if x.fault.CloseAfter ||
		(f.CloseAfterCompleted && r.status == StatusCompleted) ||
		(f.CloseAfterResponses > 0 && s.generated >= f.CloseAfterResponses) {
		s.e.count.closes.Add(1)
		s.close(f.CloseMode)
		return false
	}
	return true
}

// fail answers a create with an error frame. A failed continuation evicts the
// response it referenced from the connection cache, as the API does.
func (s *wsSession) fail(ctx context.Context, x *exchange, err *APIError) bool {
	if x.chainsTo(s.last) {
		s.last = nil
	}
	s.e.finish(x, OutcomeError, nil, err)
	return s.sendError(ctx, err) == nil
}

// send records the frame before writing it, so a client that reacts to a
// frame always finds it in the recording.
func (s *wsSession) send(ctx context.Context, typ string, data []byte) error {
	s.conn.add(Sent, typ, data)
	if err := s.c.Write(ctx, websocket.MessageText, data); err != nil {
		return err
	}
	s.e.count.framesOut.Add(1)
	return nil
}

func (s *wsSession) sendError(ctx context.Context, err *APIError) error {
	s.e.count.errors.Add(1)
	return s.send(ctx, "error", err.Frame())
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
