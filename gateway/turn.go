package gateway

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"chainmend/engine"
	"chainmend/responses"
	"chainmend/statestore"
)

// maxItemKeys bounds what a connection remembers of the previous turn's context.
const maxItemKeys = 20000

// memory is what a client connection remembers between turns. It outranks the store: it
// is what this very connection saw.
type memory struct {
	anchorKnown bool
	anchor      string
	prev        *engine.Previous
	turns       int
}

// turnCtx is one turn in flight: its scope, its snapshot, and the turn context the
// policies evaluate.
type turnCtx struct {
	scope    statestore.Scope
	snap     *engine.Snapshot
	t        *engine.Turn
	expected string
	replay   statestore.Result
	start    time.Time
	reasons  []string
}

// buildTurn reads the session's state and builds the turn context (ARCHITECTURE: one turn).
func (s *Server) buildTurn(ctx context.Context, req *responses.Request, transport string, hdr http.Header, connID string, mem *memory, cached string) *turnCtx {
	tc := &turnCtx{start: time.Now(), snap: s.snap.Load()}
	tc.scope = statestore.Scope{
		Tenant:  statestore.TenantOf(hdr.Get("Authorization")),
		Session: statestore.SessionOf(hdr, req.String("prompt_cache_key"), connID),
	}
	t := &engine.Turn{
		Request:   req,
		Mode:      s.cfg.Mode,
		Transport: transport,
		Number:    mem.turns + 1,
		Cached:    cached,
		Previous:  mem.prev,
		Recovery:  engine.Recovery{Enabled: s.cfg.Recovery},
	}
	if !mem.anchorKnown {
		// The first turn of a connection (every HTTP request): the session's state may be
		// only in Redis, as when a client reconnects to another instance. One pipelined
		// read (anchor, transcript, and the pending calls of the response the request
		// chains to) instead of up to three in a row; a no-op when it is all local.
		if p, ok := s.store.(statestore.Prefetcher); ok {
			p.Prefetch(ctx, tc.scope, req.PreviousResponseID())
		}
	}
	if mem.anchorKnown {
		t.Expected = mem.anchor
	} else if a, res := s.store.Anchor(ctx, tc.scope); res == statestore.Hit {
		t.Expected = a
	}
	tc.expected = t.Expected
	if t.Expected != "" {
		calls, res := s.store.Pending(ctx, tc.scope.Tenant, t.Expected)
		t.Pending = engine.Pending{Known: res == statestore.Hit, ResponseID: t.Expected}
		if res == statestore.Hit {
			t.Pending.Calls = make([]engine.PendingCall, len(calls))
			for i, c := range calls {
				t.Pending.Calls[i] = engine.PendingCall{ID: c.ID, Kind: c.Kind}
			}
		}
	}
	tr, res := s.store.Replay(ctx, tc.scope)
	tc.replay = res
	if res == statestore.Hit && len(tr.Items) > 0 {
		t.Replay = engine.Replay{
			Available:      true,
			LastResponseID: tr.LastResponseID,
			Trimmed:        tr.Trimmed,
			Load: func() ([]responses.Item, error) {
				items := make([]responses.Item, len(tr.Items))
				for i, it := range tr.Items {
					items[i] = responses.Item{Raw: it.Raw, Type: it.Type, CallID: it.CallID}
				}
				return items, nil
			},
		}
	}
	tc.t = t
	return tc
}

// recoveryTurn is the on_upstream_error context: the turn as sent, with the error.
func (tc *turnCtx) recoveryTurn(sent *responses.Request, e *engine.UpstreamError, attempted bool) *engine.Turn {
	t := *tc.t
	t.Request = sent.Clone()
	t.Error = e
	t.Recovery.Attempted = attempted
	t.Recovery.ClientWritten = false
	t.Replayed = false
	return &t
}

func (tc *turnCtx) note(out *engine.Outcome) {
	for _, f := range out.Fired {
		tc.reasons = append(tc.reasons, f.Reason)
	}
}

// logFired writes one debug line per fired rule.
func (s *Server) logFired(out *engine.Outcome, session string) {
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	for _, f := range out.Fired {
		s.log.Debug("rule fired", "session", session, "stage", f.Stage, "policy", f.Policy,
			"rule", f.Rule, "reason", f.Reason, "shadow", f.Shadow, "set", out.Hash)
	}
}

// bookkeep records what a finished response means for the session (SPEC §5.3): pending
// calls, anchor, replay transcript, and the connection's memory; all store writes go in
// one batch.
func (s *Server) bookkeep(ctx context.Context, tc *turnCtx, sent *responses.Request, term responses.Event, items []responses.Item, mem *memory) {
	if len(items) == 0 {
		items = term.Output
	}
	respID := term.ResponseID
	b := statestore.Batch{Scope: tc.scope}
	if respID == "" {
		return
	}
	var calls []statestore.Call
	for i := range items {
		if items[i].IsCall() {
			calls = append(calls, statestore.Call{ID: items[i].CallID, Kind: items[i].Type})
		}
	}
	completed := term.Type == responses.EventCompleted || term.Status == "completed"
	b.PutPending = &statestore.PendingPut{ResponseID: respID, Calls: calls}
	if tc.expected != "" && tc.expected != respID {
		b.DeletePending = []string{tc.expected}
	}
	anchor := ""
	if completed || len(calls) > 0 {
		anchor = respID
	}
	b.Anchor = &anchor
	mem.anchorKnown, mem.anchor = true, anchor

	prev := sent.PreviousResponseID()
	if anchor != "" && tc.replay != statestore.Unknown {
		switch {
		case prev == "":
			b.ReplayReset = true
			b.ReplayAppend = replayItems(sent.Items(), items)
			b.ReplayLastResponseID = respID
		case tc.t.Replay.Available && tc.t.Replay.LastResponseID == prev:
			b.ReplayAppend = replayItems(sent.Items(), items)
			b.ReplayLastResponseID = respID
		default:
			// The transcript does not end where this turn's chain starts: appending would
			// leave a gap, so it is emptied until the next full create.
			b.ReplayReset = true
		}
	}

	p := &engine.Previous{FieldDigests: sent.FieldDigests()}
	if prev != "" && mem.prev != nil {
		// The chain's keys grow in place: the previous Previous keeps its own length and
		// is only read, so extending its array is safe, and a long chain is not copied on
		// every turn (that was O(chain length) per turn, up to maxItemKeys strings).
		p.ItemKeys = mem.prev.ItemKeys
	}
	for i := range sent.Items() {
		p.ItemKeys = append(p.ItemKeys, sent.Items()[i].Key())
	}
	for i := range items {
		p.ItemKeys = append(p.ItemKeys, items[i].Key())
	}
	if len(p.ItemKeys) > maxItemKeys {
		p.ItemKeys = slices.Clone(p.ItemKeys[len(p.ItemKeys)-maxItemKeys:])
	}
	mem.prev = p

	if err := s.store.Commit(detach(ctx), b); err != nil {
		s.metrics.storeErrors.Inc()
		s.log.Warn("bookkeeping write failed; local state kept", "err", err)
	}
}

// clearAnchor records a cleared anchor outside a response's bookkeeping (a rejected or
// forwarded turn).
func (s *Server) clearAnchor(ctx context.Context, tc *turnCtx, mem *memory) {
	empty := ""
	mem.anchorKnown, mem.anchor = true, ""
	if err := s.store.Commit(detach(ctx), statestore.Batch{Scope: tc.scope, Anchor: &empty}); err != nil {
		s.metrics.storeErrors.Inc()
	}
}

func replayItems(in, out []responses.Item) []statestore.ReplayItem {
	r := make([]statestore.ReplayItem, 0, len(in)+len(out))
	for _, it := range in {
		r = append(r, statestore.ReplayItem{Raw: it.Raw, Type: it.Type, CallID: it.CallID})
	}
	for _, it := range out {
		r = append(r, statestore.ReplayItem{Raw: it.Raw, Type: it.Type, CallID: it.CallID})
	}
	return r
}

// upstreamErrorOf converts an upstream error body for the engine.
func upstreamErrorOf(e responses.ErrorBody) *engine.UpstreamError {
	return &engine.UpstreamError{Status: e.Status, Type: e.Type, Code: e.Code, Message: e.Message, Param: e.Param}
}

func rejection(r *engine.Rejection) responses.ErrorBody {
	return responses.ErrorBody{Status: r.Status, Type: r.Type, Code: r.Code, Message: r.Message, Param: r.Param}
}
