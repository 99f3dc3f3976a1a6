package statestore

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrClosed is returned by Commit after Close.
var ErrClosed = errors.New("statestore: store closed")

// ErrDegraded wraps the error of a Commit whose Redis write failed or was
// skipped by the open circuit breaker. The local tier holds the state; the
// turn goes on.
var ErrDegraded = errors.New("statestore: redis unavailable, state kept locally")

// Tiered is the two-tier Store: a local LRU in front of an optional Redis.
// It is safe for concurrent use.
type Tiered struct {
	cfg     config
	log     *slog.Logger
	local   *localTier
	metrics *metrics
	breaker *breaker

	// target is the parsed Redis URL; nil: local-only.
	target *target
	// conn is the client that fits the deployment, nil until it has said
	// what it is (detect.go); operations are skipped until then.
	conn atomic.Pointer[conn]
	// verified is closed when conn is set.
	verified chan struct{}
	// breakerState mirrors the breaker's state for Ready, which must not
	// wait on the breaker's lock (its callback reports readiness).
	breakerState atomic.Int32
	ready        readiness
	monDone      chan struct{}

	tokens atomic.Uint64 // replay write tokens

	// published counts the announcements this instance sent, and heard the
	// ones it received per sender, so that a test can wait until one
	// instance has heard everything another said (a commit that loads the
	// replay script announces twice, which key counts cannot tell).
	published atomic.Int64
	heard     sync.Map // instance id → *atomic.Int64

	closed    atomic.Bool
	closeOnce sync.Once
	stop      context.CancelFunc
	subDone   chan struct{}
	subMu     sync.Mutex
	sub       *redis.PubSub
	subReady  chan struct{}

	// Write-back of values committed while Redis was unreachable
	// (writeback.go).
	wbKick chan struct{}
	wbDone chan struct{}
	wbMu   sync.Mutex // one pass at a time
	// refusing is set while Redis refuses writes for want of memory (noteRefusal).
	refusing atomic.Bool
}

var _ Store = (*Tiered)(nil)

// subscribeWait bounds how long New waits for the invalidation subscription;
// an unreachable Redis must not hold up the gateway's start.
const subscribeWait = time.Second

// New returns a store. Without WithRedisURL it is local-only.
//
// With Redis, New first asks the deployment what it is (see WithRedisURL) and
// picks the client that fits; a URL that does not fit the server (a Sentinel
// or a replica behind redis://, a standalone server behind a cluster URL, an
// unknown master name) is an error naming the URL form to use. An unreachable
// Redis is not an error: the store starts not ready (see Ready), keeps asking
// in the background, and meanwhile serves from the local tier. An invalid URL
// or a metrics registration conflict is an error too.
func New(opts ...Option) (*Tiered, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if !cfg.convTTLSet {
		cfg.ttl[KindConversation] = cfg.ttl[KindAnchor]
	}
	if cfg.instanceID == "" {
		cfg.instanceID = randomID()
	}
	if strings.ContainsRune(cfg.instanceID, '\n') {
		return nil, errors.New("statestore: instance id must not contain a newline")
	}
	s := &Tiered{
		cfg:   cfg,
		log:   cfg.logger,
		local: newLocalTier(cfg.localEntries, cfg.localBytes, cfg.tenantShare),
	}
	s.ready.logged = causeUnlogged
	s.ready.starting = true
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "statestore")
	var first verdict
	if cfg.redisURL != "" {
		var err error
		if s.target, err = parseTarget(cfg.redisURL); err != nil {
			return nil, err
		}
		// Asked before anything is registered, so that a refusal leaves
		// nothing behind.
		ctx, cancel := context.WithTimeout(context.Background(), startProbeWait)
		first = verify(ctx, s.target)
		cancel()
		if first.refuse {
			return nil, first.err
		}
	}
	m, err := newMetrics(cfg.registerer, s.local)
	if err != nil {
		if first.conn != nil {
			_ = first.conn.close()
		}
		return nil, err
	}
	s.metrics = m
	s.breaker = newBreaker(cfg.breakerFailures, cfg.breakerCooldown, s.breakerChanged)
	if s.target == nil {
		s.started()
		s.log.Info("state store is local-only (no redis URL)")
		return s, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	s.verified = make(chan struct{})
	s.subDone = make(chan struct{})
	s.subReady = make(chan struct{})
	s.wbKick = make(chan struct{}, 1)
	s.wbDone = make(chan struct{})
	s.monDone = make(chan struct{})
	if first.conn != nil {
		s.install(first)
	} else {
		s.setProbeErr(first.err)
	}
	go s.subscribeLoop(ctx)
	go s.writebackLoop(ctx)
	go s.monitor(ctx)
	if first.conn != nil {
		select {
		case <-s.subReady:
		case <-time.After(subscribeWait):
			s.log.Warn("invalidation subscription not ready; continuing, it retries in the background")
		}
	}
	s.log.Info("state store started", "backend", s.Backend(), "redis", s.target.display(), "instance", cfg.instanceID)
	s.started()
	return s, nil
}

// Backend names the remote tier: "local" (none), "standalone", "sentinel" or
// "cluster". Until the deployment has said what it is, it is what the URL
// names.
func (s *Tiered) Backend() string {
	if c := s.conn.Load(); c != nil {
		return c.backend
	}
	if s.target != nil {
		return s.target.backend
	}
	return backendLocal
}

// client returns the Redis client; only for code that runs after do admitted
// an operation (or once verified), when it is set.
func (s *Tiered) client() redis.UniversalClient { return s.conn.Load().rdb }

// sharded reports whether invalidations use sharded pub/sub (Cluster).
func (s *Tiered) sharded() bool {
	c := s.conn.Load()
	return c != nil && c.sharded
}

// InstanceID returns the id this instance signs its invalidations with.
func (s *Tiered) InstanceID() string { return s.cfg.instanceID }

// Close stops the subscription and closes the Redis client. The local tier
// stays readable; Commit returns ErrClosed.
func (s *Tiered) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		defer s.refreshReady()
		if s.target == nil {
			return
		}
		s.stop()
		s.subMu.Lock()
		if s.sub != nil {
			_ = s.sub.Close() // unblocks the receive loop
		}
		s.subMu.Unlock()
		<-s.subDone
		<-s.wbDone
		<-s.monDone
		c := s.conn.Load()
		if c == nil {
			return // never reached: nothing to write back to
		}
		// A last write-back, so that what only this instance holds is not
		// lost with it.
		fctx, cancel := context.WithTimeout(context.Background(), closeWritebackWait)
		if _, werr := s.writeBack(fctx); werr != nil {
			s.log.Warn("state committed while redis was unreachable was not written back before close", "err", werr)
		}
		cancel()
		err = c.close()
	})
	return err
}

func (s *Tiered) breakerChanged(from, to int) {
	s.metrics.breakerState.Set(float64(to))
	s.breakerState.Store(int32(to))
	switch to {
	case breakerOpen:
		if from == breakerClosed {
			s.log.Warn("redis circuit breaker open: serving from the local tier", "cooldown", s.cfg.breakerCooldown)
		}
	case breakerClosed:
		s.log.Info("redis circuit breaker closed: redis is back")
		s.kickWriteback()
	}
	s.refreshReady()
}

func (s *Tiered) count(k Kind, tier int, r Result) { s.metrics.lookups[k][tier][r].Inc() }

// Pending returns the calls of responseID that still wait for their output.
func (s *Tiered) Pending(ctx context.Context, tenant, responseID string) ([]Call, Result) {
	k := lkey{kind: KindPending, tenant: tenant, id: responseID}
	if calls, neg, ok := s.local.pending(k); ok {
		return s.localAnswer(k.kind, neg, calls)
	}
	if s.target == nil {
		s.count(k.kind, tierLocal, Miss)
		return nil, Miss
	}
	if s.local.isLost(k) {
		s.count(k.kind, tierLocal, Unknown)
		return nil, Unknown
	}
	gen := s.local.generation(k)
	key := pendingKey(tenant, responseID)
	var val string
	err := s.do(ctx, opPending, func(ctx context.Context) error {
		var err error
		val, err = s.client().Get(ctx, key).Result()
		return err
	})
	return s.pendingFrom(k, gen, val, err)
}

// pendingFrom finishes a pending read from Redis (Pending, Prefetch): decode, backfill,
// count.
func (s *Tiered) pendingFrom(k lkey, gen uint64, val string, err error) ([]Call, Result) {
	if absent(val, err) {
		s.backfillNeg(k, gen)
		return nil, s.redisAnswer(k.kind, Miss)
	}
	if err != nil {
		return nil, s.redisAnswer(k.kind, Unknown)
	}
	calls, exp, err := decodePending(val)
	if err != nil {
		s.metrics.redisErrors[opPending].Inc()
		return nil, s.redisAnswer(k.kind, Unknown)
	}
	if deadline, ok := s.backfillDeadline(exp); ok {
		s.local.backfill(k, &entry{expires: deadline, size: callsSize(calls), calls: calls}, gen)
	}
	return calls, s.redisAnswer(k.kind, Hit)
}

func (s *Tiered) localAnswer(k Kind, neg bool, calls []Call) ([]Call, Result) {
	if neg {
		s.count(k, tierLocal, Miss)
		return nil, Miss
	}
	s.count(k, tierLocal, Hit)
	return calls, Hit
}

func (s *Tiered) redisAnswer(k Kind, r Result) Result {
	s.count(k, tierRedis, r)
	return r
}

// backfillNeg remembers briefly that Redis has no value, so repeated lookups
// of a new session do not each cost a round trip. Every write publishes an
// invalidation, which drops this marker on all instances.
func (s *Tiered) backfillNeg(k lkey, gen uint64) {
	s.local.backfill(k, &entry{expires: s.local.deadline(s.cfg.hotTTL), size: entryOverhead, neg: true}, gen)
}

// Anchor returns the session's last response id. A Hit is never "".
func (s *Tiered) Anchor(ctx context.Context, scope Scope) (string, Result) {
	k := lkey{kind: KindAnchor, tenant: scope.Tenant, id: scope.id()}
	if id, neg, ok := s.local.anchor(k); ok {
		if neg {
			s.count(k.kind, tierLocal, Miss)
			return "", Miss
		}
		s.count(k.kind, tierLocal, Hit)
		return id, Hit
	}
	if s.target == nil {
		s.count(k.kind, tierLocal, Miss)
		return "", Miss
	}
	if s.local.isLost(k) {
		s.count(k.kind, tierLocal, Unknown)
		return "", Unknown
	}
	gen := s.local.generation(k)
	var gens [genSlots]uint64
	s.local.generations(&gens)
	key := sessionKey(scope.Tenant, scope.id(), suffixAnchor)
	var val string
	err := s.do(ctx, opAnchor, func(ctx context.Context) error {
		var err error
		val, err = s.client().Get(ctx, key).Result()
		return err
	})
	return s.anchorFrom(k, gen, &gens, val, err)
}

// anchorFrom finishes an anchor read from Redis (Anchor, Prefetch). gens is the
// snapshot of every generation taken before the read, for the pending calls the
// anchor may carry.
func (s *Tiered) anchorFrom(k lkey, gen uint64, gens *[genSlots]uint64, val string, err error) (string, Result) {
	if absent(val, err) {
		s.backfillNeg(k, gen)
		return "", s.redisAnswer(k.kind, Miss)
	}
	if err != nil {
		return "", s.redisAnswer(k.kind, Unknown)
	}
	a, err := decodeAnchor(val)
	if err != nil || a.id == "" {
		s.metrics.redisErrors[opAnchor].Inc()
		return "", s.redisAnswer(k.kind, Unknown)
	}
	if deadline, ok := s.backfillDeadline(a.expiresMs); ok {
		s.local.backfill(k, &entry{expires: deadline, size: entryOverhead + len(a.id), anchor: a.id}, gen)
	}
	if a.carries {
		s.keepCarried(k.tenant, &a, gens)
	}
	return a.id, s.redisAnswer(k.kind, Hit)
}

// keepCarried keeps the pending calls an anchor read from Redis carries, as a
// Pending read of them would have, so that the Pending call that follows a
// moved session's first read is local: one round trip for a full create
// instead of two (issue 14). The rules of a read-through hold: a change of the
// key since the read began (a local write, or another instance's announcement
// of a delete or an overwrite) wins, as does any live local entry.
func (s *Tiered) keepCarried(tenant string, a *anchorValue, gens *[genSlots]uint64) {
	k := lkey{kind: KindPending, tenant: tenant, id: a.id}
	deadline, ok := s.backfillDeadline(a.callsExpMs)
	if !ok {
		return
	}
	s.local.backfill(k, &entry{expires: deadline, size: callsSize(a.calls), calls: a.calls}, s.local.generationIn(gens, k))
}

var _ ConversationFinder = (*Tiered)(nil)

// Conversation returns the conversation responseID belongs to within tenant: the scope of
// the commit that put the response's pending calls, with Tenant as given. A response of
// another tenant is never found: its key holds its own tenant.
func (s *Tiered) Conversation(ctx context.Context, tenant, responseID string) (Scope, Result) {
	k := lkey{kind: KindConversation, tenant: tenant, id: responseID}
	if responseID == "" || tenant == "" {
		s.count(k.kind, tierLocal, Miss)
		return Scope{}, Miss
	}
	if session, lane, neg, ok := s.local.conversation(k); ok {
		if neg {
			s.count(k.kind, tierLocal, Miss)
			return Scope{}, Miss
		}
		s.count(k.kind, tierLocal, Hit)
		return Scope{Tenant: tenant, Session: session, Lane: lane}, Hit
	}
	if s.target == nil {
		s.count(k.kind, tierLocal, Miss)
		return Scope{}, Miss
	}
	if s.local.isLost(k) {
		s.count(k.kind, tierLocal, Unknown)
		return Scope{}, Unknown
	}
	gen := s.local.generation(k)
	key := convKey(tenant, responseID)
	var val string
	err := s.do(ctx, opConversation, func(ctx context.Context) error {
		var err error
		val, err = s.client().Get(ctx, key).Result()
		return err
	})
	return s.conversationFrom(k, gen, val, err)
}

// conversationFrom finishes a conversation read from Redis (Conversation, Prefetch).
func (s *Tiered) conversationFrom(k lkey, gen uint64, val string, err error) (Scope, Result) {
	if absent(val, err) {
		s.backfillNeg(k, gen)
		return Scope{}, s.redisAnswer(k.kind, Miss)
	}
	if err != nil {
		return Scope{}, s.redisAnswer(k.kind, Unknown)
	}
	session, lane, exp, err := decodeConv(val)
	if err != nil {
		s.metrics.redisErrors[opConversation].Inc()
		return Scope{}, s.redisAnswer(k.kind, Unknown)
	}
	if deadline, ok := s.backfillDeadline(exp); ok {
		s.local.backfill(k, &entry{expires: deadline, size: convSize(session, lane), session: session, lane: lane}, gen)
	}
	return Scope{Tenant: k.tenant, Session: session, Lane: lane}, s.redisAnswer(k.kind, Hit)
}

// Replay returns the session's replay transcript. A transcript known to have
// a gap answers Miss.
func (s *Tiered) Replay(ctx context.Context, scope Scope) (Transcript, Result) {
	k := lkey{kind: KindReplay, tenant: scope.Tenant, id: scope.id()}
	if tr, neg, ok := s.local.replay(k); ok {
		if neg {
			s.count(k.kind, tierLocal, Miss)
			return Transcript{}, Miss
		}
		s.count(k.kind, tierLocal, Hit)
		return tr, Hit
	}
	if s.target == nil {
		s.count(k.kind, tierLocal, Miss)
		return Transcript{}, Miss
	}
	if s.local.isLost(k) {
		s.count(k.kind, tierLocal, Unknown)
		return Transcript{}, Unknown
	}
	gen := s.local.generation(k)
	listKey := sessionKey(scope.Tenant, scope.id(), suffixReplay)
	metaKey := sessionKey(scope.Tenant, scope.id(), suffixReplayMeta)
	var elems []string
	var meta []any
	err := s.do(ctx, opReplay, func(ctx context.Context) error {
		// One slot (shared hash tag), so one node and one round trip.
		cmds, err := s.client().Pipelined(ctx, func(p redis.Pipeliner) error {
			p.LRange(ctx, listKey, 0, -1)
			p.HMGet(ctx, metaKey, "b", "t", "l", "x", "e")
			return nil
		})
		if err != nil {
			return err
		}
		elems = cmds[0].(*redis.StringSliceCmd).Val()
		meta = cmds[1].(*redis.SliceCmd).Val()
		return nil
	})
	return s.replayFrom(k, gen, elems, meta, err)
}

// replayFrom finishes a replay read from Redis (Replay, Prefetch).
func (s *Tiered) replayFrom(k lkey, gen uint64, elems []string, meta []any, err error) (Transcript, Result) {
	if err != nil {
		return Transcript{}, s.redisAnswer(k.kind, Unknown)
	}
	st, exp, ok, err := decodeReplay(elems, meta)
	if err != nil {
		s.metrics.redisErrors[opReplay].Inc()
		return Transcript{}, s.redisAnswer(k.kind, Unknown)
	}
	if !ok {
		s.backfillNeg(k, gen)
		return Transcript{}, s.redisAnswer(k.kind, Miss)
	}
	// Take the view before the state is shared: once in the local tier a
	// Commit may append to it.
	tr := st.transcript()
	if deadline, ok := s.backfillDeadline(exp); ok {
		s.local.backfill(k, &entry{expires: deadline, size: st.size(), replay: st}, gen)
	}
	return tr, s.redisAnswer(k.kind, Hit)
}

// backfillDeadline returns the local deadline of a copy read from Redis: the
// hot TTL, but never past the value's own expiry. ok is false when the value
// is (by this host's clock) already at its end and not worth keeping.
func (s *Tiered) backfillDeadline(expiresMs int64) (int64, bool) {
	d := s.cfg.hotTTL
	if expiresMs > 0 {
		left := time.Until(time.UnixMilli(expiresMs))
		if left <= 0 {
			return 0, false
		}
		d = min(d, left)
	}
	return s.local.deadline(d), true
}

// decodeReplay builds a transcript from the list and the meta fields
// b, t, l, x, e. ok is false when there is none (or it is broken).
func decodeReplay(elems []string, meta []any) (st *replayState, expiresMs int64, ok bool, err error) {
	if len(meta) != 5 || meta[0] == nil {
		return nil, 0, false, nil // no meta hash: no transcript
	}
	if x, _ := meta[3].(string); x == "1" {
		return nil, 0, false, nil
	}
	if e, _ := meta[4].(string); e != "" {
		expiresMs, _ = strconv.ParseInt(e, 10, 64)
	}
	st = &replayState{items: make([]ReplayItem, 0, len(elems))}
	t, _ := meta[1].(string)
	st.trimmed = t == "1"
	st.last, _ = meta[2].(string)
	for _, e := range elems {
		it, err := decodeReplayItem(e)
		if err != nil {
			return nil, 0, false, err
		}
		st.items = append(st.items, it)
		st.bytes += len(it.Raw)
	}
	return st, expiresMs, true, nil
}
