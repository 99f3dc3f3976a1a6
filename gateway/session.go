package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"chainmend/responses"
)

// session is one client WebSocket connection: its lanes, the upstream connection they
// share, and the read loop that feeds them. Each lane runs its turns one at a time, in order
// (a lane worker); lanes run side by side on the one upstream connection, and the read loop
// never waits on a turn.
type session struct {
	srv    *Server
	client *websocket.Conn
	out    *corkConn // the client's socket under client (see corkConn)
	hdr    http.Header
	connID string
	ctx    context.Context
	cancel context.CancelFunc
	rdErr  error
	// drainCh is closed by Server.Shutdown: the session ends once its lanes are idle.
	drainCh   chan struct{}
	drainOnce sync.Once
	// workers counts the running lane workers.
	workers sync.WaitGroup
	// lastRead is when the client last sent a frame (unix nanoseconds), for the idle timeout.
	lastRead atomic.Int64

	// mu guards everything below: the lanes, the upstream connection, the queue counts and
	// the facts control frames left for the bookkeeping.
	mu    sync.Mutex
	lanes map[string]*wsLane
	up    *upstreamConn
	// queued and queuedBytes count the creates waiting for their lane, across lanes.
	queued, queuedBytes int
	// busy counts the lanes with a response in flight.
	busy int
	// facts are what control frames (steer, inject, interrupt) said, by response id.
	facts map[string]*controlFacts
}

// maxControlFacts bounds the control facts a connection keeps for responses not yet bookkept.
const maxControlFacts = 1024

func (ss *session) drain() { ss.drainOnce.Do(func() { close(ss.drainCh) }) }

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	connID := s.instance + "-" + strconv.FormatUint(s.connSeq.Add(1), 36)
	tenant := s.tenantOf(r.Header, connID)
	if limit, ok := s.admit(tenant, sourceOf(r)); !ok {
		s.refuseAdmission(w, limit)
		return
	}
	defer s.release(tenant, sourceOf(r))
	ctx, cancel := context.WithCancel(context.Background())
	ss := &session{
		srv:     s,
		hdr:     forwardHeaders(r.Header),
		connID:  connID,
		ctx:     ctx,
		cancel:  cancel,
		lanes:   map[string]*wsLane{},
		facts:   map[string]*controlFacts{},
		drainCh: make(chan struct{}),
	}
	// The upstream is dialled before the client's handshake is answered, so that an
	// upstream that refuses (429 with Retry-After, 503, 401) answers the client itself, as it
	// would without the gateway. A transport failure does not refuse the client: its first
	// turn dials again and the rules answer.
	ss.mu.Lock()
	_, derr := ss.upstreamLocked()
	ss.mu.Unlock()
	var de *dialError
	if errors.As(derr, &de) {
		cancel()
		s.metrics.limits.WithLabelValues("upstream_refused").Inc()
		de.writeTo(w)
		return
	}
	hj := &corkHijacker{ResponseWriter: w, timeout: s.cfg.WriteTimeout}
	c, err := websocket.Accept(hj, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		cancel()
		ss.closeUpstream()
		return
	}
	c.SetReadLimit(s.cfg.MaxFrameBytes)
	// Frame writes carry no context (see write): the session's end aborts them instead.
	defer context.AfterFunc(ctx, hj.conn.abort)()
	ss.mu.Lock()
	ss.client, ss.out = c, hj.conn
	ss.mu.Unlock()
	if !s.track(ss) {
		_ = c.Close(websocket.StatusGoingAway, "shutting down")
		cancel()
		ss.closeUpstream()
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
		ss.workers.Wait()
		ss.dropQueued()
		ss.closeUpstream()
		_ = ss.client.CloseNow()
	}()
	read := make(chan struct{})
	go func() {
		defer close(read)
		ss.readLoop()
	}()
	if t := ss.srv.cfg.ClientIdleTimeout; t > 0 {
		defer ss.watchIdle(t)()
	}
	select {
	case <-read:
	case <-ss.drainCh:
		// New creates are refused from now on; the lanes finish what they hold, then the
		// client is told to reconnect.
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for !ss.idle() {
			select {
			case <-read:
				return
			case <-tick.C:
			}
		}
		_ = ss.client.Close(websocket.StatusGoingAway, "gateway shutting down; reconnect")
		return
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

// dropQueued gives back the process budget of the creates that were still waiting when the
// session ended.
func (ss *session) dropQueued() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, l := range ss.lanes {
		for len(l.creates) > 0 {
			if q := <-l.creates; q.waits {
				ss.srv.queued.give(int64(q.size))
			}
		}
	}
}

// closeUpstream closes the session's upstream connection, if any.
func (ss *session) closeUpstream() {
	ss.mu.Lock()
	up := ss.up
	ss.up = nil
	ss.mu.Unlock()
	if up != nil {
		up.close()
		ss.srv.metrics.upstream.WithLabelValues("closed").Inc()
	}
}

// idle reports whether no lane has a turn in flight or waiting.
func (ss *session) idle() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.busy > 0 {
		return false
	}
	for _, l := range ss.lanes {
		if l.held > 0 {
			return false
		}
	}
	return true
}

// watchIdle closes the connection once the client has sent nothing and nothing was in
// flight for t: an idle socket must not hold a connection slot forever. It returns the stop
// function.
func (ss *session) watchIdle(t time.Duration) func() {
	ss.lastRead.Store(time.Now().UnixNano())
	// The callback reads timer, which AfterFunc's return assigns: the mutex orders the two.
	var mu sync.Mutex
	var timer *time.Timer
	mu.Lock()
	defer mu.Unlock()
	timer = time.AfterFunc(t, func() {
		mu.Lock()
		defer mu.Unlock()
		quiet := time.Since(time.Unix(0, ss.lastRead.Load()))
		if quiet >= t && ss.idle() {
			ss.srv.metrics.limits.WithLabelValues("client_idle").Inc()
			_ = ss.client.Close(websocket.StatusGoingAway, "idle; reconnect when needed")
			ss.cancel()
			return
		}
		if quiet >= t {
			quiet = 0 // busy: look again a whole period later
		}
		timer.Reset(t - quiet)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		timer.Stop()
	}
}

func (ss *session) draining() bool {
	select {
	case <-ss.drainCh:
		return true
	default:
		return false
	}
}

func (ss *session) readLoop() {
	for {
		typ, data, err := ss.readFrame()
		if err != nil {
			ss.rdErr = err
			// The client is gone (closed, reset, or cut off for a bad frame): turns in
			// flight stop waiting for the upstream, which is closed with them.
			ss.cancel()
			return
		}
		ss.lastRead.Store(time.Now().UnixNano())
		if typ != websocket.MessageText {
			ss.refuse("unsupported_frame", "binary frames are not supported; send response.create as a JSON text frame", "")
			continue
		}
		ss.dispatch(data)
	}
}

// readFrame reads one client frame. websocket.Conn.Read grows its buffer from 512 bytes by
// reallocation, which for a 175 KB create is some twenty allocations and as many copies;
// sizing the buffer from the previous frame did no better for a client that alternates large
// full creates and small chained ones (Codex after a reconnect): every large frame grew from
// the small one's size again, allocating about three times its size (issue 14, the 175 KB
// profile: two thirds of the gateway's allocated bytes). So the frame is read into a pooled
// scratch buffer and copied once into a buffer of its exact size: the frame costs its own
// size, one allocation, whatever came before it.
func (ss *session) readFrame() (websocket.MessageType, []byte, error) {
	typ, r, err := ss.client.Reader(ss.ctx)
	if err != nil {
		return 0, nil, err
	}
	sp := framePool.Get().(*[]byte)
	defer func() {
		if cap(*sp) <= maxPooledFrame {
			framePool.Put(sp)
		}
	}()
	buf := (*sp)[:0]
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, max(cap(buf), 4096))
			*sp = buf[:0]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return typ, bytes.Clone(buf), nil
		}
		if err != nil {
			return 0, nil, err
		}
	}
}

// framePool holds the scratch buffers client frames are read into (readFrame); one larger
// than maxPooledFrame is left to the collector rather than kept.
var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

const maxPooledFrame = 1 << 20

// refuse answers a bad frame with an error frame; the connection stays open.
func (ss *session) refuse(code, msg, lane string) {
	ss.srv.metrics.badFrames.WithLabelValues(code).Inc()
	ss.writeFrameError(responses.ErrorBody{Status: 400, Type: "invalid_request_error", Code: code, Message: msg, Lane: lane})
}

func (ss *session) writeFrameError(e responses.ErrorBody) {
	_ = ss.write(responses.ErrorFrame(e))
}

// write sends one frame to the client; lanes and the read loop write side by side (the
// socket serialises whole frames). It needs no context of its own: the socket write is
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

// dispatch routes one client frame: a create to its lane's queue, a control frame to the
// upstream at once (the response it is about may be in flight), anything else refused.
func (ss *session) dispatch(frame []byte) {
	req, err := responses.Parse(frame)
	if err != nil {
		if errors.Is(err, responses.ErrNotObject) {
			ss.refuse("invalid_frame", "a frame must be a JSON object with a type", "")
			return
		}
		ss.refuse("invalid_json", "malformed JSON frame: "+err.Error(), "")
		return
	}
	lane := req.String("stream_id")
	switch typ := req.Type(); typ {
	case "response.create":
		ss.enqueue(lane, req, len(frame))
	case "response.processed", "response.steer", "response.inject", "response.interrupt":
		ss.control(typ, req, frame, lane)
	case "response.append":
		ss.refuse("unsupported_frame_type", "response.append is not supported by this gateway; send response.create with previous_response_id and the new input items", lane)
	case "":
		ss.refuse("missing_type", "the frame has no type; expected response.create", lane)
	default:
		ss.refuse("unknown_frame_type", fmt.Sprintf("unknown frame type %q; expected response.create", typ), lane)
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
