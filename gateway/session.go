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

	"github.com/coder/websocket"

	"chainmend/responses"
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
	// lanes holds the turn state of each lane of the connection; today only the default
	// lane ("") carries turns.
	lanes map[string]*laneState
	up    *upstreamConn
	// ex is the upstream exchange of the turn in flight, reused turn after turn.
	ex     wsExchange
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
	tenant := TenantOf(r.Header.Get("Authorization"))
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
		lanes:   map[string]*laneState{},
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
			ss.writeFrameError(responses.ErrorBody{Status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: "too_many_queued_frames",
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
	ss.writeFrameError(responses.ErrorBody{Status: 400, Type: "invalid_request_error", Code: code, Message: msg})
}

func (ss *session) writeFrameError(e responses.ErrorBody) {
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
		ss.srv.drive(ss.ctx, ss, ss.lane(""), req, ss.connID, ss.hdr)
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
