package gateway

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"time"

	"chainmend/engine"
	"chainmend/responses"
	"chainmend/statestore"
)

// turn is one turn in flight: where it came from, the snapshot it is evaluated against from
// start to end, the turn context as it goes upstream, and the state changes its rules asked
// for that are not written yet.
type turn struct {
	srv   *Server
	tr    transport
	lane  *laneState
	scope statestore.Scope
	snap  *engine.Snapshot
	// connID names the client connection in logs (never a credential).
	connID string
	// ctx is the turn's context as the hooks made it (a span's); info what they know.
	ctx  context.Context
	info *TurnInfo
	// t is the turn context: after pre_send, and after each recovery, the request as sent.
	t *engine.Turn
	// start is the state the turn began with: post_response rules see the anchor, pending
	// calls and transcript as they were before this turn.
	startAnchor  string
	startPending engine.Pending
	startReplay  engine.Replay

	// batch holds the rules' state changes until the turn's one commit.
	batch statestore.Batch
	dirty bool

	began   time.Time
	reasons []string
	// attempted is set once a recovery was tried; clientWritten once anything of this turn
	// reached the client.
	attempted     bool
	clientWritten bool
	// recovery is the reason of the rule that chose the retry.
	recovery string
	// serverStarted marks a response the upstream started by itself (a steer's successor).
	serverStarted bool
	// forkItems is the transcript of the lane this one forked from, which the fork's own
	// transcript starts with.
	forkItems []statestore.ReplayItem
	// stored is the transcript as the store held it when the turn began (whole, not trimmed):
	// a full create that repeats it needs only its new items written (issue 14).
	stored   []statestore.ReplayItem
	forked   bool
	forkFrom string
	// found is set when the conversation was found by the response the create chains to.
	found bool
}

// fork seeds a new lane from the lane it forks: a create on a new lane chained to another
// lane's latest response (SPEC §10) continues that lane's conversation, so it starts with
// that lane's anchor, its previous payload, what the upstream holds for it, and (on the
// first append) its transcript.
func (d *turn) fork(ctx context.Context, lane, src *laneState, scope statestore.Scope) {
	lane.adopt(src)
	d.forked, d.forkFrom = true, src.name
	d.srv.log.Debug("lane forked", "session", scope.Session, "lane", lane.name, "from", src.name)
}

// conversationFinder finds the conversation a response belongs to (statestore.Tiered).
type conversationFinder interface {
	Conversation(ctx context.Context, tenant, responseID string) (statestore.Scope, statestore.Result)
}

// findConversation looks the conversation of responseID up within the turn's tenant. When it
// is another session or lane than the headers said, the lane adopts it for the rest of the
// connection, and its state is read in one pipelined round trip.
func (d *turn) findConversation(ctx context.Context, responseID string) (statestore.Scope, bool) {
	f, ok := d.srv.store.(conversationFinder)
	if !ok {
		return statestore.Scope{}, false
	}
	found, res := f.Conversation(ctx, d.scope.Tenant, responseID)
	if res != statestore.Hit || found.Tenant != d.scope.Tenant || (found.Session == d.scope.Session && found.Lane == d.scope.Lane) {
		return statestore.Scope{}, false
	}
	d.lane.storeSession, d.lane.storeLane, d.lane.adopted = found.Session, found.Lane, true
	if p, ok := d.srv.store.(statestore.Prefetcher); ok {
		p.Prefetch(ctx, found, responseID)
	}
	d.found = true
	d.srv.log.Debug("conversation found by response id", "lane", d.lane.name, "session", found.Session, "stored_lane", found.Lane)
	return found, true
}

// newTurn reads the lane's state and the store and builds the turn context (ARCHITECTURE:
// one turn). cached is what the upstream connection the turn will go out on holds for the lane.
func (s *Server) newTurn(ctx context.Context, tr transport, lane *laneState, req *responses.Request, scope statestore.Scope, snap *engine.Snapshot) *turn {
	d := &turn{srv: s, tr: tr, lane: lane, scope: scope, snap: snap, began: time.Now()}
	d.batch.Scope = scope
	t := &engine.Turn{
		Request:   req,
		Mode:      s.cfg.Mode,
		Transport: tr.kind(),
		Lane:      lane.name,
		Number:    lane.turns + 1,
		Cached:    tr.cached(lane),
		Previous:  lane.prev,
		Recovery:  engine.Recovery{Enabled: s.cfg.Recovery},
	}
	if prev := req.PreviousResponseID(); !lane.anchorKnown && lane.turns == 0 && prev != "" {
		if src := tr.forkSource(prev); src != nil {
			d.fork(ctx, lane, src, scope)
			t.Previous, t.Cached = lane.prev, tr.cached(lane)
		}
	}
	if !lane.anchorKnown {
		// The first turn of a connection (every HTTP request): the session's state may be
		// only in Redis, as when a client reconnects to another instance. One pipelined
		// read (anchor, transcript, and the pending calls of the response the request
		// chains to) instead of up to three in a row; a no-op when it is all local.
		if p, ok := s.store.(statestore.Prefetcher); ok {
			p.Prefetch(ctx, scope, req.PreviousResponseID())
		}
		if a, res := s.store.Anchor(ctx, scope); res == statestore.Hit {
			t.Anchor = a
		}
		if prev := req.PreviousResponseID(); t.Anchor == "" && prev != "" && !d.forked {
			// The headers named no conversation with an anchor (a client without session
			// headers that reconnected, to this instance or another): the response it
			// chains to names it, within its tenant (issue 17). A full create (no prev) is
			// never matched: it is self-contained.
			if found, ok := d.findConversation(ctx, prev); ok {
				scope = found
				d.scope, d.batch.Scope = found, found
				t.Lane = lane.name
				if a, res := s.store.Anchor(ctx, scope); res == statestore.Hit {
					t.Anchor = a
				}
			}
		}
	} else {
		t.Anchor = lane.anchor
	}
	if t.Anchor != "" {
		calls, res := s.store.Pending(ctx, scope.Tenant, t.Anchor)
		t.Pending = engine.Pending{Known: res == statestore.Hit, ResponseID: t.Anchor}
		if res == statestore.Hit {
			t.Pending.Calls = make([]engine.PendingCall, len(calls))
			for i, c := range calls {
				t.Pending.Calls[i] = engine.PendingCall{ID: c.ID, Kind: c.Kind}
			}
		}
	}
	replayScope := scope
	if d.forked {
		replayScope.Lane = d.forkFrom
	}
	tr2, res := s.store.Replay(ctx, replayScope)
	t.Replay.Known = res != statestore.Unknown
	if res == statestore.Hit && len(tr2.Items) > 0 {
		t.Replay.Available = true
		t.Replay.LastResponseID = tr2.LastResponseID
		t.Replay.Trimmed = tr2.Trimmed
		t.Replay.Load = func() ([]responses.Item, error) {
			items := make([]responses.Item, len(tr2.Items))
			for i, it := range tr2.Items {
				items[i] = responses.Item{Raw: it.Raw, Type: it.Type, CallID: it.CallID}
			}
			return items, nil
		}
	}
	if d.forked && res == statestore.Hit {
		d.forkItems = tr2.Items
	}
	if !d.forked && res == statestore.Hit && !tr2.Trimmed {
		d.stored = tr2.Items
	}
	d.t = t
	d.startAnchor, d.startPending, d.startReplay = t.Anchor, t.Pending, t.Replay
	lane.turns++
	return d
}

// evaluate runs one stage on t, notes what fired, and takes in the state changes the rules
// asked for. resp is the response a post_response stage bookkeeps.
func (d *turn) evaluate(stage string, t *engine.Turn) *engine.Outcome {
	out := d.snap.Evaluate(stage, t)
	if len(d.srv.hooks) > 0 {
		d.srv.hooks.stage(d.ctx, d.info, stage, t, out)
	}
	for _, f := range out.Fired {
		d.reasons = append(d.reasons, f.Reason)
	}
	d.srv.logFired(out, d.scope.Session, d.lane.name)
	d.absorb(&out.Effects, t)
	return out
}

// absorb applies the state changes of a stage: to the lane at once (the connection's memory
// and what its upstream holds), and to the batch the turn commits once.
func (d *turn) absorb(eff *engine.Effects, t *engine.Turn) {
	b := &d.batch
	if eff.Anchor != nil {
		a := *eff.Anchor
		b.Anchor = &a
		d.lane.setAnchor(a)
		d.dirty = true
	}
	if p := eff.PutPending; p != nil {
		calls := make([]statestore.Call, len(p.Calls))
		for i, c := range p.Calls {
			calls[i] = statestore.Call{ID: c.ID, Kind: c.Kind}
		}
		b.PutPending = &statestore.PendingPut{ResponseID: p.ResponseID, Calls: calls}
		d.dirty = true
	}
	for _, id := range eff.DeletePending {
		if !slices.Contains(b.DeletePending, id) {
			b.DeletePending = append(b.DeletePending, id)
			d.dirty = true
		}
	}
	switch eff.Transcript {
	case engine.TranscriptAppend, engine.TranscriptReset:
		if t.Response == nil {
			break
		}
		in := t.Request.Items()
		if eff.Transcript == engine.TranscriptReset {
			k := 0
			if len(d.stored) > 0 && !b.ReplayReset && len(b.ReplayAppend) == 0 {
				k = commonPrefix(in, d.stored)
			}
			switch {
			case k > 0 && k == len(d.stored):
				// The full create repeats the stored transcript and extends it: the same
				// transcript results from appending only the new items, and the commit
				// ships bytes in proportion to them, not to the whole conversation.
				in = in[k:]
			case k > 0:
				// It repeats the start of the stored transcript and then goes its own way
				// (a new last message, an edit, a client resending its history): the store
				// keeps that start and only the rest travels.
				b.ReplayReset, b.ReplayKeep, b.ReplayAppend = true, k, nil
				in = in[k:]
			default:
				b.ReplayReset, b.ReplayKeep, b.ReplayAppend = true, 0, nil
			}
		} else if d.forkItems != nil {
			// A fork's transcript starts as a copy of its source lane's.
			b.ReplayReset, b.ReplayKeep = true, 0
			b.ReplayAppend = append(slices.Clip(d.forkItems), b.ReplayAppend...)
			d.forkItems = nil
		}
		b.ReplayAppend = appendReplay(b.ReplayAppend, in, t.Response.Items)
		b.ReplayLastResponseID = t.Response.ID
		d.dirty = true
	case engine.TranscriptClear:
		b.ReplayReset, b.ReplayKeep, b.ReplayAppend, b.ReplayLastResponseID = true, 0, nil, ""
		d.dirty = true
	}
	if eff.UpstreamCached != nil {
		d.tr.hold(d.lane, *eff.UpstreamCached)
	}
}

// commit writes the turn's state changes in one pipelined round trip. It runs before the
// client gets the turn's last frame, so that a client that reacts to it (on this or another
// connection or instance) finds the state committed.
func (d *turn) commit(ctx context.Context) {
	if !d.dirty {
		return
	}
	d.dirty = false
	b := d.batch
	d.batch = statestore.Batch{Scope: d.scope}
	var done func(error)
	if len(d.srv.hooks) > 0 {
		done = d.srv.hooks.commit(d.ctx, d.info)
	}
	err := d.srv.store.Commit(detach(ctx), b)
	if done != nil {
		done(err)
	}
	if err != nil {
		d.srv.metrics.storeErrors.Inc()
		d.srv.log.Warn("bookkeeping write failed; local state kept", "err", err)
	}
}

// bookkeep runs post_response on a finished response (SPEC §5.3): the rules decide what
// becomes of the anchor, the pending calls, the transcript and the upstream connection's
// cache. (The lane remembers the payload once the terminal event is out: relay.)
func (d *turn) bookkeep(resp *engine.Response) {
	if resp.ID == "" {
		return
	}
	pt := *d.t
	pt.Anchor, pt.Pending, pt.Replay = d.startAnchor, d.startPending, d.startReplay
	pt.Cached = d.tr.cached(d.lane)
	pt.Error, pt.Recovery = nil, engine.Recovery{}
	pt.Response = resp
	d.evaluate(engine.StagePostResponse, &pt)
}

// responseOf gathers what a terminal event says of its response. items are the output items
// seen in output_item.done events; without them, the terminal event's own output counts.
func (d *turn) responseOf(kind string, ev responses.Event, items []responses.Item) *engine.Response {
	resp := &engine.Response{ID: ev.ResponseID, Status: ev.Status, Event: kind, Items: items,
		IncompleteReason: ev.IncompleteReason, ServerStarted: d.serverStarted, TerminalOutput: ev.HasOutput}
	if len(resp.Items) == 0 {
		resp.Items = ev.Output
	}
	resp.TerminalCalls = ev.OutputCalls
	d.tr.annotate(resp)
	return resp
}

// commonPrefix counts the leading items that are the stored transcript's: each the same
// bytes, or, for an item with an identity (an id or a call id), the same identity, since
// clients echo the server's items re-encoded (Codex does) and an id names one item.
func commonPrefix(items []responses.Item, stored []statestore.ReplayItem) int {
	n := min(len(items), len(stored))
	for i := 0; i < n; i++ {
		if bytes.Equal(items[i].Raw, stored[i].Raw) {
			continue
		}
		if items[i].ID == "" && items[i].CallID == "" {
			return i
		}
		it, err := responses.ParseItem(stored[i].Raw)
		if err != nil || it.Key() != items[i].Key() {
			return i
		}
	}
	return n
}

func appendReplay(dst []statestore.ReplayItem, in, out []responses.Item) []statestore.ReplayItem {
	dst = slices.Grow(dst, len(in)+len(out))
	for _, it := range in {
		dst = append(dst, statestore.ReplayItem{Raw: it.Raw, Type: it.Type, CallID: it.CallID})
	}
	for _, it := range out {
		dst = append(dst, statestore.ReplayItem{Raw: it.Raw, Type: it.Type, CallID: it.CallID})
	}
	return dst
}

// logFired writes one debug line per fired rule.
func (s *Server) logFired(out *engine.Outcome, session, lane string) {
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	for _, f := range out.Fired {
		s.log.Debug("rule fired", "session", session, "lane", lane, "stage", f.Stage, "policy", f.Policy,
			"rule", f.Rule, "reason", f.Reason, "shadow", f.Shadow, "set", out.Hash)
	}
}

func rejection(r *engine.Rejection) responses.ErrorBody {
	return responses.ErrorBody{Status: r.Status, Type: r.Type, Code: r.Code, Message: r.Message, Param: r.Param}
}
