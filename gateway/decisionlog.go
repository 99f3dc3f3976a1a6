package gateway

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"

	"chainmend/engine"
	"chainmend/internal/decisionlog"
)

// The decision log (docs/policies.md, "Decision log and replay"): a TurnHook that keeps, for
// every turn, the facts each stage evaluated and what it decided, and hands the turn's
// record to a sink that writes it off the turn's path. policyctl replay re-evaluates the
// records against another policy set.
//
// The hook sees each stage after it ran (TurnHook.Stage), and a stage's actions change some
// of the facts it began with: the request (repairs), the anchor and its pending calls
// (set_anchor, clear_anchor), what the upstream connection holds (set_upstream_cached),
// turn.replayed, error.class. The facts a stage began with are worked out from what the turn
// showed:
//   - the request: unchanged since the last stage when its version is (a recovery clones
//     it, version included); a stage that changed it began with the previous stage's
//     result, or, for the turn's first stage, with the frame the request was parsed from;
//   - the anchor and pending calls: pre_send and post_response begin with the turn's
//     starting ones (post_response reads the anchor as the turn began), which any stage
//     that left them alone shows; on_upstream_error begins with what the stage before it
//     left. A stage that changed them while no stage of the turn showed the start gets
//     them from the hook's memory of the lane (what this gateway last saw the lane's anchor
//     become, and the calls it saw recorded for it), named in the stage's Inferred;
//   - upstream.cached: pre_send shows it. After a transport failure the connection is gone
//     (""), after a retry the new connection holds nothing yet (""); otherwise the turn is
//     still on pre_send's connection. A server-started response has no pre_send: its value
//     comes from the memory of the connection's lane (Inferred);
//   - turn.replayed is false and error.class "" when pre_send and on_upstream_error begin.

// DecisionSink takes the record of a finished turn. Write must not block: it reports
// whether the record was kept (decisionlog.Writer queues it, or drops and counts it).
type DecisionSink interface {
	Write(r *decisionlog.Record) bool
}

// DecisionLog is the TurnHook that writes a decision record per turn. Create it with
// NewDecisionLog and install it with WithTurnHook; without it, turns pay nothing.
type DecisionLog struct {
	sink DecisionSink

	// mu guards the memory of lanes, which turns of every connection read and update.
	mu      sync.Mutex
	anchors *simplelru.LRU[laneKey, string]
	pending *simplelru.LRU[pendingKey, []engine.PendingCallFacts]
	cached  *simplelru.LRU[connLaneKey, string]

	records *prometheus.CounterVec
}

type laneKey struct{ tenant, session, lane string }

type pendingKey struct{ tenant, response string }

type connLaneKey struct{ conn, lane string }

// DecisionLogOption configures a DecisionLog.
type DecisionLogOption func(*decisionLogConfig)

type decisionLogConfig struct {
	memory int
	reg    prometheus.Registerer
}

// DefaultDecisionMemory is how many lanes (and as many responses' pending calls) the
// decision log remembers for the facts a turn does not show.
const DefaultDecisionMemory = 16384

// WithDecisionMemory sets how many lanes the decision log remembers (default
// DefaultDecisionMemory); the least recently used are forgotten first.
func WithDecisionMemory(n int) DecisionLogOption {
	return func(c *decisionLogConfig) { c.memory = n }
}

// WithDecisionRegisterer registers chainmend_decision_log_records_total{result} (queued or
// dropped) through r.
func WithDecisionRegisterer(r prometheus.Registerer) DecisionLogOption {
	return func(c *decisionLogConfig) { c.reg = r }
}

// NewDecisionLog returns the hook writing to sink.
func NewDecisionLog(sink DecisionSink, opts ...DecisionLogOption) (*DecisionLog, error) {
	cfg := decisionLogConfig{memory: DefaultDecisionMemory}
	for _, o := range opts {
		o(&cfg)
	}
	if sink == nil {
		return nil, errors.New("decision log: no sink")
	}
	if cfg.memory < 1 {
		return nil, errors.New("decision log: memory must hold at least one lane")
	}
	l := &DecisionLog{sink: sink}
	// NewLRU fails only for a size below 1, refused above.
	l.anchors, _ = simplelru.NewLRU[laneKey, string](cfg.memory, nil)
	l.pending, _ = simplelru.NewLRU[pendingKey, []engine.PendingCallFacts](cfg.memory, nil)
	l.cached, _ = simplelru.NewLRU[connLaneKey, string](cfg.memory, nil)
	l.records = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "chainmend", Name: "decision_log_records_total",
		Help: "Decision records by result: queued for the file, or dropped because the queue was full.",
	}, []string{"result"})
	if cfg.reg != nil {
		if err := cfg.reg.Register(l.records); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, errors.Join(errors.New("decision log: register metrics"), err)
			}
			l.records = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	return l, nil
}

var _ TurnHook = (*DecisionLog)(nil)

type decisionKey struct{}

// turnDecisions is what the hook knows of one turn in flight. A turn's hook calls come one
// after another, so it needs no lock.
type turnDecisions struct {
	began    time.Time
	stages   []decisionlog.Stage
	previous *engine.PreviousFacts
	// last is what the previous stage left; the next stage of the turn starts from it.
	last *stageLeft
	// start is the anchor and pending calls the turn began with, once known; exact when a
	// stage showed them, else from the memory of the lane. startUsers are the stages that
	// took an inexact start, corrected when a later stage shows it.
	start      startFacts
	startUsers []int
	// startCached is what the upstream connection held when pre_send ran.
	startCached      string
	startCachedKnown bool
	retried          bool
	// anchorSet is set once a stage of the turn changed the anchor.
	anchorSet bool
}

type stageLeft struct {
	version uint64
	request engine.RequestFacts
	anchor  string
	pending engine.PendingFacts
}

type startFacts struct {
	known, exact bool
	anchor       string
	pending      engine.PendingFacts
}

// Begin implements TurnHook: the turn's record starts.
func (l *DecisionLog) Begin(ctx context.Context, _ *TurnInfo) context.Context {
	return context.WithValue(ctx, decisionKey{}, &turnDecisions{began: time.Now()})
}

// Upstream implements TurnHook; the decision log has nothing to say about an attempt.
func (l *DecisionLog) Upstream(context.Context, *TurnInfo, http.Header) func(error) { return nil }

// Commit implements TurnHook; the effects are in the stage records already.
func (l *DecisionLog) Commit(context.Context, *TurnInfo) func(error) { return nil }

// End implements TurnHook: the turn's record goes to the sink.
func (l *DecisionLog) End(ctx context.Context, t *TurnInfo, outcome string) {
	td, _ := ctx.Value(decisionKey{}).(*turnDecisions)
	if td == nil || len(td.stages) == 0 {
		return
	}
	rec := &decisionlog.Record{
		V: decisionlog.Version, Time: td.began.UTC(), ID: turnID(t), Transport: t.Transport, Tenant: t.Tenant,
		Session: t.Session, Lane: t.Lane, Conn: t.Conn, Number: t.Number, ServerStarted: t.ServerStarted,
		PolicySet: t.PolicySet, Store: t.Store, Outcome: outcome,
		Millis:   float64(time.Since(td.began).Microseconds()) / 1000,
		Previous: td.previous, Stages: td.stages,
	}
	if l.sink.Write(rec) {
		l.records.WithLabelValues("queued").Inc()
	} else {
		l.records.WithLabelValues("dropped").Inc()
	}
}

// turnID names a turn: its connection, its lane unless it is the default one, its number.
func turnID(t *TurnInfo) string {
	id := t.Conn
	if t.Lane != "" {
		id += "/" + t.Lane
	}
	return id + "#" + strconv.Itoa(t.Number)
}

// Stage implements TurnHook: it records the facts the stage began with and what it decided.
func (l *DecisionLog) Stage(ctx context.Context, t *TurnInfo, stage string, turn *engine.Turn, out *engine.Outcome) {
	td, _ := ctx.Value(decisionKey{}).(*turnDecisions)
	if td == nil {
		return
	}
	// The request's facts are derived below, only when the stage changed the request or
	// is the turn's first: a stage that left it alone began with what the last one left.
	bare := *turn
	bare.Request = nil
	left := engine.FactsOf(&bare)
	if td.previous == nil {
		td.previous = left.Previous
	}
	in := left
	in.Previous = nil
	st := decisionlog.Stage{Stage: stage, Verdict: string(out.Verdict), Reject: decisionlog.RejectOf(out.Reject),
		Fired: out.Fired, Effects: engine.EffectsFactsOf(&out.Effects), Micros: out.Duration.Microseconds()}
	if out.Err != nil {
		st.Error = out.Err.Error()
	}
	td.request(turn, &in, &st)
	if stage != engine.StagePostResponse {
		in.Replayed = false
	}
	if in.Error != nil {
		// classify sets the class; every upstream error begins without one.
		e := *in.Error
		e.Class = ""
		in.Error = &e
	}
	l.anchor(td, t, stage, out, &in, &st, &left)
	l.upstreamCached(td, t, stage, out, &in, &st)

	st.Input = in
	td.stages = append(td.stages, st)
	after := in.Request
	if st.After != nil {
		after = *st.After
	}
	td.last = &stageLeft{version: turn.Request.Version(), request: after, anchor: left.Anchor, pending: left.Pending}
	if stage == engine.StagePreSend {
		td.startCached, td.startCachedKnown = left.Cached, true
	}
	if stage == engine.StageOnUpstreamError && out.Verdict == engine.VerdictRetry {
		td.retried = true
	}
	l.remember(td, t, stage, out, &left)
}

// request works out the request the stage began with and, when the stage changed it, what
// it left (st.After).
func (td *turnDecisions) request(turn *engine.Turn, in *engine.TurnFacts, st *decisionlog.Stage) {
	if td.last != nil && turn.Request.Version() == td.last.version {
		in.Request = td.last.request
		return
	}
	left := engine.RequestFactsOf(turn.Request, turn.Replay.Items)
	switch {
	case td.last != nil:
		in.Request = td.last.request
		st.After = &left
	case !turn.Request.Modified():
		// The turn's first stage, which left the request as parsed: what it left is what it
		// began with.
		in.Request = left
	default:
		rf, err := engine.ParseRequestFacts(turn.Request.Raw())
		if err != nil {
			st.Unknown = append(st.Unknown, "request")
		} else {
			in.Request = rf
		}
		st.After = &left
	}
}

// usesStart reports whether a stage begins with the anchor the turn began with.
func (td *turnDecisions) usesStart(stage string) bool {
	return stage != engine.StageOnUpstreamError || td.last == nil
}

// anchor works out the anchor and pending calls the stage began with.
func (l *DecisionLog) anchor(td *turnDecisions, t *TurnInfo, stage string, out *engine.Outcome, in *engine.TurnFacts, st *decisionlog.Stage, left *engine.TurnFacts) {
	switch {
	case out.Effects.Anchor == nil:
		// The stage left them alone: they are what it began with.
		if td.usesStart(stage) {
			td.showStart(left.Anchor, left.Pending)
		}
	case !td.usesStart(stage):
		in.Anchor, in.Pending = td.last.anchor, td.last.pending
	default:
		if !td.start.known {
			td.start = l.recall(t)
		}
		switch {
		case td.start.exact:
		case td.start.known:
			st.Inferred = append(st.Inferred, "session.anchor", "pending")
			td.startUsers = append(td.startUsers, len(td.stages))
		default:
			st.Unknown = append(st.Unknown, "session.anchor", "pending")
			td.startUsers = append(td.startUsers, len(td.stages))
		}
		in.Anchor, in.Pending = td.start.anchor, td.start.pending
	}
}

// showStart records the turn's starting anchor as a stage showed it, and corrects the
// stages that took it from memory.
func (td *turnDecisions) showStart(anchor string, pending engine.PendingFacts) {
	if td.start.exact {
		return
	}
	td.start = startFacts{known: true, exact: true, anchor: anchor, pending: pending}
	for _, i := range td.startUsers {
		s := &td.stages[i]
		s.Input.Anchor, s.Input.Pending = anchor, pending
		s.Inferred = dropFacts(s.Inferred, "session.anchor", "pending")
		s.Unknown = dropFacts(s.Unknown, "session.anchor", "pending")
	}
	td.startUsers = nil
}

func dropFacts(list []string, drop ...string) []string {
	out := slices.DeleteFunc(list, func(s string) bool { return slices.Contains(drop, s) })
	if len(out) == 0 {
		return nil
	}
	return out
}

// recall returns the lane's anchor and pending calls as this gateway last saw them.
func (l *DecisionLog) recall(t *TurnInfo) startFacts {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.anchors.Get(laneKey{t.Tenant, t.Session, t.Lane})
	if !ok {
		return startFacts{}
	}
	s := startFacts{known: true, anchor: a}
	if a != "" {
		// As the gateway reads them: the pending calls of the anchor, unknown when the
		// store has none.
		s.pending.ResponseID = a
		if calls, ok := l.pending.Get(pendingKey{t.Tenant, a}); ok {
			s.pending.Known, s.pending.Calls = true, calls
		}
	}
	return s
}

// upstreamCached works out what the upstream connection held when the stage began.
func (l *DecisionLog) upstreamCached(td *turnDecisions, t *TurnInfo, stage string, out *engine.Outcome, in *engine.TurnFacts, st *decisionlog.Stage) {
	if out.Effects.UpstreamCached == nil {
		return
	}
	switch {
	case stage == engine.StageOnUpstreamError && in.Error != nil && in.Error.Transport:
		// The gateway dropped the connection that failed before recovering.
		in.Cached = ""
	case td.retried:
		// Every retry goes out on a fresh connection, which holds nothing for the lane yet.
		in.Cached = ""
	case td.startCachedKnown:
		in.Cached = td.startCached
	default:
		l.mu.Lock()
		c, ok := l.cached.Get(connLaneKey{t.Conn, t.Lane})
		l.mu.Unlock()
		in.Cached = c
		if ok {
			st.Inferred = append(st.Inferred, "upstream.cached")
		} else {
			st.Unknown = append(st.Unknown, "upstream.cached")
		}
	}
}

// remember updates the memory of the lane with what the stage showed and changed, as the
// gateway's store and connection state change.
func (l *DecisionLog) remember(td *turnDecisions, t *TurnInfo, stage string, out *engine.Outcome, left *engine.TurnFacts) {
	eff := &out.Effects
	lk := laneKey{t.Tenant, t.Session, t.Lane}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case eff.Anchor != nil:
		l.anchors.Add(lk, *eff.Anchor)
		td.anchorSet = true
	case td.start.exact && !td.anchorSet:
		l.anchors.Add(lk, td.start.anchor)
	}
	if td.start.exact && td.start.anchor != "" && !td.anchorSet {
		if p := td.start.pending; p.Known {
			l.pending.Add(pendingKey{t.Tenant, p.ResponseID}, p.Calls)
		} else {
			l.pending.Remove(pendingKey{t.Tenant, td.start.anchor})
		}
	}
	if p := eff.PutPending; p != nil {
		calls := make([]engine.PendingCallFacts, len(p.Calls))
		for i, c := range p.Calls {
			calls[i] = engine.PendingCallFacts{ID: c.ID, Kind: c.Kind}
		}
		l.pending.Add(pendingKey{t.Tenant, p.ResponseID}, calls)
	}
	for _, id := range eff.DeletePending {
		l.pending.Remove(pendingKey{t.Tenant, id})
	}
	ck := connLaneKey{t.Conn, t.Lane}
	switch {
	case eff.UpstreamCached != nil:
		l.cached.Add(ck, *eff.UpstreamCached)
	case stage == engine.StagePreSend:
		l.cached.Add(ck, left.Cached)
	}
}
