package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"chainmend/engine"
	"chainmend/responses"
	"chainmend/statestore"
)

// clientFrame is one frame read from the client.
type clientFrame struct {
	typ  websocket.MessageType
	data []byte
}

// session is one client WebSocket connection: its upstream connection, its memory, and
// its turn loop. Turns run one at a time; a create that arrives meanwhile waits.
type session struct {
	srv    *Server
	client *websocket.Conn
	out    *corkConn // the client's socket under client (see corkConn)
	hdr    http.Header
	connID string
	mem    memory
	up     *upstreamConn
	ctx    context.Context
	cancel context.CancelFunc
	in     chan clientFrame
	rdErr  error
	// drainCh is closed by Server.Shutdown: the session ends after its turn in flight.
	drainCh   chan struct{}
	drainOnce sync.Once
}

func (ss *session) drain() { ss.drainOnce.Do(func() { close(ss.drainCh) }) }

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	tenant := statestore.TenantOf(r.Header.Get("Authorization"))
	if limit, ok := s.admit(tenant); !ok {
		s.metrics.limits.WithLabelValues(limit).Inc()
		status, msg := http.StatusTooManyRequests, "too many open connections"
		switch limit {
		case "tenant_connections":
			msg = fmt.Sprintf("too many open connections for this credential (limit %d)", s.cfg.MaxTenantConnections)
		case "shutting_down":
			status, msg = http.StatusServiceUnavailable, "the gateway is shutting down; reconnect"
		}
		httpError(w, responses.ErrorBody{Status: status, Type: "rate_limit_error", Code: limit, Message: msg})
		return
	}
	defer s.release(tenant)
	hj := &corkHijacker{ResponseWriter: w, timeout: s.cfg.WriteTimeout}
	c, err := websocket.Accept(hj, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return
	}
	c.SetReadLimit(s.cfg.MaxFrameBytes)
	ctx, cancel := context.WithCancel(context.Background())
	// Frame writes carry no context (see write): the session's end aborts them instead.
	defer context.AfterFunc(ctx, hj.conn.abort)()
	ss := &session{
		srv:     s,
		client:  c,
		out:     hj.conn,
		hdr:     forwardHeaders(r.Header),
		connID:  s.instance + "-" + strconv.FormatUint(s.connSeq.Add(1), 36),
		ctx:     ctx,
		cancel:  cancel,
		in:      make(chan clientFrame, s.cfg.MaxQueuedFrames),
		drainCh: make(chan struct{}),
	}
	if !s.track(ss) {
		_ = c.Close(websocket.StatusGoingAway, "shutting down")
		cancel()
		return
	}
	defer s.untrack(ss)
	ss.run()
}

func (ss *session) shutdown() {
	_ = ss.client.Close(websocket.StatusGoingAway, "gateway shutting down")
	ss.cancel()
}

func (ss *session) run() {
	defer func() {
		ss.cancel()
		if ss.up != nil {
			ss.up.close()
			ss.srv.metrics.upstream.WithLabelValues("closed").Inc()
		}
		_ = ss.client.CloseNow()
	}()
	go ss.readLoop()
loop:
	for {
		select {
		case <-ss.drainCh:
			// Between turns: nothing is in flight, so the client can go now.
			_ = ss.client.Close(websocket.StatusGoingAway, "gateway shutting down; reconnect")
			return
		case f, ok := <-ss.in:
			if !ok {
				break loop
			}
			if ss.ctx.Err() != nil {
				continue // the client is gone: frames still queued cannot be answered
			}
			if f.typ != websocket.MessageText {
				ss.refuse("unsupported_frame", "binary frames are not supported; send response.create as a JSON text frame")
				continue
			}
			ss.dispatch(f.data)
		}
	}
	var ce websocket.CloseError
	if errors.As(ss.rdErr, &ce) || errors.Is(ss.rdErr, context.Canceled) {
		return
	}
	if ss.rdErr != nil && strings.Contains(ss.rdErr.Error(), "read limited") {
		ss.srv.metrics.badFrames.WithLabelValues("frame_too_large").Inc()
		_ = ss.client.Close(websocket.StatusMessageTooBig, fmt.Sprintf("frame over %d bytes", ss.srv.cfg.MaxFrameBytes))
	}
}

func (ss *session) readLoop() {
	defer close(ss.in)
	hint := 0
	for {
		typ, data, err := ss.readFrame(&hint)
		if err != nil {
			ss.rdErr = err
			// The client is gone (closed, reset, or cut off for a bad frame): a turn in
			// flight stops waiting for the upstream, which is closed with it.
			ss.cancel()
			return
		}
		select {
		case ss.in <- clientFrame{typ, data}:
		case <-ss.ctx.Done():
			return
		default:
			// The client keeps sending while its turns wait: refuse this frame rather than
			// buffer without bound (Write is safe alongside the turn loop's writes).
			ss.srv.metrics.limits.WithLabelValues("queued_frames").Inc()
			ss.writeError(responses.ErrorBody{Status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: "too_many_queued_frames",
				Message: fmt.Sprintf("more than %d frames are waiting for the turn in flight; this one was dropped", ss.srv.cfg.MaxQueuedFrames)})
		}
	}
}

// readFrame reads one client frame. websocket.Conn.Read grows its buffer from 512 bytes by
// reallocation, which for a 175 KB create is some twenty allocations and as many copies;
// here the buffer starts a little over the size of the previous frame (the end of a frame is
// seen only by a read past it) and doubles.
func (ss *session) readFrame(hint *int) (websocket.MessageType, []byte, error) {
	typ, r, err := ss.client.Reader(ss.ctx)
	if err != nil {
		return 0, nil, err
	}
	buf := make([]byte, 0, max(*hint+512, 4096))
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			*hint = len(buf)
			return typ, buf, nil
		}
		if err != nil {
			return 0, nil, err
		}
	}
}

// refuse answers a bad frame with an error frame; the connection stays open.
func (ss *session) refuse(code, msg string) {
	ss.srv.metrics.badFrames.WithLabelValues(code).Inc()
	ss.writeError(responses.ErrorBody{Status: 400, Type: "invalid_request_error", Code: code, Message: msg})
}

func (ss *session) writeError(e responses.ErrorBody) {
	_ = ss.write(responses.ErrorFrame(e))
}

// write sends one frame to the client. It needs no context of its own: the socket write is
// bounded by Config.WriteTimeout through the connection's write deadline, and the session's
// end aborts it (corkConn). A context with a timeout per frame cost a timer and a context
// callback for every relayed event.
func (ss *session) write(frame []byte) error {
	if err := ss.client.Write(context.Background(), websocket.MessageText, frame); err != nil {
		// A client that cannot take a frame (it stopped reading, or it is gone) ends its
		// session: its queued frames are dropped and its connection slot is freed.
		ss.cancel()
		return fmt.Errorf("%w: %w", errClientGone, err)
	}
	ss.srv.metrics.toClient.Inc()
	return nil
}

func (ss *session) dispatch(frame []byte) {
	req, err := responses.Parse(frame)
	if err != nil {
		if errors.Is(err, responses.ErrNotObject) {
			ss.refuse("invalid_frame", "a frame must be a JSON object with a type")
			return
		}
		ss.refuse("invalid_json", "malformed JSON frame: "+err.Error())
		return
	}
	switch typ := req.Type(); typ {
	case "response.create":
		ss.turn(req)
	case "response.processed":
		// An acknowledgement: no reply; the upstream connection that produced the
		// response gets it when it is still open.
		if ss.up != nil && ss.up.alive(ss.srv.cfg.UpstreamMaxAge) {
			if ss.up.send(ss.ctx, frame, ss.srv.cfg.WriteTimeout) == nil {
				ss.srv.metrics.toUpstream.Inc()
			}
		}
	case "response.append":
		ss.refuse("unsupported_frame_type", "response.append is not supported by this gateway; send response.create with previous_response_id and the new input items")
	case "":
		ss.refuse("missing_type", "the frame has no type; expected response.create")
	default:
		ss.refuse("unknown_frame_type", fmt.Sprintf("unknown frame type %q; expected response.create", typ))
	}
}

// upstream returns an open upstream connection, replacing a closed or old one.
func (ss *session) upstream() (*upstreamConn, error) {
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
	up, err := dialUpstream(ss.ctx, ss.srv.wsURL, ss.hdr, ss.srv.client, cfg.DialTimeout)
	if err != nil {
		ss.srv.metrics.upstream.WithLabelValues("dial_failed").Inc()
		return nil, err
	}
	ss.srv.metrics.upstream.WithLabelValues("dialed").Inc()
	ss.up = up
	return up, nil
}

func (ss *session) dropUpstream() {
	if ss.up != nil {
		ss.up.close()
		ss.up = nil
	}
}

// cached is the response the current upstream connection can chain to, "" when the next
// send will go on a fresh connection.
func (ss *session) cached() string {
	if ss.up == nil || !ss.up.alive(ss.srv.cfg.UpstreamMaxAge) {
		return ""
	}
	return ss.up.cached
}

// relayResult is how an upstream exchange ended.
type relayResult struct {
	terminal      *responses.Event
	terminalFrame []byte
	items         []responses.Item
	errFrame      []byte
	errBody       *responses.ErrorBody
	transport     error
	timeout       bool
	clientGone    bool
	clientWritten bool
}

// relay sends a payload and relays the upstream's events to the client as they arrive,
// until the terminal event, an error frame, or a failure.
func (ss *session) relay(up *upstreamConn, payload []byte) (res relayResult) {
	cfg := &ss.srv.cfg
	if err := up.send(ss.ctx, payload, cfg.WriteTimeout); err != nil {
		res.transport = err
		return res
	}
	ss.srv.metrics.toUpstream.Inc()
	timer := time.NewTimer(cfg.FirstEventTimeout)
	defer timer.Stop()
	// Events already queued behind the one being written go out with it in one socket
	// write (corkConn); whatever is held when the relay ends goes out now, before the
	// caller's bookkeeping. A failed write fails every later one, so the caller's terminal
	// write reports the client gone.
	defer func() { _ = ss.out.uncork() }()
	for {
		var f []byte
		select {
		case <-ss.ctx.Done():
			res.clientGone = true
			return res
		case <-timer.C:
			res.timeout = true
			return res
		case f = <-up.frames:
		case <-up.done:
			// Frames read before the close are still queued: relay them first.
			select {
			case f = <-up.frames:
			default:
				res.transport = up.failure()
				return res
			}
		}
		kind := responses.EventKind(f)
		if kind == responses.EventError {
			ev, _ := responses.ParseEvent(f)
			eb := responses.ErrorBody{Status: 500, Type: "server_error", Message: "upstream error"}
			if ev.Error != nil {
				eb = *ev.Error
			}
			res.errFrame, res.errBody = f, &eb
			return res
		}
		var ev responses.Event
		if kind == responses.EventOutputItemDone || responses.IsTerminal(kind) {
			ev, _ = responses.ParseEvent(f)
			if ev.Item != nil {
				res.items = append(res.items, *ev.Item)
			}
		}
		if responses.IsTerminal(kind) {
			if kind == responses.EventCompleted || ev.Status == "completed" {
				up.cached = ev.ResponseID
			}
			// The caller writes the terminal event after the bookkeeping, so that a client
			// that reacts to it (on this or another connection or instance) finds the
			// session's state already committed.
			res.terminal, res.terminalFrame = &ev, f
			return res
		}
		if len(up.frames) > 0 {
			ss.out.cork()
		}
		if err := ss.write(f); err != nil {
			res.clientGone = true
			return res
		}
		if len(up.frames) == 0 {
			if err := ss.out.uncork(); err != nil {
				ss.cancel() // as in write: a client that cannot take frames ends its session
				res.clientGone = true
				return res
			}
		}
		res.clientWritten = true
		timer.Reset(cfg.IdleTimeout)
	}
}

// turn runs one response.create through pre_send, the upstream, recovery and bookkeeping.
func (ss *session) turn(req *responses.Request) {
	srv := ss.srv
	if srv.snap.Load() == nil {
		ss.writeError(responses.ErrorBody{Status: 503, Type: "server_error", Code: "policies_not_loaded", Message: "the gateway has no active policy set yet"})
		return
	}
	// The upstream connection is settled before the policies run, so that upstream.cached
	// tells them whether this turn goes out on a fresh connection. A failed dial leaves it
	// "" and surfaces as a transport failure when the turn is sent.
	_, _ = ss.upstream()
	tc := srv.buildTurn(ss.ctx, req, engine.TransportWebSocket, ss.hdr, ss.connID, &ss.mem, ss.cached())
	ss.mem.turns++
	outcome := ss.runTurn(tc)
	srv.metrics.turns.WithLabelValues(engine.TransportWebSocket, outcome).Inc()
	elapsed := time.Since(tc.start)
	srv.metrics.turnSeconds.WithLabelValues(engine.TransportWebSocket).Observe(elapsed.Seconds())
	srv.log.Info("turn", "transport", "websocket", "session", tc.scope.Session, "turn", tc.t.Number,
		"reasons", strings.Join(tc.reasons, ","), "outcome", outcome, "ms", float64(elapsed.Microseconds())/1000, "set", tc.snap.Hash)
}

func (ss *session) runTurn(tc *turnCtx) string {
	srv := ss.srv
	out := tc.snap.Evaluate(engine.StagePreSend, tc.t)
	tc.note(out)
	srv.logFired(out, tc.scope.Session)
	if out.ClearAnchor {
		ss.mem.anchorKnown, ss.mem.anchor = true, ""
	}
	if out.Verdict == engine.VerdictReject {
		if out.ClearAnchor {
			srv.clearAnchor(ss.ctx, tc, &ss.mem)
		}
		ss.writeError(rejection(out.Reject))
		return "rejected"
	}
	sent := tc.t.Request
	attempted := false
	for {
		var res relayResult
		up, err := ss.upstream()
		if err != nil {
			res.transport = err
		} else {
			res = ss.relay(up, sent.Bytes())
		}
		switch {
		case res.clientGone:
			ss.dropUpstream()
			return "client_gone"
		case res.terminal != nil:
			srv.bookkeep(ss.ctx, tc, sent, *res.terminal, res.items, &ss.mem)
			if attempted {
				srv.metrics.recoveries.WithLabelValues(lastReason(tc.reasons), "succeeded").Inc()
			}
			if ss.write(res.terminalFrame) != nil {
				ss.dropUpstream()
				return "client_gone"
			}
			if res.terminal.Type == responses.EventCompleted {
				return "completed"
			}
			return "failed"
		case res.timeout:
			ss.dropUpstream()
			srv.clearAnchor(ss.ctx, tc, &ss.mem)
			ss.writeError(responses.ErrorBody{Status: 504, Type: "server_error", Code: "upstream_timeout", Message: "the upstream did not answer in time"})
			return "upstream_timeout"
		}
		// An error frame or a transport failure.
		if res.transport != nil {
			ss.dropUpstream()
		}
		if res.clientWritten {
			if res.errFrame != nil {
				_ = ss.write(withStatus(res.errFrame, res.errBody.Status))
			} else {
				ss.writeError(responses.ErrorBody{Status: 502, Type: "server_error", Code: "upstream_connection_lost", Message: "the upstream connection closed mid-response"})
			}
			srv.clearAnchor(ss.ctx, tc, &ss.mem)
			return "upstream_error"
		}
		ue := &engine.UpstreamError{Status: 502, Type: "server_error", Code: "upstream_connection_lost", Transport: true}
		if res.errBody != nil {
			ue = upstreamErrorOf(*res.errBody)
		} else if res.transport != nil {
			ue.Message = res.transport.Error()
		}
		rt := tc.recoveryTurn(sent, ue, attempted)
		rout := tc.snap.Evaluate(engine.StageOnUpstreamError, rt)
		tc.note(rout)
		srv.logFired(rout, tc.scope.Session)
		reason := lastReason(reasonsOf(rout))
		if rout.ClearAnchor {
			srv.clearAnchor(ss.ctx, tc, &ss.mem)
		}
		switch rout.Verdict {
		case engine.VerdictRetry:
			srv.metrics.recoveries.WithLabelValues(reason, "retried").Inc()
			attempted = true
			// Every retry goes out on a fresh upstream connection.
			ss.dropUpstream()
			sent = rt.Request
			tc.t = rt
			continue
		case engine.VerdictReject:
			ss.writeError(rejection(rout.Reject))
			return "rejected"
		}
		if attempted {
			srv.metrics.recoveries.WithLabelValues(reason, "failed").Inc()
		} else {
			srv.metrics.recoveries.WithLabelValues(reason, "forwarded").Inc()
		}
		if res.errFrame != nil {
			_ = ss.write(withStatus(res.errFrame, res.errBody.Status))
		} else {
			ss.writeError(responses.ErrorBody{Status: ue.Status, Type: ue.Type, Code: ue.Code, Message: "the upstream connection failed: " + ue.Message})
		}
		return "error_forwarded"
	}
}

// withStatus makes sure a forwarded error frame carries a top-level status, which Codex
// needs to treat it as an error; a frame that has one goes out byte for byte.
func withStatus(frame []byte, status int) []byte {
	ev, err := responses.ParseEvent(frame)
	if err == nil && ev.Error != nil && hasTopLevelStatus(frame) {
		return frame
	}
	eb := responses.ErrorBody{Status: status}
	if ev.Error != nil {
		eb = *ev.Error
	}
	if eb.Status == 0 {
		eb.Status = 500
	}
	return responses.ErrorFrame(eb)
}

func hasTopLevelStatus(frame []byte) bool {
	r, err := responses.Parse(frame)
	if err != nil {
		return false
	}
	_, ok := r.Field("status")
	return ok
}

func reasonsOf(out *engine.Outcome) []string { return out.Reasons() }

// lastReason is the reason of the decisive rule: the last one that fired.
func lastReason(reasons []string) string {
	if len(reasons) == 0 {
		return "none"
	}
	return reasons[len(reasons)-1]
}
