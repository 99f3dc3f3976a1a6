package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"chainmend/engine"
	"chainmend/responses"
)

// maxErrorBody bounds an upstream error body read before it is relayed.
const maxErrorBody = 1 << 20

// serveHTTP is POST /v1/responses: one turn on a lane of its own, through the same driver as
// the WebSocket's turns (there is no connection cache over HTTP), the response streamed back
// event by event.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	connID := "http-" + strconv.FormatUint(s.connSeq.Add(1), 36)
	// An HTTP request holds a connection slot like a WebSocket does, under its tenant.
	tenant := s.tenantOf(r.Header, connID)
	if limit, ok := s.admit(tenant, sourceOf(r)); !ok {
		s.refuseAdmission(w, limit)
		return
	}
	defer s.release(tenant, sourceOf(r))
	body, held, err := s.readBody(w, r)
	defer s.bodies.give(held)
	if err != nil {
		var mbe *http.MaxBytesError
		var ne net.Error
		switch {
		case errors.As(err, &mbe):
			s.metrics.badFrames.WithLabelValues("frame_too_large").Inc()
			httpError(w, responses.ErrorBody{Status: http.StatusRequestEntityTooLarge, Code: "request_too_large",
				Message: fmt.Sprintf("request body over %d bytes", s.cfg.MaxFrameBytes)})
		case errors.Is(err, errBodyBudget):
			s.metrics.limits.WithLabelValues("request_bodies").Inc()
			w.Header().Set("Retry-After", "1")
			httpError(w, responses.ErrorBody{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "too_many_request_bodies",
				Message: fmt.Sprintf("the gateway holds %d bytes of request bodies already; retry", s.cfg.MaxBodyBytesInFlight)})
		case errors.As(err, &ne) && ne.Timeout():
			s.metrics.limits.WithLabelValues("body_read_timeout").Inc()
			w.Header().Set("Connection", "close")
			httpError(w, responses.ErrorBody{Status: http.StatusRequestTimeout, Code: "request_timeout",
				Message: fmt.Sprintf("the request body did not arrive within %s", s.cfg.BodyReadTimeout)})
		default:
			httpError(w, responses.ErrorBody{Status: http.StatusBadRequest, Code: "invalid_body", Message: "read request body: " + err.Error()})
		}
		return
	}
	req, err := responses.Parse(body)
	if err != nil {
		s.metrics.badFrames.WithLabelValues("invalid_json").Inc()
		httpError(w, responses.ErrorBody{Status: http.StatusBadRequest, Code: "invalid_json", Message: "malformed JSON body: " + err.Error()})
		return
	}
	hc := &httpConn{srv: s, w: w, hdr: forwardHeaders(r.Header)}
	hc.flusher, _ = w.(http.Flusher)
	s.drive(r.Context(), hc, &laneState{}, req, connID, hc.hdr)
}

func httpError(w http.ResponseWriter, e responses.ErrorBody) {
	if e.Status == 0 {
		e.Status = http.StatusBadRequest
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	_, _ = w.Write(responses.ErrorJSON(e))
}

// httpConn is the HTTP side of the turn driver: one POST and its response. The status line
// and headers go out with the first byte of the answer, so a failure before it can still be
// answered with a status of its own.
type httpConn struct {
	srv     *Server
	w       http.ResponseWriter
	flusher http.Flusher
	hdr     http.Header
	// resp is the upstream response being relayed; its status and headers lead the answer.
	resp  *http.Response
	wrote bool
}

var _ transport = (*httpConn)(nil)

func (h *httpConn) kind() string { return engine.TransportHTTP }

// cached is always "": over HTTP no connection holds a response.
func (h *httpConn) cached(*laneState) string { return "" }

func (h *httpConn) hold(*laneState, string) {}

func (h *httpConn) dropUpstream() {}

// forkSource is nil: an HTTP request is a connection of one lane.
func (h *httpConn) forkSource(string) *laneState { return nil }

func (h *httpConn) annotate(*engine.Response) {}

// headers are the request headers every upstream attempt of this request sends.
func (h *httpConn) headers() http.Header { return h.hdr }

func (h *httpConn) send(ctx context.Context, payload []byte, _ bool) (exchange, error) {
	rctx, cancel := context.WithCancel(ctx)
	x := &sseExchange{cancel: cancel}
	// One timer bounds every wait of the exchange: the response headers, then each event. It
	// cancels the request, which ends a blocked read.
	x.timer = time.AfterFunc(h.srv.cfg.FirstEventTimeout, func() {
		x.timedOut.Store(true)
		cancel()
	})
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, h.srv.httpURL, bytes.NewReader(payload))
	if err != nil {
		x.close()
		return nil, err
	}
	for k, v := range h.hdr {
		req.Header[k] = v
	}
	req.Header["Content-Type"] = jsonContentType
	req.ContentLength = int64(len(payload))
	resp, err := h.srv.client.Do(req)
	if err != nil {
		x.close()
		return nil, x.failure(ctx, err)
	}
	x.timer.Stop()
	x.body = resp.Body
	h.resp = resp
	switch {
	case resp.StatusCode >= 400:
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		x.one = &upstreamEvent{data: data, raw: data, kind: responses.EventError, status: resp.StatusCode}
	case !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream"):
		data, err := io.ReadAll(io.LimitReader(resp.Body, upstreamReadLimit))
		if err != nil {
			x.close()
			return nil, x.failure(ctx, err)
		}
		x.one = &upstreamEvent{data: data, raw: data, object: true}
	default:
		x.rd = responses.NewSSEReader(resp.Body)
	}
	return x, nil
}

// begin writes the upstream response's status line and headers once, before the first byte
// of the answer.
func (h *httpConn) begin() {
	if h.wrote {
		return
	}
	h.wrote = true
	if h.resp == nil {
		return
	}
	for k, v := range h.resp.Header {
		switch k {
		case "Content-Length", "Connection", "Transfer-Encoding":
			continue
		}
		h.w.Header()[k] = v
	}
	h.w.WriteHeader(h.resp.StatusCode)
}

func (h *httpConn) relay(ev *upstreamEvent, more bool) error {
	h.begin()
	if _, err := h.w.Write(ev.raw); err != nil {
		return errClientGone
	}
	h.srv.metrics.toClient.Inc()
	// Flushed when no further event has been read already: a burst goes out in one write.
	if !more {
		return h.flush()
	}
	return nil
}

func (h *httpConn) flush() error {
	if h.wrote && h.flusher != nil {
		h.flusher.Flush()
	}
	return nil
}

// writeError answers with the upstream's own status and body when it refused the request
// before streaming; an error event of a stream is relayed as an event; an error of the
// gateway's is a JSON body with its status, or an error event once the stream has begun.
func (h *httpConn) writeError(e responses.ErrorBody, raw *upstreamEvent) error {
	switch {
	case raw != nil && raw.status >= 400 && !h.wrote:
		h.wrote = true
		h.w.Header().Set("Content-Type", "application/json")
		h.w.WriteHeader(raw.status)
		_, err := h.w.Write(raw.raw)
		return err
	case raw != nil && raw.status == 0:
		return h.relay(raw, false)
	case !h.wrote:
		h.wrote = true
		httpError(h.w, e)
		return nil
	}
	if _, err := h.w.Write(responses.SSEFrame(responses.EventError, responses.ErrorFrame(e))); err != nil {
		return errClientGone
	}
	return h.flush()
}

// sseExchange is one POST upstream: a stream of server-sent events, or a single answer (an
// error body, or a response object that was not streamed).
type sseExchange struct {
	body     io.ReadCloser
	rd       *responses.SSEReader
	one      *upstreamEvent
	cancel   context.CancelFunc
	timer    *time.Timer
	timedOut atomic.Bool
	// ev is the event next returned, reused: the driver is done with an event before it asks
	// for another.
	ev upstreamEvent
}

// jsonContentType is the Content-Type of every upstream request; net/http only reads it.
var jsonContentType = []string{"application/json"}

// errStreamEnded is a stream that stopped before its response did.
var errStreamEnded = errors.New("the upstream stream ended before the response did")

func (x *sseExchange) next(ctx context.Context, wait time.Duration) (*upstreamEvent, error) {
	if x.one != nil {
		ev := x.one
		x.one = nil
		return ev, nil
	}
	if x.rd == nil {
		return nil, errStreamEnded
	}
	x.timer.Reset(wait)
	e, err := x.rd.Next()
	x.timer.Stop()
	if err != nil {
		if errors.Is(err, io.EOF) && ctx.Err() == nil && !x.timedOut.Load() {
			return nil, errStreamEnded
		}
		return nil, x.failure(ctx, err)
	}
	kind := e.Name
	if kind == "" {
		kind = responses.EventKind(e.Data)
	}
	x.ev = upstreamEvent{data: e.Data, raw: e.Raw, kind: kind}
	return &x.ev, nil
}

// failure tells apart why a read or a request failed: the client left, the timer fired, or
// the upstream connection broke.
func (x *sseExchange) failure(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return errClientGone
	case x.timedOut.Load():
		return errUpstreamTimeout
	}
	return err
}

func (x *sseExchange) more() bool { return x.rd != nil && x.rd.Buffered() > 0 }

func (x *sseExchange) close() {
	x.timer.Stop()
	if x.body != nil {
		_ = x.body.Close()
	}
	x.cancel()
}

// errBodyBudget refuses a body the gateway has no room for.
var errBodyBudget = errors.New("request body budget exhausted")

// firstBodyBuffer caps the buffer a body starts with, whatever Content-Length says: a
// client's announcement costs the gateway nothing until its bytes arrive.
const firstBodyBuffer = 64 << 10

// readBody reads a request body within the body read timeout, growing its buffer as bytes
// arrive (doubling, or to the announced length once an eighth of it has arrived, so a 175 KB
// create costs two allocations, not twenty) and taking each
// growth from the process's body budget first. It returns the bytes it holds of the budget,
// which the caller gives back when it is done with the body.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) (buf []byte, held int64, err error) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(s.cfg.BodyReadTimeout))
	defer func() { _ = rc.SetReadDeadline(time.Time{}) }()
	limit := s.cfg.MaxFrameBytes
	body := http.MaxBytesReader(w, r.Body, limit)
	size := int64(4096)
	if cl := r.ContentLength; cl > 0 {
		// One byte more than announced, so that the end of the body is seen without growing.
		size = min(cl+1, firstBodyBuffer, limit+1)
	}
	if !s.bodies.take(size) {
		return nil, 0, errBodyBudget
	}
	held = size
	buf = make([]byte, 0, size)
	for {
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, held, nil
		}
		if err != nil {
			return buf, held, err
		}
		if len(buf) == cap(buf) {
			grow := min(int64(cap(buf)), limit+1-int64(cap(buf)))
			if cl := r.ContentLength; cl+1 > int64(cap(buf)) && cl < 8*int64(len(buf)) {
				// The client has sent an eighth of what it announced: take the rest in one
				// step rather than doubling to it (a 175 KB body: 64 KB, then 175, not 64,
				// 128 and 256).
				grow = min(cl+1, limit+1) - int64(cap(buf))
			}
			if grow <= 0 {
				grow = 1 // one byte past the limit makes MaxBytesReader say so
			}
			if !s.bodies.take(grow) {
				return buf, held, errBodyBudget
			}
			held += grow
			before := int64(cap(buf))
			buf = slices.Grow(buf, int(grow))
			// The allocator rounds up to a size class: count what was really allocated.
			if extra := int64(cap(buf)) - before - grow; extra > 0 {
				s.bodies.used.Add(extra)
				held += extra
			}
		}
	}
}

// byteBudget bounds bytes held across requests.
type byteBudget struct {
	used, max atomic.Int64
}

func (b *byteBudget) take(n int64) bool {
	if b.used.Add(n) > b.max.Load() {
		b.used.Add(-n)
		return false
	}
	return true
}

func (b *byteBudget) give(n int64) {
	if n > 0 {
		b.used.Add(-n)
	}
}
