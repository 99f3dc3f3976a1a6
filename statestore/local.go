package statestore

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// entry is one value of the local tier. Exactly one of calls, anchor, replay
// and the conversation (session, lane) is meaningful, chosen by the key's kind;
// neg marks a value known not to exist.
type entry struct {
	expires int64 // nanoseconds since the tier's epoch
	size    int
	// unconfirmed marks a value this instance wrote that Redis has not
	// (yet) taken. Such entries survive a flush after a lost subscription:
	// they are the only copy of that state.
	unconfirmed bool
	// kept marks an unconfirmed value whose commit failed (timed out, or
	// skipped by the open breaker): only the write-back brings it to Redis.
	kept bool
	// contests counts the announcements of another instance's write of a
	// kept value's key: only the write-back can tell, by the values'
	// versions, which of the two is newer, so no commit confirms it, and a
	// write-back only when none arrived since it took the value (see
	// invalidate).
	contests uint32
	neg      bool
	calls    []Call
	anchor   string
	replay   *replayState
	// session and lane are a KindConversation value.
	session, lane string

	// k, tu and the links place the entry in its tenant's recency list
	// (tenantUse), set while it is in the tier.
	k            lkey
	tu           *tenantUse
	tprev, tnext *entry
}

// tenantUse is what one tenant holds in the local tier, its entries in recency
// order (head the most recent), so that a tenant over its share gives up its own
// oldest entry without a scan.
type tenantUse struct {
	name       string
	bytes      int
	entries    int
	head, tail *entry
}

// evictNone marks a removal that is no eviction: an explicit one, or an expired
// entry dropped.
const evictNone = -1

// Eviction reasons, counted in chainmend_store_local_evictions_total.
const (
	evictEntries  = iota // the tier's entry bound (WithLocalEntries)
	evictBytes           // the tier's byte bound (WithLocalBytes)
	evictTenant          // a tenant over its share (WithTenantShare) gave up an entry in place of an older one of a tenant within its own
	evictOversize        // a value larger than the tier (or than one tenant's share) may hold was not kept
	numEvictReasons
)

var evictNames = [numEvictReasons]string{"entries", "bytes", "tenant_share", "oversize"}

// entryOverhead approximates the bookkeeping memory of one entry (list
// element, map slot, entry struct) for the byte bound.
const entryOverhead = 160

// minMaxLost is the least number of lost keys remembered (see localTier.lost),
// however small the tier.
const minMaxLost = 1 << 16

// genSlots spreads the backfill generations over a fixed array: a collision
// only costs a skipped backfill, never a stale value.
const genSlots = 256

// localTier is the in-process tier: an LRU bounded by entries and by bytes,
// with a deadline per entry.
type localTier struct {
	mu         sync.Mutex
	lru        *simplelru.LRU[lkey, *entry]
	bytes      int
	maxBytes   int
	maxEntries int

	// Each tenant's share of the bounds (WithTenantShare): while the tier is
	// full, tenants over theirs give up their own oldest entries before any
	// other tenant's, so one tenant cannot evict every other tenant's state.
	// Zero: no shares.
	shareBytes, shareEntries int
	tenants                  map[string]*tenantUse
	over                     map[*tenantUse]struct{} // tenants over their share
	// evicting is the reason of the removal in progress (evictNone: none).
	evicting  int
	evictions [numEvictReasons]atomic.Int64

	epoch time.Time
	seed  maphash.Seed
	// gen counts changes per key slot. A read-through snapshots it before
	// asking Redis and backfills only if it did not move, so a value read
	// before a delete or an invalidation cannot be resurrected by a slow
	// read.
	gen [genSlots]atomic.Uint64

	// Mirrors of the size for the metrics, readable without the lock.
	nEntries atomic.Int64
	nBytes   atomic.Int64

	// lost remembers keys whose unconfirmed value left the tier before
	// Redis took it (evicted, or too big to keep), with that value's
	// wall-clock expiry in unix ms. Redis may still hold an older value of
	// such a key: reads answer Unknown instead of reading it, and the
	// write-back deletes it (writeback.go). Bounded by maxLost; keys beyond
	// it are counted in untracked.
	lost      map[lkey]int64
	maxLost   int
	untracked atomic.Int64
	// removing marks an explicit removal (a newer value elsewhere, or a
	// value Redis holds), which onEvict must not count as a loss.
	removing bool
}

// newLocalTier returns a tier bounded by maxEntries and maxBytes, in which one
// tenant's share is share of each (1 or more: no shares).
func newLocalTier(maxEntries, maxBytes int, share float64) *localTier {
	t := &localTier{maxBytes: maxBytes, maxEntries: maxEntries, epoch: time.Now(), seed: maphash.MakeSeed(),
		lost: make(map[lkey]int64), maxLost: max(maxEntries, minMaxLost), evicting: evictNone,
		tenants: make(map[string]*tenantUse), over: make(map[*tenantUse]struct{})}
	if share > 0 && share < 1 {
		t.shareBytes = max(int(float64(maxBytes)*share), 1)
		t.shareEntries = max(int(float64(maxEntries)*share), 1)
	}
	// NewLRU fails only for a non-positive size, which the options exclude.
	// One more than the bound: makeRoomLocked evicts, by its rules, before
	// the LRU would on its own.
	t.lru, _ = simplelru.NewLRU[lkey, *entry](maxEntries+1, t.onEvict)
	return t
}

// onEvict runs under t.mu for every removal (eviction, Remove, Purge).
func (t *localTier) onEvict(k lkey, e *entry) {
	t.bytes -= e.size
	t.unlinkLocked(e)
	if t.evicting != evictNone {
		t.evictions[t.evicting].Add(1)
	}
	if e.unconfirmed && !t.removing {
		t.noteLostLocked(k, e)
	}
	t.publishSize()
}

// linkLocked adds e, just stored under k, to its tenant's use.
func (t *localTier) linkLocked(k lkey, e *entry) {
	tu := t.tenants[k.tenant]
	if tu == nil {
		tu = &tenantUse{name: k.tenant}
		t.tenants[k.tenant] = tu
	}
	e.k, e.tu = k, tu
	e.tprev, e.tnext = nil, tu.head
	if tu.head != nil {
		tu.head.tprev = e
	} else {
		tu.tail = e
	}
	tu.head = e
	tu.bytes += e.size
	tu.entries++
	t.noteShareLocked(tu)
}

// unlinkLocked removes e from its tenant's use.
func (t *localTier) unlinkLocked(e *entry) {
	tu := e.tu
	if tu == nil {
		return
	}
	if e.tprev != nil {
		e.tprev.tnext = e.tnext
	} else {
		tu.head = e.tnext
	}
	if e.tnext != nil {
		e.tnext.tprev = e.tprev
	} else {
		tu.tail = e.tprev
	}
	e.tu, e.tprev, e.tnext = nil, nil, nil
	tu.bytes -= e.size
	tu.entries--
	if tu.entries == 0 {
		delete(t.tenants, tu.name)
		delete(t.over, tu)
		return
	}
	t.noteShareLocked(tu)
}

// touchLocked makes e its tenant's most recent entry.
func (t *localTier) touchLocked(e *entry) {
	tu := e.tu
	if tu == nil || tu.head == e {
		return
	}
	e.tprev.tnext = e.tnext // e is not the head, so it has a predecessor
	if e.tnext != nil {
		e.tnext.tprev = e.tprev
	} else {
		tu.tail = e.tprev
	}
	e.tprev, e.tnext = nil, tu.head
	tu.head.tprev = e
	tu.head = e
}

// noteShareLocked records whether tu is over its share.
func (t *localTier) noteShareLocked(tu *tenantUse) {
	if t.shareBytes == 0 {
		return
	}
	if tu.bytes > t.shareBytes || tu.entries > t.shareEntries {
		t.over[tu] = struct{}{}
	} else {
		delete(t.over, tu)
	}
}

// maxValue is the largest value the tier keeps: half of it (a larger one
// would flush everything else), and no more than one tenant's share.
func (t *localTier) maxValue() int {
	if t.shareBytes > 0 {
		return min(t.maxBytes/2, t.shareBytes)
	}
	return t.maxBytes / 2
}

// makeRoomLocked evicts until the tier is within its bounds: the oldest entry of
// the tenant furthest over its share while one is, else the oldest entry of all.
// It keeps at least one entry.
func (t *localTier) makeRoomLocked() {
	for t.lru.Len() > 1 && (t.bytes > t.maxBytes || t.lru.Len() > t.maxEntries) {
		byCount := t.lru.Len() > t.maxEntries
		reason := evictBytes
		if byCount {
			reason = evictEntries
		}
		oldest, _, _ := t.lru.GetOldest()
		victim := oldest
		if tu := t.furthestOverLocked(byCount); tu != nil && tu.tail.k != oldest {
			victim, reason = tu.tail.k, evictTenant
		}
		t.evicting = reason
		t.lru.Remove(victim)
		t.evicting = evictNone
	}
}

// furthestOverLocked returns the tenant furthest over its share of entries
// (byCount) or bytes, nil when none is over.
func (t *localTier) furthestOverLocked(byCount bool) *tenantUse {
	var best *tenantUse
	for tu := range t.over {
		if best == nil || byCount && tu.entries > best.entries || !byCount && tu.bytes > best.bytes {
			best = tu
		}
	}
	return best
}

// noteLostLocked records that the unconfirmed value e of k is no longer held
// (see lost). An expired value is no loss: Redis's older copy expired too.
func (t *localTier) noteLostLocked(k lkey, e *entry) {
	left := e.expires - t.now()
	if left <= 0 {
		return
	}
	if _, ok := t.lost[k]; !ok && len(t.lost) >= t.maxLost {
		t.untracked.Add(1)
		return
	}
	t.lost[k] = time.Now().Add(time.Duration(left)).UnixMilli()
}

// isLost reports whether k's latest value was lost before Redis took it.
func (t *localTier) isLost(k lkey) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lost) == 0 {
		return false
	}
	_, ok := t.lost[k]
	return ok
}

func (t *localTier) publishSize() {
	t.nEntries.Store(int64(t.lru.Len()))
	t.nBytes.Store(int64(t.bytes))
}

// now returns monotonic nanoseconds since the epoch; cheaper to compare than
// time.Time and immune to wall-clock jumps.
func (t *localTier) now() int64 { return int64(time.Since(t.epoch)) }

func (t *localTier) deadline(ttl time.Duration) int64 { return t.now() + int64(ttl) }

func (t *localTier) slot(k lkey) *atomic.Uint64 {
	return &t.gen[maphash.Comparable(t.seed, k)%genSlots]
}

// generation returns the change counter of k's slot, for backfill.
func (t *localTier) generation(k lkey) uint64 { return t.slot(k).Load() }

// generations snapshots every slot's change counter, for a read whose answer
// names keys not known before it (the calls an anchor carries).
func (t *localTier) generations(dst *[genSlots]uint64) {
	for i := range t.gen {
		dst[i] = t.gen[i].Load()
	}
}

// generationIn returns k's change counter in a snapshot of generations.
func (t *localTier) generationIn(gens *[genSlots]uint64, k lkey) uint64 {
	return gens[maphash.Comparable(t.seed, k)%genSlots]
}

// lookupLocked returns the live entry of k, dropping an expired one.
func (t *localTier) lookupLocked(k lkey, now int64) (*entry, bool) {
	e, ok := t.lru.Get(k)
	if !ok {
		return nil, false
	}
	if e.expires <= now {
		t.lru.Remove(k)
		return nil, false
	}
	t.touchLocked(e)
	return e, true
}

// peekLocked is lookupLocked without touching recency.
func (t *localTier) peekLocked(k lkey, now int64) (*entry, bool) {
	e, ok := t.lru.Peek(k)
	if !ok || e.expires <= now {
		return nil, false
	}
	return e, true
}

func (t *localTier) pending(k lkey) (calls []Call, neg, ok bool) {
	now := t.now()
	t.mu.Lock()
	e, ok := t.lookupLocked(k, now)
	if ok {
		calls, neg = e.calls, e.neg
	}
	t.mu.Unlock()
	return calls, neg, ok
}

func (t *localTier) anchor(k lkey) (id string, neg, ok bool) {
	now := t.now()
	t.mu.Lock()
	e, ok := t.lookupLocked(k, now)
	if ok {
		id, neg = e.anchor, e.neg
	}
	t.mu.Unlock()
	return id, neg, ok
}

func (t *localTier) conversation(k lkey) (session, lane string, neg, ok bool) {
	now := t.now()
	t.mu.Lock()
	e, ok := t.lookupLocked(k, now)
	if ok {
		session, lane, neg = e.session, e.lane, e.neg
	}
	t.mu.Unlock()
	return session, lane, neg, ok
}

func (t *localTier) replay(k lkey) (tr Transcript, neg, ok bool) {
	now := t.now()
	t.mu.Lock()
	e, ok := t.lookupLocked(k, now)
	if ok {
		if e.neg || e.replay == nil || e.replay.broken {
			neg = true
		} else {
			tr = e.replay.transcript()
		}
	}
	t.mu.Unlock()
	return tr, neg, ok
}

// putLocked stores e under k, replacing any entry, and evicts while the tier is
// over its bounds (makeRoomLocked). A value larger than maxValue is not kept at
// all: it would flush everything else, or its tenant's whole share.
func (t *localTier) putLocked(k lkey, e *entry) {
	t.slot(k).Add(1)
	if len(t.lost) > 0 {
		delete(t.lost, k) // a newer value supersedes the lost one
	}
	if e.size > t.maxValue() {
		t.removing = true
		t.lru.Remove(k)
		t.removing = false
		t.evictions[evictOversize].Add(1)
		if e.unconfirmed {
			t.noteLostLocked(k, e)
		}
		return
	}
	if old, ok := t.lru.Peek(k); ok {
		// Add replaces silently without the evict callback.
		t.bytes -= old.size
		t.unlinkLocked(old)
	}
	t.lru.Add(k, e)
	t.bytes += e.size
	t.linkLocked(k, e)
	t.makeRoomLocked()
	t.publishSize()
}

// resizeLocked accounts for an entry whose value grew or shrank in place.
func (t *localTier) resizeLocked(k lkey, e *entry, size int) {
	t.slot(k).Add(1)
	t.bytes += size - e.size
	if tu := e.tu; tu != nil {
		tu.bytes += size - e.size
		t.noteShareLocked(tu)
	}
	e.size = size
	if e.size > t.maxValue() {
		t.evicting = evictOversize
		t.lru.Remove(k)
		t.evicting = evictNone
	}
	t.makeRoomLocked()
	t.publishSize()
}

func (t *localTier) removeLocked(k lkey) {
	t.slot(k).Add(1)
	if len(t.lost) > 0 {
		delete(t.lost, k)
	}
	t.removing = true
	t.lru.Remove(k)
	t.removing = false
}

// remove drops k.
func (t *localTier) remove(k lkey) {
	t.mu.Lock()
	t.removeLocked(k)
	t.mu.Unlock()
}

// invalidate drops k on another instance's announcement that it changed k in
// Redis. A value whose commit failed (kept) is kept instead, marked contested,
// and reported: it is this instance's only copy of that commit, and the
// announced write may be older than it (a slow Redis runs writes it timed out
// late). The write-back settles it by the values' versions: it writes it back
// over an older value, or drops it for a newer one. A response's pending calls
// are the exception: they are put once, by the turn that produced the
// response, so any write of them announced since is a later one (their
// answer, mostly, which leaves no version to compare) and wins. A value whose
// commit is in flight is dropped, as any other: its commit's outcome, or the
// next read, tells what Redis holds.
func (t *localTier) invalidate(k lkey) (contested bool) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.peekLocked(k, now); ok && e.unconfirmed && e.kept && (k.kind != KindPending || e.neg) {
		t.slot(k).Add(1) // a read-through in flight predates the announcement
		e.contests++
		return true
	}
	t.removeLocked(k)
	return false
}

// backfill stores a copy read from Redis unless k changed since gen was taken
// or a live entry exists (a local write is never older than a Redis read).
func (t *localTier) backfill(k lkey, e *entry, gen uint64) bool {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.slot(k).Load() != gen {
		return false
	}
	if _, ok := t.peekLocked(k, now); ok {
		return false
	}
	if _, ok := t.lost[k]; ok {
		return false // Redis's copy may predate the lost value
	}
	t.putLocked(k, e)
	return true
}

// flush drops every entry Redis is known to hold, keeping unconfirmed ones,
// and returns how many it dropped. It runs when invalidations may have been
// missed.
func (t *localTier) flush() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, k := range t.lru.Keys() {
		if e, ok := t.lru.Peek(k); ok && !e.unconfirmed {
			t.lru.Remove(k)
			n++
		}
	}
	for i := range t.gen {
		t.gen[i].Add(1)
	}
	t.publishSize()
	return n
}

// keyEntry is an entry a commit wrote, with its key.
type keyEntry struct {
	k lkey
	e *entry
}

// dropConfirmed drops k unless its value is one Redis has not taken yet.
func (t *localTier) dropConfirmed(k lkey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.lru.Peek(k); !ok || !e.unconfirmed {
		t.removeLocked(k)
	}
}

// keep marks the entries of a failed write as kept (see entry.kept), if they
// are still the ones that write stored.
func (t *localTier) keep(written []keyEntry) {
	t.mu.Lock()
	for _, w := range written {
		if cur, ok := t.lru.Peek(w.k); ok && cur == w.e {
			w.e.kept = true
		}
	}
	t.mu.Unlock()
}

// confirm marks the entries of a successful write as held by Redis, if they
// are still the ones that write stored.
func (t *localTier) confirm(written []keyEntry) {
	t.mu.Lock()
	for _, w := range written {
		if cur, ok := t.lru.Peek(w.k); ok && cur == w.e && cur.contests == 0 {
			w.e.unconfirmed = false
		}
	}
	t.mu.Unlock()
}

func (t *localTier) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lru.Len()
}

// has reports whether k has a live entry (tests).
func (t *localTier) has(k lkey) bool {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.peekLocked(k, now)
	return ok
}

func convSize(session, lane string) int { return entryOverhead + len(session) + len(lane) }

func callsSize(calls []Call) int {
	n := entryOverhead
	for _, c := range calls {
		n += 32 + len(c.ID) // Kind strings are shared constants
	}
	return n
}
