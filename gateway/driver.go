package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"chainmend/engine"
	"chainmend/responses"
)

// transport moves one client connection's bytes for the turn driver: the client side it
// writes to and the upstream it sends to. It decides nothing; the driver and the rules do.
type transport interface {
	// kind is engine.TransportWebSocket or engine.TransportHTTP.
	kind() string
	// cached is what the upstream connection the next send would use holds for the lane,
	// "" when that send needs a new connection. It never dials.
	cached(l *laneState) string
	// hold records what the upstream connection now holds for the lane (set_upstream_cached).
	hold(l *laneState, responseID string)
	// send puts a payload on the upstream; fresh replaces the upstream connection first.
	send(ctx context.Context, payload []byte, fresh bool) (exchange, error)
	// relay writes one upstream event to the client; more says further events are already
	// waiting, so the write may be held and go out with them.
	relay(ev *upstreamEvent, more bool) error
	// flush writes out whatever relay held.
	flush() error
	// writeError answers the client with an error: the upstream's own event when raw is set,
	// else one built from e.
	writeError(e responses.ErrorBody, raw *upstreamEvent) error
	// dropUpstream discards the upstream connection (it failed, timed out, or the client left
	// in the middle of a response).
	dropUpstream()
	// forkSource returns the state of another lane of the connection whose latest response
	// is prev (a create on a new lane chained to it is a fork), nil when there is none.
	forkSource(prev string) *laneState
	// annotate adds what the connection's control frames said about a response (outputs
	// injected into it, an interrupt).
	annotate(resp *engine.Response)
	// headers are the headers of the next upstream request (HTTP), for trace context; nil
	// for a WebSocket lane, whose headers went with the handshake.
	headers() http.Header
}

// exchange is one request in flight upstream.
type exchange interface {
	// next waits up to wait for the next upstream event. It fails with errUpstreamTimeout,
	// errClientGone (ctx ended), or the transport's error.
	next(ctx context.Context, wait time.Duration) (*upstreamEvent, error)
	// more reports whether further events are already buffered.
	more() bool
	// close releases what the exchange holds.
	close()
}

// upstreamEvent is one thing the upstream said: a server event, an HTTP error body, or the
// response object of a response that was not streamed.
type upstreamEvent struct {
	// data is the event's JSON.
	data []byte
	// raw is what the client gets as is: the frame (WebSocket) or the event block (SSE).
	raw []byte
	// kind is the event type ("" for a response object).
	kind string
	// status is the HTTP status of an error body (HTTP); 0 otherwise.
	status int
	// object marks the body of a non-streamed response: the response object itself.
	object bool
}

// isError reports whether the event is the upstream refusing the request.
func (ev *upstreamEvent) isError() bool { return ev.status >= 400 || ev.kind == responses.EventError }

// errorBody reads the error the upstream sent.
func (ev *upstreamEvent) errorBody() responses.ErrorBody {
	if ev.status >= 400 {
		if eb, ok := responses.ParseErrorBody(ev.data, ev.status); ok {
			return eb
		}
		return responses.ErrorBody{Status: ev.status, Message: strings.TrimSpace(string(ev.data))}
	}
	if pe, err := responses.ParseEvent(ev.data); err == nil && pe.Error != nil {
		return *pe.Error
	}
	return responses.ErrorBody{Message: "malformed upstream error event"}
}

var (
	// errUpstreamTimeout ends a wait for an upstream event that took too long.
	errUpstreamTimeout = errors.New("upstream timeout")
	// errClientGone ends a turn whose client went away.
	errClientGone = errors.New("client gone")
)

// failure is how an attempt failed: an error event, or no event at all.
type failure struct {
	ev  *upstreamEvent
	err error
}

// drive runs one turn from the parsed request to its end: pre_send, the upstream, the
// relay, on_upstream_error until the rules forward or give up, and post_response on the
// terminal event. Both transports come here; it returns the turn's outcome label.
func (s *Server) drive(ctx context.Context, tr transport, lane *laneState, req *responses.Request, connID string, hdr http.Header) string {
	snap := s.snap.Load()
	if snap == nil {
		_ = tr.writeError(responses.ErrorBody{Status: http.StatusServiceUnavailable, Type: "server_error",
			Code: "policies_not_loaded", Message: "the gateway has no active policy set yet"}, nil)
		return "rejected"
	}
	scope := s.scopeOf(hdr, req, connID)
	scope.Lane = lane.name
	if lane.adopted {
		scope.Session, scope.Lane = lane.storeSession, lane.storeLane
	}
	d := s.newTurn(ctx, tr, lane, req, scope, snap)
	d.connID = connID
	ctx = d.begin(ctx, hdr)
	return d.finish(d.run(ctx))
}

// follow bookkeeps a response the upstream started by itself (a steer's successor): its
// events are relayed from first on, post_response runs on its terminal event as for any
// response, and a failure is answered without a retry (nobody asked for this response). req
// is the create the server acted on: the steer's input chained to the steered response.
func (s *Server) follow(ctx context.Context, tr transport, lane *laneState, req *responses.Request, first *upstreamEvent, up *upstreamConn, connID string, hdr http.Header) string {
	snap := s.snap.Load()
	wl, ok := tr.(*wsLane)
	if snap == nil || !ok {
		_ = tr.relay(first, false)
		return "relayed"
	}
	scope := s.scopeOf(hdr, req, connID)
	scope.Lane = lane.name
	if lane.adopted {
		scope.Session, scope.Lane = lane.storeSession, lane.storeLane
	}
	d := s.newTurn(ctx, tr, lane, req, scope, snap)
	d.connID = connID
	d.serverStarted = true
	d.t.Recovery.Enabled = false
	ctx = d.begin(ctx, hdr)
	outcome, f := d.relay(ctx, wl.watch(up), first)
	if f != nil {
		outcome = d.fail(ctx, f)
	}
	return d.finish(outcome)
}

// begin hands the turn to the hooks, whose context it carries from then on; hdr are the
// client's request or handshake headers.
func (d *turn) begin(ctx context.Context, hdr http.Header) context.Context {
	d.ctx = ctx
	if len(d.srv.hooks) == 0 {
		return ctx
	}
	store := "local"
	if b, ok := d.srv.store.(interface{ Backend() string }); ok {
		store = b.Backend()
	}
	d.info = &TurnInfo{Transport: d.tr.kind(), Tenant: d.scope.Tenant, Session: d.scope.Session, Lane: d.lane.name,
		Conn: d.connID, Number: d.t.Number, ServerStarted: d.serverStarted, PolicySet: d.snap.Hash, Store: store,
		TraceParent: hdr.Get("Traceparent"), TraceState: strings.Join(hdr.Values("Tracestate"), ",")}
	d.ctx = d.srv.hooks.begin(ctx, d.info)
	return d.ctx
}

// finish counts and logs the turn.
func (d *turn) finish(outcome string) string {
	if len(d.srv.hooks) > 0 {
		d.srv.hooks.end(d.ctx, d.info, outcome)
	}
	s, kind := d.srv, d.tr.kind()
	s.metrics.turns.WithLabelValues(kind, outcome).Inc()
	elapsed := time.Since(d.began)
	s.metrics.turnSeconds.WithLabelValues(kind).Observe(elapsed.Seconds())
	// The attributes are built only for a logger that takes the line: boxing them cost a
	// dozen allocations per turn even when the handler drops it.
	if s.log.Enabled(d.ctx, slog.LevelInfo) {
		s.log.Info("turn", "transport", kind, "conn", d.connID, "tenant", d.scope.Tenant[:min(8, len(d.scope.Tenant))],
			"session", d.scope.Session, "lane", d.lane.name, "turn", d.t.Number,
			"server_started", d.serverStarted, "reasons", strings.Join(d.reasons, ","), "outcome", outcome,
			"ms", float64(elapsed.Microseconds())/1000, "set", d.snap.Hash)
	}
	return outcome
}

func (d *turn) run(ctx context.Context) string {
	out := d.evaluate(engine.StagePreSend, d.t)
	if out.Verdict == engine.VerdictReject {
		d.commit(ctx)
		_ = d.tr.writeError(rejection(out.Reject), nil)
		return "rejected"
	}
	fresh := false
	for {
		outcome, f := d.attempt(ctx, fresh)
		if f == nil {
			return outcome
		}
		if errors.Is(f.err, errClientGone) {
			return d.fail(ctx, f)
		}
		if f.ev == nil {
			// No answer, or a broken connection: it cannot take the next turn.
			d.tr.dropUpstream()
		}
		retry, outcome := d.recover(ctx, f)
		if !retry {
			return outcome
		}
		// Every retry goes out on a fresh upstream connection.
		fresh = true
	}
}

// fail ends a turn on a failure without a retry: the client left, or nobody may retry.
func (d *turn) fail(ctx context.Context, f *failure) string {
	if errors.Is(f.err, errClientGone) {
		d.tr.dropUpstream()
		d.commit(ctx)
		return "client_gone"
	}
	if f.ev == nil {
		d.tr.dropUpstream()
	}
	_, outcome := d.recover(ctx, f)
	return outcome
}

// attempt sends the turn's payload and relays the upstream's events.
func (d *turn) attempt(ctx context.Context, fresh bool) (string, *failure) {
	var done func(error)
	if len(d.srv.hooks) > 0 {
		done = d.srv.hooks.upstream(ctx, d.info, d.tr.headers())
	}
	ex, err := d.tr.send(ctx, d.t.Request.Bytes(), fresh)
	if err != nil {
		if done != nil {
			done(err)
		}
		return "", &failure{err: err}
	}
	d.srv.metrics.toUpstream.Inc()
	outcome, f := d.relay(ctx, ex, nil)
	if done != nil {
		var ferr error
		if f != nil {
			ferr = f.err
			if f.ev != nil {
				ferr = errors.New("upstream error: " + f.ev.errorBody().Code)
			}
		}
		done(ferr)
	}
	return outcome, f
}

// relay relays the upstream's events, first (when given) and then those that follow, until the
// terminal one (bookkept, then written: the outcome) or a failure.
func (d *turn) relay(ctx context.Context, ex exchange, first *upstreamEvent) (string, *failure) {
	cfg := &d.srv.cfg
	defer ex.close()
	// Whatever relay held goes out before the terminal event or the error.
	defer func() { _ = d.tr.flush() }()
	var items []responses.Item
	wait := cfg.FirstEventTimeout
	for {
		ev := first
		first = nil
		if ev == nil {
			var err error
			if ev, err = ex.next(ctx, wait); err != nil {
				return "", &failure{err: err}
			}
		}
		if ev.isError() {
			return "", &failure{ev: ev}
		}
		var resp *engine.Response
		switch {
		case ev.object:
			pe, _ := responses.ParseResponseObject(ev.data)
			resp = d.responseOf("", pe, nil)
		case ev.kind == responses.EventOutputItemDone:
			if pe, err := responses.ParseEvent(ev.data); err == nil && pe.Item != nil {
				items = append(items, *pe.Item)
			}
		case responses.IsTerminal(ev.kind):
			// With the output items already seen, the terminal event's copy of them is only
			// walked over: its call ids are all the books need of it.
			parse := responses.ParseEvent
			if len(items) > 0 {
				parse = responses.ParseTerminal
			}
			pe, err := parse(ev.data)
			if err == nil {
				if pe.Item != nil {
					items = append(items, *pe.Item)
				}
				resp = d.responseOf(ev.kind, pe, items)
			}
		}
		if resp != nil {
			// The books before the terminal event: a client that reacts to it (on this or
			// another connection or instance) finds the session's state committed.
			d.bookkeep(resp)
			d.commit(ctx)
			if d.attempted {
				d.srv.metrics.recoveries.WithLabelValues(d.recovery, "succeeded").Inc()
			}
			if err := d.tr.relay(ev, false); err != nil {
				d.tr.dropUpstream()
				return "client_gone", nil
			}
			if err := d.tr.flush(); err != nil {
				d.tr.dropUpstream()
				return "client_gone", nil
			}
			if resp.ID != "" {
				// For the lane's next turn (previous.*), which cannot start before this one
				// returns: after the terminal event, not before it.
				d.lane.remember(d.t.Request, resp.Items)
			}
			// The outcome is a metric label, not a decision: the rules above did the books.
			if ev.kind == responses.EventCompleted || resp.Status == responses.StatusCompleted {
				return "completed", nil
			}
			return "failed", nil
		}
		if err := d.tr.relay(ev, ex.more()); err != nil {
			return "", &failure{err: errClientGone}
		}
		d.clientWritten = true
		wait = cfg.IdleTimeout
	}
}

// recover puts a failure through on_upstream_error: the rules retry (true), or answer the
// client, with the upstream's own error or one they chose; the outcome says how the turn ended.
func (d *turn) recover(ctx context.Context, f *failure) (bool, string) {
	e := &engine.UpstreamError{}
	if f.ev != nil {
		eb := f.ev.errorBody()
		e = &engine.UpstreamError{Status: eb.Status, Type: eb.Type, Code: eb.Code, Message: eb.Message, Param: eb.Param}
	} else {
		e.Transport = true
		e.Timeout = errors.Is(f.err, errUpstreamTimeout)
		e.Message = f.err.Error()
		var de *dialError
		if errors.As(f.err, &de) {
			// The upstream refused a new connection with a status: its status and error are
			// facts, as an error frame's would be.
			e.Status = de.status
			if eb, ok := responses.ParseErrorBody(de.body, de.status); ok {
				e.Type, e.Code, e.Param = eb.Type, eb.Code, eb.Param
			}
		}
	}
	rt := *d.t
	rt.Request = d.t.Request.Clone()
	rt.Error = e
	rt.Cached = d.tr.cached(d.lane)
	rt.Recovery = engine.Recovery{Enabled: d.srv.cfg.Recovery, Attempted: d.attempted, ClientWritten: d.clientWritten}
	rt.Replayed = false
	out := d.evaluate(engine.StageOnUpstreamError, &rt)
	reason := lastReason(out.Reasons())
	if out.Verdict == engine.VerdictRetry {
		d.srv.metrics.recoveries.WithLabelValues(reason, "retried").Inc()
		d.attempted, d.recovery = true, reason
		d.t = &rt
		return true, ""
	}
	result := "forwarded"
	if d.attempted {
		result = "failed"
	}
	d.srv.metrics.recoveries.WithLabelValues(reason, result).Inc()
	d.commit(ctx)
	if out.Verdict == engine.VerdictReject {
		_ = d.tr.writeError(rejection(out.Reject), nil)
	} else {
		_ = d.tr.writeError(forwarded(e), f.ev)
	}
	switch {
	case e.Timeout:
		return false, "upstream_timeout"
	case d.clientWritten:
		return false, "upstream_error"
	case out.Verdict == engine.VerdictReject:
		return false, "rejected"
	}
	return false, "error_forwarded"
}

// forwarded is the error a forward verdict sends when the upstream sent none of its own (a
// transport failure): the failure's facts, as an error with a status.
func forwarded(e *engine.UpstreamError) responses.ErrorBody {
	eb := responses.ErrorBody{Status: e.Status, Type: e.Type, Code: e.Code, Message: e.Message, Param: e.Param}
	if eb.Status == 0 {
		eb.Status = http.StatusBadGateway
	}
	if eb.Type == "" {
		eb.Type = "server_error"
	}
	return eb
}

// lastReason is the reason of the decisive rule: the last one that fired.
func lastReason(reasons []string) string {
	if len(reasons) == 0 {
		return "none"
	}
	return reasons[len(reasons)-1]
}
