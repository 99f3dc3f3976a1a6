package gateway

import (
	"context"
	"net/http"

	"chainmend/engine"
)

// TurnHook observes turns: tracing and the decision log implement it. Hooks see facts and
// outcomes; they never change what a turn does. Every method must be cheap and safe for
// concurrent use: hooks run on the turn's hot path.
type TurnHook interface {
	// Begin is called once a turn has its context, before pre_send (or, for a response the
	// server started, before its first event); the returned context is the turn's from then
	// on (a span's, say).
	Begin(ctx context.Context, t *TurnInfo) context.Context
	// Stage is called after each stage evaluation with the turn context it evaluated.
	Stage(ctx context.Context, t *TurnInfo, stage string, turn *engine.Turn, out *engine.Outcome)
	// Upstream is called when an attempt goes upstream, with the headers of an HTTP request
	// (nil on a WebSocket lane, whose headers went with the handshake) so that trace context
	// can be injected; the returned function is called when the attempt ends.
	Upstream(ctx context.Context, t *TurnInfo, h http.Header) func(err error)
	// Commit is called before the turn's store commit; the returned function after it.
	Commit(ctx context.Context, t *TurnInfo) func(err error)
	// End is called once with the turn's outcome label.
	End(ctx context.Context, t *TurnInfo, outcome string)
}

// TurnInfo is what a hook may know of a turn: identifiers and labels, never content or
// credentials. Tenant is a hash.
type TurnInfo struct {
	Transport     string
	Tenant        string
	Session       string
	Lane          string
	Conn          string
	Number        int
	ServerStarted bool
	PolicySet     string
	// Store is the store's tier ("redis" or "local").
	Store string
	// TraceParent and TraceState are the client's W3C trace context headers (the request's,
	// or the WebSocket handshake's), for a tracing hook to continue the client's trace.
	TraceParent, TraceState string
}

// WithTurnHook adds an observer of every turn.
func WithTurnHook(h TurnHook) Option { return func(s *Server) { s.hooks = append(s.hooks, h) } }

// hookSet calls every hook; with none it costs a length check.
type hookSet []TurnHook

func (hs hookSet) begin(ctx context.Context, t *TurnInfo) context.Context {
	for _, h := range hs {
		ctx = h.Begin(ctx, t)
	}
	return ctx
}

func (hs hookSet) stage(ctx context.Context, t *TurnInfo, stage string, turn *engine.Turn, out *engine.Outcome) {
	for _, h := range hs {
		h.Stage(ctx, t, stage, turn, out)
	}
}

func (hs hookSet) upstream(ctx context.Context, t *TurnInfo, hdr http.Header) func(error) {
	if len(hs) == 0 {
		return nil
	}
	ends := make([]func(error), 0, len(hs))
	for _, h := range hs {
		if f := h.Upstream(ctx, t, hdr); f != nil {
			ends = append(ends, f)
		}
	}
	return func(err error) {
		for _, f := range ends {
			f(err)
		}
	}
}

func (hs hookSet) commit(ctx context.Context, t *TurnInfo) func(error) {
	if len(hs) == 0 {
		return nil
	}
	ends := make([]func(error), 0, len(hs))
	for _, h := range hs {
		if f := h.Commit(ctx, t); f != nil {
			ends = append(ends, f)
		}
	}
	return func(err error) {
		for _, f := range ends {
			f(err)
		}
	}
}

func (hs hookSet) end(ctx context.Context, t *TurnInfo, outcome string) {
	for _, h := range hs {
		h.End(ctx, t, outcome)
	}
}
