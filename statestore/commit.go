package statestore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// replayWrite is the replay part of a commit as Redis will see it.
type replayWrite struct {
	key     lkey
	mode    string
	keep    int // with replayKeep: the stored items kept
	items   []ReplayItem
	last    string
	entry   *entry // the local entry the write mirrors, nil if none
	trimmed int    // items the local copy trimmed
}

// Commit writes a turn's bookkeeping: the local tier first (so this instance
// sees it at once whatever Redis does), then Redis in one pipelined round
// trip, which also announces the changed keys to other instances. On a Redis
// failure the local copies stay (marked unconfirmed) and the error, wrapping
// ErrDegraded, is informational only. The caller's cancellation does not
// abort the write: bookkeeping must land even when the client has gone.
func (s *Tiered) Commit(ctx context.Context, b Batch) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := validateBatch(&b); err != nil {
		return err
	}
	tenant, session := strings.Clone(b.Scope.Tenant), strings.Clone(b.Scope.id())
	remote := s.target != nil
	// What Redis must hear of: only gathered when there is a Redis (a local-only commit
	// allocates nothing for it).
	var written []keyEntry
	var touched []lkey
	if remote {
		written = make([]keyEntry, 0, 4+len(b.DeletePending))
		touched = make([]lkey, 0, 5+len(b.DeletePending))
	}
	track := func(k lkey, e *entry) {
		if remote {
			written = append(written, keyEntry{k, e})
			touched = append(touched, k)
		}
	}
	var rw *replayWrite

	t := s.local
	now := t.now()
	t.mu.Lock()
	var checks []carriedCheck
	if remote {
		// Before this batch's own writes: the index still names the
		// conversation whose anchor may carry the calls it changes.
		checks = s.carriedChecksLocked(&b, tenant, now)
	}
	if p := b.PutPending; p != nil {
		ttl := p.TTL
		if ttl <= 0 {
			ttl = s.cfg.ttl[KindPending]
		}
		calls := cloneCalls(p.Calls)
		k := lkey{kind: KindPending, tenant: tenant, id: strings.Clone(p.ResponseID)}
		e := &entry{expires: now + int64(ttl), size: callsSize(calls), calls: calls, unconfirmed: remote}
		t.putLocked(k, e)
		track(k, e)
		if b.Scope.Session != "" {
			// The response leads to its conversation (issue 17): a client that chains to
			// it without naming its session still finds the session's state.
			ck := lkey{kind: KindConversation, tenant: tenant, id: k.id}
			sess, lane := strings.Clone(b.Scope.Session), strings.Clone(b.Scope.Lane)
			ce := &entry{expires: now + int64(s.cfg.ttl[KindConversation]), size: convSize(sess, lane),
				session: sess, lane: lane, unconfirmed: remote}
			t.putLocked(ck, ce)
			track(ck, ce)
		}
	}
	for _, id := range b.DeletePending {
		// Keep a "known: gone" marker: this instance must not fall back to
		// a Redis copy that a failed delete left behind.
		k := lkey{kind: KindPending, tenant: tenant, id: strings.Clone(id)}
		e := &entry{expires: now + int64(s.cfg.ttl[KindPending]), size: entryOverhead, neg: true, unconfirmed: remote}
		t.putLocked(k, e)
		track(k, e)
	}
	if b.Anchor != nil {
		k := lkey{kind: KindAnchor, tenant: tenant, id: session}
		v := strings.Clone(*b.Anchor)
		e := &entry{expires: now + int64(s.cfg.ttl[KindAnchor]), size: entryOverhead + len(v), anchor: v, neg: v == "", unconfirmed: remote}
		t.putLocked(k, e)
		track(k, e)
	}
	if b.touchesReplay() {
		rw = s.applyReplayLocked(&b, lkey{kind: KindReplay, tenant: tenant, id: session}, now, remote)
		if remote {
			if rw.entry != nil {
				written = append(written, keyEntry{rw.key, rw.entry})
			}
			touched = append(touched, rw.key)
		}
	}
	t.mu.Unlock()

	if !remote {
		if rw != nil && rw.trimmed > 0 {
			s.metrics.replayTrims.Inc()
		}
		s.metrics.commits[commitLocalOnly].Inc()
		return nil
	}
	if len(touched) == 0 {
		return nil
	}
	res, err := s.writeRedis(context.WithoutCancel(ctx), &b, rw, touched, checks)
	if rw != nil && rw.entry == nil {
		t.mu.Lock()
		// A copy this instance read from Redis while the write was in flight
		// may predate it, and our own announcement never reaches us: drop it.
		t.removeLocked(rw.key)
		if err != nil {
			// Redis missed an append and no local copy can repair it:
			// remember the gap so neither tier replays a partial history.
			t.putLocked(rw.key, &entry{expires: t.deadline(s.cfg.ttl[KindReplay]), size: entryOverhead,
				replay: &replayState{broken: true}, unconfirmed: true, kept: true})
		}
		t.mu.Unlock()
	}
	if err != nil {
		t.keep(written)
		s.metrics.commits[commitDegraded].Inc()
		s.log.Debug("commit kept locally", "err", err)
		s.kickWriteback() // written back once Redis answers again
		return fmt.Errorf("%w: %w", ErrDegraded, err)
	}
	if s.refusing.Load() {
		s.acceptsWrites()
	}
	t.confirm(written)
	if rw != nil {
		s.checkReplay(rw, res)
	}
	s.metrics.commits[commitRedis].Inc()
	s.metrics.invalSent.Add(float64(len(touched)))
	return nil
}

func validateBatch(b *Batch) error {
	if b.Scope.Tenant == "" {
		return errors.New("statestore: commit without a tenant")
	}
	if b.PutPending != nil && b.PutPending.ResponseID == "" {
		return errors.New("statestore: pending put without a response id")
	}
	if (b.Anchor != nil || b.touchesReplay()) && b.Scope.Session == "" {
		return errors.New("statestore: session write without a session")
	}
	if b.ReplayKeep < 0 || b.ReplayKeep > 0 && !b.ReplayReset {
		return errors.New("statestore: ReplayKeep needs ReplayReset and a count of 0 or more")
	}
	return nil
}

func cloneCalls(in []Call) []Call {
	out := make([]Call, len(in))
	for i, c := range in {
		kind := kindOfCode(kindCode(c.Kind)) // shared constant for known kinds
		if kind == "" {
			kind = strings.Clone(c.Kind)
		}
		out[i] = Call{ID: strings.Clone(c.ID), Kind: kind}
	}
	return out
}

// applyReplayLocked applies the batch's replay part to the local tier and
// decides what Redis must be told. Called with t.mu held.
func (s *Tiered) applyReplayLocked(b *Batch, k lkey, now int64, remote bool) *replayWrite {
	t := s.local
	ttl := now + int64(s.cfg.ttl[KindReplay])
	capBytes := s.cfg.replayCap
	last := strings.Clone(b.ReplayLastResponseID)
	rw := &replayWrite{key: k, mode: replayAppend, items: b.ReplayAppend, last: last}
	if b.ReplayKeep > 0 {
		rw.mode, rw.keep = replayKeep, b.ReplayKeep
	}
	cur, held := t.peekLocked(k, now)
	switch {
	case b.ReplayReset && b.ReplayKeep == 0:
		st := &replayState{}
		rw.trimmed = st.appendItems(b.ReplayAppend, capBytes)
		st.last = last
		e := &entry{expires: ttl, size: st.size(), replay: st, unconfirmed: remote}
		t.putLocked(k, e)
		rw.mode, rw.entry = replayReset, e
	case held && cur.replay != nil && cur.replay.broken:
		// Appends cannot mend a gap, nor can a reset that keeps part of
		// it; only a full reset can. Tell Redis about the gap if it may not
		// know yet (else it decides: it may hold a newer transcript).
		cur.expires = ttl
		if cur.unconfirmed {
			rw.mode, rw.items = replayBreak, nil
		}
		rw.entry = cur
	case b.ReplayReset:
		s.keepReplayLocked(b, rw, cur, held, ttl, remote)
	case held:
		st := cur.replay
		// Redis may lack earlier appends of an unconfirmed copy: rewrite
		// the whole transcript instead of appending to a gapped one.
		resync := st != nil && cur.unconfirmed
		if st == nil { // known absent: the transcript starts now
			st = &replayState{}
			cur.neg, cur.replay = false, st
		}
		rw.trimmed = st.appendItems(b.ReplayAppend, capBytes)
		st.last = last
		// A new commit is in flight for it: what a failed one left is
		// settled by this one (a full rewrite, below) or kept again.
		cur.expires, cur.unconfirmed, cur.kept, cur.contests = ttl, remote, false, 0
		if resync {
			rw.mode, rw.items = replayReset, st.items
		}
		t.resizeLocked(k, cur, st.size())
		if cur.size <= t.maxValue() { // else it was too big to keep locally
			rw.entry = cur
		}
	case !remote:
		// Local-only: nothing held means nothing exists.
		st := &replayState{}
		rw.trimmed = st.appendItems(b.ReplayAppend, capBytes)
		st.last = last
		e := &entry{expires: ttl, size: st.size(), replay: st}
		t.putLocked(k, e)
		rw.entry = e
	default:
		// The transcript lives only in Redis: append there and keep no
		// partial local copy. Moving the generation stops a read-through
		// already in flight from caching the transcript without this turn.
		if _, gap := t.lost[k]; gap {
			// This instance's last version never reached Redis and is
			// gone here too: the history has a gap.
			rw.mode, rw.items = replayBreak, nil
		}
		t.removeLocked(k)
	}
	return rw
}

// keepReplayLocked applies a reset that keeps the first b.ReplayKeep items of the
// stored transcript (Batch.ReplayKeep), the broken case aside. Called with t.mu
// held.
//
// A local copy with at least that many items is truncated and appended to; Redis
// is told only the new items ("k": keep N, append), or, when the copy is
// unconfirmed (Redis may lack part of it), the whole transcript, as for an append
// to such a copy.
//
// A local copy that cannot serve the keep (fewer items, or a transcript known
// absent) is not guessed at:
//   - a confirmed one (Redis took it) is dropped, and Redis decides, as for a
//     transcript this instance does not hold: the script keeps the first N items
//     it holds, or marks the transcript broken if it holds fewer. The next read
//     takes whatever Redis has. (Redis is the shared copy: another instance may
//     have written it since; its announcement may still be on its way.)
//   - an unconfirmed one is the only copy of the latest history, and Redis may
//     hold an older transcript whose first N items are not the caller's: the
//     transcript is marked broken here and in Redis.
//   - without Redis nothing else holds the prefix: the transcript is marked broken.
//
// A keep-write Redis misses (the commit fails) never leaves Redis with a partial
// history: a local copy stays unconfirmed and the write-back rewrites the whole
// transcript from it; without one, Commit leaves a broken marker that the
// write-back takes to Redis (Redis's older transcript would take this instance's
// next appends as if they followed it).
func (s *Tiered) keepReplayLocked(b *Batch, rw *replayWrite, cur *entry, held bool, ttl int64, remote bool) {
	t := s.local
	k, n := rw.key, b.ReplayKeep
	if held && !cur.neg && cur.replay != nil && len(cur.replay.items) >= n {
		st := cur.replay
		resync := cur.unconfirmed
		st.keep(n)
		rw.trimmed = st.appendItems(b.ReplayAppend, s.cfg.replayCap)
		st.last = rw.last
		cur.expires, cur.unconfirmed, cur.kept, cur.contests = ttl, remote, false, 0
		if resync {
			rw.mode, rw.keep, rw.items = replayReset, 0, st.items
		}
		t.resizeLocked(k, cur, st.size())
		if cur.size <= t.maxValue() { // else it was too big to keep locally
			rw.entry = cur
		}
		return
	}
	if !remote || held && cur.unconfirmed {
		e := &entry{expires: ttl, size: entryOverhead, replay: &replayState{broken: true}, unconfirmed: remote}
		t.putLocked(k, e)
		rw.mode, rw.keep, rw.items, rw.entry = replayBreak, 0, nil, e
		return
	}
	// As an append to a transcript this instance does not hold: no partial
	// local copy, and a gap this instance knows of goes to Redis.
	if _, gap := t.lost[k]; gap {
		rw.mode, rw.keep, rw.items = replayBreak, 0, nil
	}
	t.removeLocked(k)
}

// writeRedis sends the batch in one round trip and returns the replay script's
// result (nil without a replay part).
//
// Under Redis OOM the write is all or nothing (issue 11): on one server
// (standalone, Sentinel) it is a MULTI/EXEC transaction, which Redis refuses
// whole when any of its commands is refused; on a Cluster, whose commands of
// different slots cannot share a transaction, every write of the pipeline is one
// Redis refuses under OOM before it changes anything (SET, the scripts, whose
// first write asks for memory, and deletes through delScript), so a full Redis
// refuses each of them. A Cluster can still take part of a commit when its
// memory crosses the limit during the pipeline or only some nodes are full; the
// local copies then stay unconfirmed and are written back whole.
func (s *Tiered) writeRedis(ctx context.Context, b *Batch, rw *replayWrite, touched []lkey, checks []carriedCheck) ([]any, error) {
	msg := encodeInvalidation(s.cfg.instanceID, touched)
	sharded := s.sharded()
	var scripts []*scripted
	var replay *scripted
	if rw != nil {
		token := s.cfg.instanceID + ":" + strconv.FormatUint(s.tokens.Add(1), 36)
		mode := rw.mode
		if mode == replayKeep {
			mode += strconv.Itoa(rw.keep)
		}
		args := make([]any, 0, 6+len(rw.items))
		args = append(args, token, mode, rw.last, s.cfg.replayCap, s.cfg.ttl[KindReplay].Milliseconds(),
			expiryMs(s.cfg.ttl[KindReplay]))
		for _, it := range rw.items {
			args = append(args, encodeReplayItem(it))
		}
		replay = &scripted{sc: replayScript, args: args, keys: []string{
			sessionKey(rw.key.tenant, rw.key.id, suffixReplay),
			sessionKey(rw.key.tenant, rw.key.id, suffixReplayMeta),
		}}
		scripts = append(scripts, replay)
	}
	for i := range checks {
		if checks[i].known {
			scripts = append(scripts, checks[i].strip())
		}
	}
	var pendingVal, anchorVal, convVal []byte
	var pendingTTL time.Duration
	convTTL := s.cfg.ttl[KindConversation]
	if p := b.PutPending; p != nil {
		pendingTTL = p.TTL
		if pendingTTL <= 0 {
			pendingTTL = s.cfg.ttl[KindPending]
		}
		pendingVal = encodePending(p.Calls, expiryMs(pendingTTL))
		if b.Scope.Session != "" {
			convVal = encodeConv(b.Scope.Session, b.Scope.Lane, expiryMs(convTTL))
		}
	}
	if b.Anchor != nil && *b.Anchor != "" {
		exp := expiryMs(s.cfg.ttl[KindAnchor])
		if p := b.PutPending; p != nil && p.ResponseID == *b.Anchor && convVal != nil {
			// The anchor carries the calls its response left pending (carry.go),
			// no longer than the pending key and the index that leads to it live.
			anchorVal = encodeAnchorCarrying(*b.Anchor, exp, p.Calls, min(expiryMs(pendingTTL), expiryMs(convTTL)))
		} else {
			anchorVal = encodeAnchor(*b.Anchor, exp)
		}
	}
	// On a Cluster the pipeline runs on several nodes in parallel, so the
	// announcement could overtake the writes and let another instance
	// re-read the old value; there it follows the writes instead.
	publishInline := !sharded
	var res []any
	err := s.do(ctx, opCommit, func(ctx context.Context) error {
		run := slices.Clip(scripts) // this attempt's: the deletes join on a Cluster
		del := func(p redis.Pipeliner, key string) {
			if !sharded {
				p.Del(ctx, key) // refused with the whole transaction
				return
			}
			c := &scripted{sc: delScript, keys: []string{key}}
			c.queue(ctx, p, false)
			run = append(run, c)
		}
		write := func(p redis.Pipeliner) error {
			if b.PutPending != nil {
				p.Set(ctx, pendingKey(b.Scope.Tenant, b.PutPending.ResponseID), pendingVal, pendingTTL)
				if convVal != nil {
					// Same hash tag as the pending key: one more write in the same pipeline.
					p.Set(ctx, convKey(b.Scope.Tenant, b.PutPending.ResponseID), convVal, convTTL)
				}
			}
			for _, id := range b.DeletePending {
				del(p, pendingKey(b.Scope.Tenant, id))
			}
			if b.Anchor != nil {
				k := sessionKey(b.Scope.Tenant, b.Scope.id(), suffixAnchor)
				if *b.Anchor == "" {
					del(p, k)
				} else {
					p.Set(ctx, k, anchorVal, s.cfg.ttl[KindAnchor])
				}
			}
			for _, c := range scripts {
				c.queue(ctx, p, false)
			}
			for i := range checks {
				if !checks[i].known {
					checks[i].get = p.Get(ctx, convKey(checks[i].tenant, checks[i].id))
				}
			}
			if publishInline {
				s.publish(ctx, p, msg)
			}
			return nil
		}
		var cmds []redis.Cmder
		var err error
		if sharded {
			cmds, err = s.client().Pipelined(ctx, write)
		} else {
			cmds, err = s.client().TxPipelined(ctx, write)
		}
		var missing []*scripted
		for _, c := range run {
			if c.noScript() {
				missing = append(missing, c)
			}
		}
		for _, c := range cmds {
			if cerr := c.Err(); cerr != nil && !errors.Is(cerr, redis.Nil) && !redis.HasErrorPrefix(cerr, "NOSCRIPT") {
				return cerr
			}
		}
		if err != nil && len(missing) == 0 && !errors.Is(err, redis.Nil) {
			return err
		}
		if len(missing) > 0 {
			// First use on this server (or after a restart): send the sources
			// once; the replay token keeps a repeat harmless.
			again := func(p redis.Pipeliner) error {
				for _, c := range missing {
					c.queue(ctx, p, true)
				}
				if publishInline {
					s.publish(ctx, p, msg) // again: the first one overtook these writes
				}
				return nil
			}
			if sharded {
				_, err = s.client().Pipelined(ctx, again)
			} else {
				_, err = s.client().TxPipelined(ctx, again)
			}
			if err != nil {
				return err
			}
		}
		if !publishInline {
			if err := s.publishNow(ctx, msg); err != nil {
				return err
			}
		}
		if replay != nil {
			res, _ = replay.cmd.Val().([]any)
		}
		return nil
	})
	if err == nil {
		err = s.stripLate(ctx, checks, b.Scope, b.Anchor != nil)
	}
	return res, err
}

func (s *Tiered) publish(ctx context.Context, p redis.Pipeliner, msg string) {
	s.published.Add(1)
	if s.sharded() {
		p.SPublish(ctx, s.cfg.channel, msg)
	} else {
		p.Publish(ctx, s.cfg.channel, msg)
	}
}

func (s *Tiered) publishNow(ctx context.Context, msg string) error {
	s.published.Add(1)
	if s.sharded() {
		return s.client().SPublish(ctx, s.cfg.channel, msg).Err()
	}
	return s.client().Publish(ctx, s.cfg.channel, msg).Err()
}

// checkReplay compares the local copy with what the replay script reports.
// They differ when another instance appended meanwhile (its invalidation is
// still in flight) or Redis marked the transcript broken; then the local copy
// is dropped and the next read takes the transcript from Redis.
func (s *Tiered) checkReplay(rw *replayWrite, res []any) {
	num := func(i int) int64 {
		if i < len(res) {
			v, _ := res[i].(int64)
			return v
		}
		return -1
	}
	if num(5) > 0 || rw.trimmed > 0 {
		s.metrics.replayTrims.Inc()
	}
	if rw.entry == nil {
		return
	}
	t := s.local
	t.mu.Lock()
	defer t.mu.Unlock()
	cur, ok := t.lru.Peek(rw.key)
	if !ok || cur != rw.entry || cur.replay == nil {
		return
	}
	st := cur.replay
	if st.broken {
		if num(3) != 1 {
			t.removeLocked(rw.key)
		}
		return
	}
	trimmed := int64(0)
	if st.trimmed {
		trimmed = 1
	}
	if num(3) != 0 || num(0) != int64(len(st.items)) || num(1) != int64(st.bytes) || num(2) != trimmed {
		t.removeLocked(rw.key)
	}
}

// expiryMs is the wall-clock expiry of a value written now with ttl.
func expiryMs(ttl time.Duration) int64 { return time.Now().Add(ttl).UnixMilli() }
