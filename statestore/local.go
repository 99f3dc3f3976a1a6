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
	neg         bool
	calls       []Call
	anchor      string
	replay      *replayState
	// session and lane are a KindConversation value.
	session, lane string
}

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
	mu       sync.Mutex
	lru      *simplelru.LRU[lkey, *entry]
	bytes    int
	maxBytes int

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

func newLocalTier(maxEntries, maxBytes int) *localTier {
	t := &localTier{maxBytes: maxBytes, epoch: time.Now(), seed: maphash.MakeSeed(), lost: make(map[lkey]int64), maxLost: max(maxEntries, minMaxLost)}
	// NewLRU fails only for a non-positive size, which the options exclude.
	t.lru, _ = simplelru.NewLRU[lkey, *entry](maxEntries, t.onEvict)
	return t
}

// onEvict runs under t.mu for every removal (eviction, Remove, Purge).
func (t *localTier) onEvict(k lkey, e *entry) {
	t.bytes -= e.size
	if e.unconfirmed && !t.removing {
		t.noteLostLocked(k, e)
	}
	t.publishSize()
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

// putLocked stores e under k, replacing any entry, and evicts the oldest
// entries while the byte bound is exceeded. A value larger than half the
// bound is not kept at all: it would flush everything else.
func (t *localTier) putLocked(k lkey, e *entry) {
	t.slot(k).Add(1)
	if len(t.lost) > 0 {
		delete(t.lost, k) // a newer value supersedes the lost one
	}
	if e.size > t.maxBytes/2 {
		t.removing = true
		t.lru.Remove(k)
		t.removing = false
		if e.unconfirmed {
			t.noteLostLocked(k, e)
		}
		return
	}
	if old, ok := t.lru.Peek(k); ok {
		// Add replaces silently without the evict callback.
		t.bytes -= old.size
	}
	t.lru.Add(k, e) // may evict the oldest through onEvict
	t.bytes += e.size
	for t.bytes > t.maxBytes && t.lru.Len() > 1 {
		t.lru.RemoveOldest()
	}
	t.publishSize()
}

// resizeLocked accounts for an entry whose value grew or shrank in place.
func (t *localTier) resizeLocked(k lkey, e *entry, size int) {
	t.slot(k).Add(1)
	t.bytes += size - e.size
	e.size = size
	if e.size > t.maxBytes/2 {
		t.lru.Remove(k)
	}
	for t.bytes > t.maxBytes && t.lru.Len() > 1 {
		t.lru.RemoveOldest()
	}
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

// remove drops k (an invalidation from another instance).
func (t *localTier) remove(k lkey) {
	t.mu.Lock()
	t.removeLocked(k)
	t.mu.Unlock()
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

// confirm marks the entries of a successful write as held by Redis, if they
// are still the ones that write stored.
func (t *localTier) confirm(written []keyEntry) {
	t.mu.Lock()
	for _, w := range written {
		if cur, ok := t.lru.Peek(w.k); ok && cur == w.e {
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
