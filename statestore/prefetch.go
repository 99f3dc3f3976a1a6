package statestore

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
)

// Prefetcher is implemented by stores that can read a turn's state from their remote tier
// in one round trip ahead of the individual reads. *Tiered implements it.
type Prefetcher interface {
	// Prefetch reads whatever the local tier lacks of the session's anchor, its replay
	// transcript, and the pending calls and conversation of responseIDs, and keeps it
	// locally, so that the Anchor, Replay, Pending and Conversation calls that follow are
	// local hits.
	Prefetch(ctx context.Context, scope Scope, responseIDs ...string)
}

var _ Prefetcher = (*Tiered)(nil)

// Prefetch is for a session that arrives on this instance (a new connection, or an HTTP
// request) with state that may live only in Redis, such as a client that reconnected to
// another instance. Read one by one, the anchor, then the pending calls of the response it
// names, then the transcript cost three round trips; here they go in one pipeline. The
// anchor is not known before the read, so the caller names the response the request itself
// chains to (its previous_response_id), which is the anchor whenever the chain is intact.
// A full create names none; the anchor then brings the calls its response left pending
// (carry.go), so a moved full create costs one round trip too. Only an anchor that carries
// nothing (its calls were changed since, or it was written without them) and that the
// request does not name costs Pending a second round trip.
//
// Each answer is handled exactly as the single read would handle it (decoded, counted as
// a Redis lookup, backfilled with the hot TTL, or remembered briefly as absent), so the
// reads that follow see the same state they would have read themselves. It does nothing
// without Redis or when the local tier holds everything. A Redis failure is dropped here:
// the reads that follow try again and answer Unknown as usual. Keys are kept under the
// same backfill-generation rule as single reads; when two of them share a generation slot
// (1 in 256 per pair), keeping the first looks like a change to the second, which is then
// not kept and costs its own read later: never a stale value, only a round trip.
func (s *Tiered) Prefetch(ctx context.Context, scope Scope, responseIDs ...string) {
	if s.target == nil || scope.Tenant == "" {
		return
	}
	type pend struct {
		k   lkey
		gen uint64
		cmd *redis.StringCmd
	}
	var (
		ak, rk       = lkey{kind: KindAnchor, tenant: scope.Tenant, id: scope.id()}, lkey{kind: KindReplay, tenant: scope.Tenant, id: scope.id()}
		needSession  = scope.Session != ""
		needAnchor   bool
		needReplay   bool
		agen, rgen   uint64
		pends        []pend
		anchorCmd    *redis.StringCmd
		lrange       *redis.StringSliceCmd
		hmget        *redis.SliceCmd
		pendingArray [4]pend
	)
	var gens [genSlots]uint64
	if needSession {
		if _, _, ok := s.local.anchor(ak); !ok {
			needAnchor, agen = true, s.local.generation(ak)
			// The anchor may carry its response's pending calls (keepCarried),
			// whose key is known only once it is read.
			s.local.generations(&gens)
		}
		if _, _, ok := s.local.replay(rk); !ok {
			needReplay, rgen = true, s.local.generation(rk)
		}
	}
	pends = pendingArray[:0]
	for _, id := range responseIDs {
		if id == "" {
			continue
		}
		k := lkey{kind: KindPending, tenant: scope.Tenant, id: id}
		if _, _, ok := s.local.pending(k); !ok {
			pends = append(pends, pend{k: k, gen: s.local.generation(k)})
		}
		// The response's conversation too, so that a Conversation call for a request whose
		// headers named no session is answered locally.
		k.kind = KindConversation
		if _, _, _, ok := s.local.conversation(k); !ok {
			pends = append(pends, pend{k: k, gen: s.local.generation(k)})
		}
	}
	if !needAnchor && !needReplay && len(pends) == 0 {
		return
	}
	err := s.do(ctx, opAnchor, func(ctx context.Context) error {
		_, err := s.client().Pipelined(ctx, func(p redis.Pipeliner) error {
			if needAnchor {
				anchorCmd = p.Get(ctx, sessionKey(scope.Tenant, scope.id(), suffixAnchor))
			}
			for i := range pends {
				pends[i].cmd = p.Get(ctx, pends[i].k.redisKey())
			}
			if needReplay {
				lrange = p.LRange(ctx, sessionKey(scope.Tenant, scope.id(), suffixReplay), 0, -1)
				hmget = p.HMGet(ctx, sessionKey(scope.Tenant, scope.id(), suffixReplayMeta), "b", "t", "l", "x", "e")
			}
			return nil
		})
		if errors.Is(err, redis.Nil) {
			return nil // an answer: some key does not exist
		}
		return err
	})
	if err != nil {
		return
	}
	// The pending keys first: read directly, they win over the copy an anchor
	// carries of the same calls.
	for _, p := range pends {
		if p.k.kind == KindConversation {
			s.conversationFrom(p.k, p.gen, p.cmd.Val(), p.cmd.Err())
		} else {
			s.pendingFrom(p.k, p.gen, p.cmd.Val(), p.cmd.Err())
		}
	}
	if anchorCmd != nil {
		s.anchorFrom(ak, agen, &gens, anchorCmd.Val(), anchorCmd.Err())
	}
	if lrange != nil {
		err := lrange.Err()
		if err == nil {
			err = hmget.Err()
		}
		s.replayFrom(rk, rgen, lrange.Val(), hmget.Val(), err)
	}
}
