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
	"time"

	"chainmend/engine"
	"chainmend/responses"
)

// maxErrorBody bounds an upstream error body read before it is relayed.
const maxErrorBody = 1 << 20

// serveHTTP is POST /v1/responses: the same pre_send policies (there is no connection cache
// over HTTP, so the chain rules do not apply and full inputs are repaired in place), the
// response streamed back event by event, and the same bookkeeping.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	body, err := readBody(http.MaxBytesReader(w, r.Body, s.cfg.MaxFrameBytes), r.ContentLength, s.cfg.MaxFrameBytes)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.metrics.badFrames.WithLabelValues("frame_too_large").Inc()
			httpError(w, responses.ErrorBody{Status: http.StatusRequestEntityTooLarge, Code: "request_too_large",
				Message: fmt.Sprintf("request body over %d bytes", s.cfg.MaxFrameBytes)})
			return
		}
		httpError(w, responses.ErrorBody{Status: http.StatusBadRequest, Code: "invalid_body", Message: "read request body: " + err.Error()})
		return
	}
	req, err := responses.Parse(body)
	if err != nil {
		s.metrics.badFrames.WithLabelValues("invalid_json").Inc()
		httpError(w, responses.ErrorBody{Status: http.StatusBadRequest, Code: "invalid_json", Message: "malformed JSON body: " + err.Error()})
		return
	}
	if s.snap.Load() == nil {
		httpError(w, responses.ErrorBody{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "policies_not_loaded", Message: "the gateway has no active policy set yet"})
		return
	}
	hdr := forwardHeaders(r.Header)
	var mem memory
	tc := s.buildTurn(ctx, req, engine.TransportHTTP, hdr, "http-"+strconv.FormatUint(s.connSeq.Add(1), 36), &mem, "")
	outcome := s.httpTurn(ctx, w, tc, hdr, &mem)
	s.metrics.turns.WithLabelValues(engine.TransportHTTP, outcome).Inc()
	elapsed := time.Since(tc.start)
	s.metrics.turnSeconds.WithLabelValues(engine.TransportHTTP).Observe(elapsed.Seconds())
	s.log.Info("turn", "transport", "http", "session", tc.scope.Session, "turn", tc.t.Number,
		"reasons", strings.Join(tc.reasons, ","), "outcome", outcome, "ms", float64(elapsed.Microseconds())/1000, "set", tc.snap.Hash)
}

func httpError(w http.ResponseWriter, e responses.ErrorBody) {
	if e.Status == 0 {
		e.Status = http.StatusBadRequest
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	_, _ = w.Write(responses.ErrorJSON(e))
}

func (s *Server) httpTurn(ctx context.Context, w http.ResponseWriter, tc *turnCtx, hdr http.Header, mem *memory) string {
	out := tc.snap.Evaluate(engine.StagePreSend, tc.t)
	tc.note(out)
	s.logFired(out, tc.scope.Session)
	if out.ClearAnchor {
		s.clearAnchor(ctx, tc, mem)
	}
	if out.Verdict == engine.VerdictReject {
		httpError(w, rejection(out.Reject))
		return "rejected"
	}
	sent := tc.t.Request
	attempted := false
	for {
		resp, err := s.postUpstream(ctx, sent.Bytes(), hdr)
		var ue *engine.UpstreamError
		var errBody []byte
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return "client_gone"
			}
			ue = &engine.UpstreamError{Status: http.StatusBadGateway, Type: "server_error", Code: "upstream_unavailable", Message: err.Error(), Transport: true}
		case resp.StatusCode >= 400:
			errBody, _ = io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
			resp.Body.Close()
			eb, ok := responses.ParseErrorBody(errBody, resp.StatusCode)
			if !ok {
				eb = responses.ErrorBody{Status: resp.StatusCode, Message: strings.TrimSpace(string(errBody))}
			}
			ue = upstreamErrorOf(eb)
		default:
			return s.streamBack(ctx, w, resp, tc, sent, mem, attempted)
		}
		rt := tc.recoveryTurn(sent, ue, attempted)
		rout := tc.snap.Evaluate(engine.StageOnUpstreamError, rt)
		tc.note(rout)
		s.logFired(rout, tc.scope.Session)
		reason := lastReason(reasonsOf(rout))
		if rout.ClearAnchor {
			s.clearAnchor(ctx, tc, mem)
		}
		switch rout.Verdict {
		case engine.VerdictRetry:
			s.metrics.recoveries.WithLabelValues(reason, "retried").Inc()
			attempted = true
			sent, tc.t = rt.Request, rt
			continue
		case engine.VerdictReject:
			httpError(w, rejection(rout.Reject))
			return "rejected"
		}
		if attempted {
			s.metrics.recoveries.WithLabelValues(reason, "failed").Inc()
		} else {
			s.metrics.recoveries.WithLabelValues(reason, "forwarded").Inc()
		}
		if errBody != nil {
			// The upstream's own status and body, byte for byte.
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(ue.Status)
			_, _ = w.Write(errBody)
		} else {
			httpError(w, responses.ErrorBody{Status: ue.Status, Type: ue.Type, Code: ue.Code, Message: "the upstream is unreachable: " + ue.Message})
		}
		return "error_forwarded"
	}
}

func (s *Server) postUpstream(ctx context.Context, body []byte, hdr http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.httpURL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	req.ContentLength = int64(len(body))
	return s.client.Do(req)
}

// streamBack relays a successful upstream response: server-sent events one by one, each
// flushed as it arrives, or a plain JSON response as is.
func (s *Server) streamBack(ctx context.Context, w http.ResponseWriter, resp *http.Response, tc *turnCtx, sent *responses.Request, mem *memory, attempted bool) string {
	defer resp.Body.Close()
	for k, v := range resp.Header {
		switch k {
		case "Content-Length", "Connection", "Transfer-Encoding":
			continue
		}
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	flusher, _ := w.(http.Flusher)
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		data, err := io.ReadAll(io.LimitReader(resp.Body, upstreamReadLimit))
		_, _ = w.Write(data)
		if err != nil {
			return "upstream_error"
		}
		// A non-streamed response is the response object itself.
		var ev responses.Event
		if r, err := responses.Parse(data); err == nil {
			ev.Type = responses.EventCompleted
			ev.ResponseID = r.String("id")
			ev.Status = r.String("status")
			if out, ok := r.Field("output"); ok {
				if items, err := parseItems(out); err == nil {
					ev.Output = items
				}
			}
			if ev.Status != "completed" {
				ev.Type = responses.EventIncomplete
			}
		}
		s.bookkeep(ctx, tc, sent, ev, nil, mem)
		return "completed"
	}
	rd := responses.NewSSEReader(resp.Body)
	var items []responses.Item
	for {
		ev, err := rd.Next()
		if err != nil {
			if ctx.Err() != nil {
				return "client_gone"
			}
			// The stream ended without a terminal event: say so in the stream, since the
			// status line is long gone.
			_, _ = w.Write(responses.SSEFrame("error", responses.ErrorFrame(responses.ErrorBody{
				Status: http.StatusBadGateway, Type: "server_error", Code: "upstream_connection_lost",
				Message: "the upstream stream ended before the response did"})))
			if flusher != nil {
				flusher.Flush()
			}
			s.clearAnchor(ctx, tc, mem)
			return "upstream_error"
		}
		kind := ev.Name
		if kind == "" {
			kind = responses.EventKind(ev.Data)
		}
		var pe responses.Event
		parsed := false
		if kind == responses.EventOutputItemDone || responses.IsTerminal(kind) || kind == responses.EventError {
			var err error
			pe, err = responses.ParseEvent(ev.Data)
			parsed = err == nil
		}
		if parsed && responses.IsTerminal(kind) {
			// Bookkeeping before the terminal event reaches the client, so that its next
			// request finds the session's state committed.
			if pe.Item != nil {
				items = append(items, *pe.Item)
			}
			pe.Type = kind
			s.bookkeep(ctx, tc, sent, pe, items, mem)
			if attempted {
				s.metrics.recoveries.WithLabelValues(lastReason(tc.reasons), "succeeded").Inc()
			}
		}
		if _, err := w.Write(ev.Raw); err != nil {
			return "client_gone"
		}
		// Flushed when no further event has been read already: a burst goes out in one
		// write (the last event is flushed when the handler returns).
		if flusher != nil && rd.Buffered() == 0 {
			flusher.Flush()
		}
		s.metrics.toClient.Inc()
		if !parsed {
			continue
		}
		if kind == responses.EventError {
			s.clearAnchor(ctx, tc, mem)
			return "upstream_error"
		}
		if responses.IsTerminal(kind) {
			if kind == responses.EventCompleted {
				return "completed"
			}
			return "failed"
		}
		if pe.Item != nil {
			items = append(items, *pe.Item)
		}
	}
}

// readBody reads a request body. With a Content-Length (what clients send) the buffer is
// allocated once at that size; io.ReadAll grows from 512 bytes by reallocation, some twenty
// allocations and copies for a 175 KB create.
func readBody(r io.Reader, contentLength, limit int64) ([]byte, error) {
	if contentLength <= 0 || contentLength > limit {
		return io.ReadAll(r)
	}
	// One byte more than announced, so that the end of the body is seen without growing.
	buf := make([]byte, 0, contentLength+1)
	for {
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, 4096)
		}
	}
}

// parseItems splits a JSON array of items.
func parseItems(arr []byte) ([]responses.Item, error) {
	wrapped := make([]byte, 0, len(arr)+10)
	wrapped = append(wrapped, `{"input":`...)
	wrapped = append(wrapped, arr...)
	wrapped = append(wrapped, '}')
	r, err := responses.Parse(wrapped)
	if err != nil {
		return nil, err
	}
	return r.Items(), nil
}
