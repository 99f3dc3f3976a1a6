package statestore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Write-back. A commit whose Redis write fails keeps its values in the local
// tier only, marked unconfirmed. When Redis stops answering but keeps its
// data (a network blip, a paused or overloaded server), it still holds the
// values from before: without a write-back another instance would read that
// stale anchor, pending calls and transcript and repair a moved session
// against them, silently. So once Redis answers again (the circuit breaker
// closes, the subscription is restored, or a retry after a failed commit
// succeeds) every unconfirmed value is written back with its remaining TTL,
// through the same scripts as a commit (the transcript as a reset from the
// local items, also after a reset that kept a prefix of Redis's: a write-back
// never keeps anything Redis holds), and announced to the other instances.
//
// A write-back never overwrites a newer value: the scripts compare the
// value's expiry (written with every value) and leave a value written later
// (by another instance, or by this one's next commit) in place; the local
// copy is then dropped. A value that cannot be written back (it was evicted
// from the local tier before Redis answered, or Redis refuses it) is deleted
// from Redis instead (a tombstone that keeps the delete's version; a
// transcript is marked broken), so readers see a miss rather than stale state.
// While Redis refuses writes for want of memory, nothing is written back and
// nothing deleted: the values stay unconfirmed until it takes them.
const (
	wbBatchKeys  = 128             // keys per pipeline
	wbBatchBytes = 8 << 20         // transcript bytes per pipeline
	wbTimeout    = 2 * time.Second // one pipeline
	wbMaxPasses  = 4               // passes in a row while commits race the write-back
	wbMinBackoff = 50 * time.Millisecond
	wbMaxBackoff = 2 * time.Second

	// closeWritebackWait bounds the last write-back in Close.
	closeWritebackWait = time.Second
)

// guardScript writes back a pending, anchor or conversation value unless Redis
// holds one written later (a larger expiry in its header, whose version is '1',
// '2' for an anchor that carries calls, or '0' for a tombstone).
//
// KEYS: key. ARGV: op ('s' set, 'd' delete), expiry unix ms, value (for a
// delete, its tombstone), ttl ms, contested ('1': only over an older value, see
// below). It returns 1 when it wrote, 0 when a newer value was left in place. A
// delete leaves a tombstone (see tombstoneVersion), which Redis refuses under
// OOM like any write: a pass then writes back nothing, not the deletes alone.
//
// A contested value (localTier.invalidate: another instance announced a write
// of the key after this one's failed) is set only over an older value: a key
// that is gone was deleted by that announced write, and a delete leaves no
// expiry to compare, so the delete wins.
var guardScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if not cur and ARGV[1] == 's' and ARGV[5] == '1' then
  return 0
end
if cur and string.byte(cur, 1) >= 48 and string.byte(cur, 1) <= 50 then
  local n, mul, e = 0, 1, nil
  for i = 2, math.min(#cur, 11) do
    local b = string.byte(cur, i)
    if b < 128 then
      e = n + b * mul
      break
    end
    n = n + (b - 128) * mul
    mul = mul * 128
  end
  if e and e > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
`)

// kickWriteback asks the write-back loop for a pass; it never blocks.
func (s *Tiered) kickWriteback() {
	if s.wbKick == nil {
		return
	}
	select {
	case s.wbKick <- struct{}{}:
	default:
	}
}

// writebackLoop runs passes when kicked, retrying a failed one with a backoff
// until it succeeds (its first Redis operation is the breaker's probe, so
// recovery does not wait for traffic) or the store closes.
func (s *Tiered) writebackLoop(ctx context.Context) {
	defer close(s.wbDone)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wbKick:
		}
		backoff := wbMinBackoff
		for passes := 0; ctx.Err() == nil; {
			again, err := s.writeBack(ctx)
			s.noteRefusal(err)
			if err == nil {
				passes++
				if !again || passes >= wbMaxPasses {
					break
				}
				continue
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			case <-s.wbKick: // the breaker closed or the subscription is back
			}
			backoff = min(2*backoff, wbMaxBackoff)
		}
	}
}

// noteRefusal logs once when Redis starts refusing writes for want of memory;
// acceptsWrites logs once when a write goes through again. In between nothing is
// written back, and no log line says it was.
func (s *Tiered) noteRefusal(err error) {
	if errors.Is(err, errRefusesWrites) && !s.refusing.Swap(true) {
		s.log.Warn("redis refuses writes (out of memory): state committed meanwhile stays local and is written back once it accepts them", "err", err)
	}
}

// acceptsWrites ends a refusal noted by noteRefusal (see there).
func (s *Tiered) acceptsWrites() {
	if s.refusing.Swap(false) {
		s.log.Info("redis accepts writes again")
	}
}

// wbItem is one key of a write-back pass.
type wbItem struct {
	k lkey
	e *entry // nil: a lost key (see localTier.lost)

	skip     bool
	contests uint32 // e.contests when the values below were taken
	version  int64  // e.expires when the values below were taken
	expMs    int64  // the value's expiry, unix ms
	ttl      time.Duration
	del      bool // delete (or, for a transcript, mark broken)
	calls    []Call
	anchor   string
	session  string // a conversation's
	lane     string
	items    []ReplayItem
	last     string
	trimmed  bool
	bytes    int

	cmd    *redis.Cmd
	result int // a wb* result
}

// writeBack writes every unconfirmed value and every lost key to Redis. again
// reports values that changed while it ran, which a next pass should check.
func (s *Tiered) writeBack(ctx context.Context) (again bool, err error) {
	if s.target == nil {
		return false, nil
	}
	s.wbMu.Lock()
	defer s.wbMu.Unlock()
	// Redis must answer before the local tier is scanned.
	if err := s.do(ctx, opWriteback, func(ctx context.Context) error { return s.client().Ping(ctx).Err() }); err != nil {
		return false, err
	}
	items := s.local.dirty()
	if n := s.local.untracked.Swap(0); n > 0 {
		s.metrics.writebacks[wbUntracked].Add(float64(n))
		s.log.Warn("values committed while redis was unreachable were evicted beyond tracking; redis may serve older copies of them until they expire", "keys", n)
	}
	if len(items) == 0 {
		return false, nil
	}
	for len(items) > 0 {
		n := min(len(items), wbBatchKeys)
		batch := items[:n]
		s.local.snapshot(batch)
		// Split further by bytes; the first item always goes.
		size := 0
		for i := range batch {
			size += batch[i].bytes
			if i > 0 && size > wbBatchBytes {
				n, batch = i, batch[:i]
				break
			}
		}
		items = items[n:]
		a, err := s.writeBackBatch(ctx, batch)
		again = again || a
		if err != nil {
			return again, err
		}
	}
	return again, nil
}

// dirty lists the unconfirmed entries and the lost keys.
func (t *localTier) dirty() []wbItem {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var out []wbItem
	for _, k := range t.lru.Keys() {
		if e, ok := t.lru.Peek(k); ok && e.unconfirmed && e.expires > now {
			out = append(out, wbItem{k: k, e: e})
		}
	}
	for k := range t.lost {
		out = append(out, wbItem{k: k})
	}
	return out
}

// snapshot takes the values to write. Transcript items are shared, not
// copied: a transcript only grows at its end and a view never changes.
func (t *localTier) snapshot(batch []wbItem) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	wall := time.Now()
	for i := range batch {
		it := &batch[i]
		if it.e == nil {
			exp, ok := t.lost[it.k]
			it.skip, it.expMs, it.del = !ok, exp, true
			continue
		}
		cur, ok := t.lru.Peek(it.k)
		if !ok || cur != it.e || !cur.unconfirmed || cur.expires <= now {
			it.skip = true // confirmed, replaced or gone since the scan
			continue
		}
		left := time.Duration(cur.expires - now)
		it.version, it.ttl, it.expMs, it.contests = cur.expires, left, wall.Add(left).UnixMilli(), cur.contests
		switch it.k.kind {
		case KindPending:
			it.del, it.calls = cur.neg, cur.calls
		case KindAnchor:
			it.del, it.anchor = cur.neg || cur.anchor == "", cur.anchor
		case KindConversation:
			it.del, it.session, it.lane = cur.neg || cur.session == "", cur.session, cur.lane
		case KindReplay:
			if cur.neg || cur.replay == nil || cur.replay.broken {
				it.del = true
				break
			}
			tr := cur.replay.transcript()
			it.items, it.last, it.trimmed, it.bytes = tr.Items, tr.LastResponseID, tr.Trimmed, tr.Bytes
		}
	}
}

// writeBackBatch writes one batch in a pipeline, falls back to deleting what
// Redis refused, announces the keys it changed, and settles the local tier.
func (s *Tiered) writeBackBatch(ctx context.Context, batch []wbItem) (again bool, err error) {
	err = s.doTimeout(ctx, opWriteback, wbTimeout, func(ctx context.Context) error {
		for i := range batch {
			batch[i].result = -1
		}
		// First the values, then deletes for what Redis refused.
		for _, asDelete := range []bool{false, true} {
			if err := s.runWriteback(ctx, batch, asDelete); err != nil {
				return err
			}
		}
		var changed []lkey
		for i := range batch {
			if it := &batch[i]; !it.skip && (it.result == wbWritten || it.result == wbDeleted) {
				changed = append(changed, it.k)
			}
		}
		if len(changed) == 0 {
			return nil
		}
		if err := s.stripWrittenBack(ctx, batch); err != nil {
			return err
		}
		return s.publishNow(ctx, encodeInvalidation(s.cfg.instanceID, changed))
	})
	if err != nil {
		return false, err
	}
	written, stored := 0, false
	var undo []*wbItem
	t := s.local
	t.mu.Lock()
	for i := range batch {
		it := &batch[i]
		if it.skip {
			continue
		}
		if it.result < 0 {
			it.result = wbFailed
		}
		s.metrics.writebacks[it.result].Inc()
		if it.result == wbWritten || it.result == wbDeleted {
			written++
		}
		stored = stored || it.result == wbWritten && !it.del
		if it.e == nil {
			if exp, ok := t.lost[it.k]; ok && exp == it.expMs {
				delete(t.lost, it.k)
			}
			continue
		}
		cur, ok := t.lru.Peek(it.k)
		same := ok && cur == it.e && cur.expires == it.version
		switch {
		case it.k.kind == KindPending && !it.del && it.result == wbWritten && !same && !(ok && cur.neg):
			// Dropped during the pass (or since read back): another instance
			// answered (or wrote) these calls, and this pass may have put them
			// back after it.
			undo = append(undo, it)
		case same && it.result == wbSuperseded:
			// Redis holds a later value: this copy is stale.
			t.removeLocked(it.k)
		case same && cur.contests != it.contests:
			// Another instance announced a write of the key after this pass
			// took the value: it may have landed after ours. Check again.
			again = true
		case same:
			// Written back (or, failing that, deleted from Redis and kept
			// here): nothing more to do for this value.
			cur.unconfirmed, cur.kept, cur.contests = false, false, 0
		case ok && cur.neg && it.result == wbWritten:
			// A delete committed meanwhile may have reached Redis before
			// this older value did: write the delete again.
			cur.unconfirmed = true
			again = true
		}
	}
	t.mu.Unlock()
	if len(undo) > 0 {
		s.undoWriteback(ctx, undo)
	}
	if stored {
		s.acceptsWrites() // a delete alone proves nothing: Redis takes those when full
	}
	if written > 0 {
		s.metrics.invalSent.Add(float64(written))
		s.log.Info("state committed while redis was unreachable written back", "keys", written)
	}
	return again, nil
}

// undoScript deletes KEYS[1] if it still holds exactly ARGV[1], and returns 1
// when it did: it takes back a value the write-back wrote, unless someone
// wrote over it since.
var undoScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// undoWriteback takes back pending calls a pass wrote while another instance's
// write of them was announced (see localTier.invalidate), and announces the
// keys it deleted. A failure leaves them until they expire; it is logged.
func (s *Tiered) undoWriteback(ctx context.Context, items []*wbItem) {
	err := s.doTimeout(ctx, opWriteback, wbTimeout, func(ctx context.Context) error {
		cmds := make([]*scripted, len(items))
		for i, it := range items {
			cmds[i] = &scripted{sc: undoScript, keys: []string{it.k.redisKey()}, args: []any{encodePending(it.calls, it.expMs)}}
		}
		if err := s.runScripts(ctx, cmds); err != nil {
			return err
		}
		var gone []lkey
		for i, c := range cmds {
			if n, _ := c.cmd.Int(); n == 1 {
				gone = append(gone, items[i].k)
				// A copy read back meanwhile; our own announcement never
				// reaches us.
				s.local.dropConfirmed(items[i].k)
			}
		}
		if len(gone) == 0 {
			return nil
		}
		return s.publishNow(ctx, encodeInvalidation(s.cfg.instanceID, gone))
	})
	if err != nil {
		s.log.Warn("pending calls written back over a newer write could not be taken back; they last until they expire", "keys", len(items), "err", err)
	}
}

// runWriteback sends one pipeline of the items without a result yet: their
// values or, with asDelete (the items Redis refused), their deletes; by script
// SHA first, and once more with the script source where the server lacks it.
// It returns an error only when Redis is unhealthy.
func (s *Tiered) runWriteback(ctx context.Context, batch []wbItem, asDelete bool) error {
	var todo []*wbItem
	for i := range batch {
		if it := &batch[i]; !it.skip && it.result < 0 {
			if asDelete {
				it.del = true
			}
			todo = append(todo, it)
		}
	}
	useEval := false
	for attempt := 0; attempt < 2 && len(todo) > 0; attempt++ {
		_, _ = s.client().Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, it := range todo {
				it.cmd = s.writebackCmd(ctx, p, it, useEval)
			}
			return nil
		})
		var retry []*wbItem
		for _, it := range todo {
			switch cerr := it.cmd.Err(); {
			case cerr == nil:
				it.result = s.writebackResult(it)
				if (asDelete || it.e == nil) && it.result == wbWritten {
					it.result = wbDeleted
				}
			case redis.HasErrorPrefix(cerr, "NOSCRIPT"):
				retry = append(retry, it)
			case unhealthy(cerr):
				return cerr
			case refusesWrites(cerr):
				// Redis is full, not this value wrong: deleting it there would
				// lose what this instance alone holds. The pass ends and is
				// tried again later, every value still unconfirmed.
				return fmt.Errorf("%w: %w", errRefusesWrites, cerr)
			default:
				// Redis refused this value (an error reply): it keeps no
				// result, and a delete is tried next.
				s.log.Debug("write-back refused by redis", "kind", it.k.kind.String(), "err", cerr)
			}
		}
		todo, useEval = retry, true
	}
	return nil
}

// errRefusesWrites reports a write Redis refused for want of memory (OOM with
// maxmemory and the noeviction policy, or a policy that found nothing to evict).
var errRefusesWrites = errors.New("statestore: redis refuses writes (out of memory)")

// refusesWrites reports whether err is Redis refusing a write for want of memory.
func refusesWrites(err error) bool { return redis.HasErrorPrefix(err, "OOM") }

// stripWrittenBack strips the copies of pending calls written back or deleted
// by a pass from the anchors that may carry them (carry.go): the commit that
// changed them meanwhile could not. A conversation this instance does not know
// is asked of Redis first.
func (s *Tiered) stripWrittenBack(ctx context.Context, batch []wbItem) error {
	var checks []carriedCheck
	t := s.local
	t.mu.Lock()
	now := t.now()
	for i := range batch {
		it := &batch[i]
		if it.skip || it.k.kind != KindPending || (it.result != wbWritten && it.result != wbDeleted) {
			continue
		}
		e, ok := t.peekLocked(lkey{kind: KindConversation, tenant: it.k.tenant, id: it.k.id}, now)
		switch {
		case ok && e.neg:
		case ok:
			checks = append(checks, carriedCheck{tenant: it.k.tenant, id: it.k.id, known: true,
				owner: Scope{Tenant: it.k.tenant, Session: e.session, Lane: e.lane}})
		default:
			checks = append(checks, carriedCheck{tenant: it.k.tenant, id: it.k.id})
		}
	}
	t.mu.Unlock()
	var strips []*scripted
	var ask []*carriedCheck
	for i := range checks {
		if checks[i].known {
			strips = append(strips, checks[i].strip())
		} else {
			ask = append(ask, &checks[i])
		}
	}
	if len(ask) > 0 {
		_, err := s.client().Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, c := range ask {
				c.get = p.Get(ctx, convKey(c.tenant, c.id))
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for _, c := range ask {
			if owner, ok := c.needsStrip(Scope{}, false); ok {
				c.owner, c.known = owner, true
				strips = append(strips, c.strip())
			}
		}
	}
	if len(strips) == 0 {
		return nil
	}
	return s.runScripts(ctx, strips)
}

// writebackCmd queues the write of one item.
func (s *Tiered) writebackCmd(ctx context.Context, p redis.Pipeliner, it *wbItem, useEval bool) *redis.Cmd {
	run := func(sc *redis.Script, keys []string, args ...any) *redis.Cmd {
		if useEval {
			return sc.Eval(ctx, p, keys, args...)
		}
		return sc.EvalSha(ctx, p, keys, args...)
	}
	ttlMs := max(it.ttl.Milliseconds(), 1)
	switch it.k.kind {
	case KindPending, KindAnchor, KindConversation:
		key := it.k.redisKey()
		if it.del {
			return run(guardScript, []string{key}, "d", it.expMs, encodeTombstone(it.expMs), ttlMs, "0")
		}
		var val []byte
		switch it.k.kind {
		case KindPending:
			val = encodePending(it.calls, it.expMs)
		case KindAnchor:
			val = encodeAnchor(it.anchor, it.expMs)
		default:
			val = encodeConv(it.session, it.lane, it.expMs)
		}
		contested := "0"
		if it.contests > 0 {
			contested = "1"
		}
		return run(guardScript, []string{key}, "s", it.expMs, val, ttlMs, contested)
	default:
		keys := []string{
			sessionKey(it.k.tenant, it.k.id, suffixReplay),
			sessionKey(it.k.tenant, it.k.id, suffixReplayMeta),
		}
		token := s.cfg.instanceID + ":" + strconv.FormatUint(s.tokens.Add(1), 36)
		mode := replayResetIfOlder
		switch {
		case it.del:
			mode = replayBreakIfOlder
		case it.trimmed:
			mode = replayResetTrimmedIfOlder
		}
		args := make([]any, 0, 6+len(it.items))
		args = append(args, token, mode, it.last, s.cfg.replayCap, ttlMs, it.expMs)
		if !it.del {
			for _, ri := range it.items {
				args = append(args, encodeReplayItem(ri))
			}
		}
		return run(replayScript, keys, args...)
	}
}

// writebackResult reads a script's answer: written, or superseded by a newer
// value.
func (s *Tiered) writebackResult(it *wbItem) int {
	switch v := it.cmd.Val().(type) {
	case int64:
		if v == 0 {
			return wbSuperseded
		}
	case []any:
		if len(v) > 6 {
			if n, _ := v[6].(int64); n == 1 {
				return wbSuperseded
			}
		}
	}
	return wbWritten
}
