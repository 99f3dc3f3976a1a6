package statestore

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// roundTrips counts a client's round trips: one per command sent alone, one per pipeline;
// the handshake of a new pooled connection (HELLO) does not count.
type roundTrips struct{ n atomic.Int64 }

func (c *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "hello" {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (c *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

// TestPrefetch: a session that arrives on another instance reads anchor, pending calls and
// transcript in one round trip, and the reads that follow are local.
func TestPrefetch(t *testing.T) {
	for _, mk := range []func(testing.TB) *env{standaloneEnv, clusterEnv} {
		e := mk(t)
		t.Run(e.name, func(t *testing.T) {
			ctx := context.Background()
			ten := tenant(t)
			keys := []lkey{{KindAnchor, ten, "s"}, {KindPending, ten, "resp_1"}, {KindReplay, ten, "s"}, {KindConversation, ten, "resp_1"}}
			// Keys that share a backfill-generation slot (1 in 256 per pair, by the
			// store's random seed) make the prefetch skip keeping the later one, which
			// only costs a read later (see Prefetch); the test wants the common case.
			a, b := e.store(t), e.store(t)
			for i := 0; i < 20 && sharedSlot(b, keys); i++ {
				b = e.store(t)
			}
			sc := Scope{Tenant: ten, Session: "s"}
			require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")},
				Anchor: strp("resp_1"), ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 20)}, ReplayLastResponseID: "resp_1"}))
			settle(t, a, b)
			rt := &roundTrips{}
			b.client().AddHook(rt)
			held := func() bool {
				for _, k := range keys {
					if !b.local.has(k) {
						return false
					}
				}
				return true
			}
			// An announcement still in flight moves a backfill generation and makes the
			// prefetch skip keeping a value (by design); then it is tried again.
			for attempt := 0; attempt < 5; attempt++ {
				for _, k := range keys {
					b.local.remove(k)
				}
				rt.n.Store(0)
				b.Prefetch(ctx, sc, "resp_1")
				require.Equal(t, int64(1), rt.n.Load(), "one pipelined read")
				if held() {
					break
				}
			}
			require.True(t, held(), "the prefetched state is kept locally")
			id, r := b.Anchor(ctx, sc)
			assert.Equal(t, Hit, r)
			assert.Equal(t, "resp_1", id)
			calls, r := b.Pending(ctx, ten, "resp_1")
			assert.Equal(t, Hit, r)
			assert.Equal(t, calls1("c1"), calls)
			tr, r := b.Replay(ctx, sc)
			assert.Equal(t, Hit, r)
			assert.Len(t, tr.Items, 1)
			assert.Equal(t, "resp_1", tr.LastResponseID)
			found, r := b.Conversation(ctx, ten, "resp_1")
			assert.Equal(t, Hit, r)
			assert.Equal(t, sc, found)
			assert.Equal(t, int64(1), rt.n.Load(), "the reads after the prefetch are local")
			for k := Kind(0); k < numKinds; k++ {
				assert.GreaterOrEqual(t, lookups(b, k, tierRedis, Hit), 1.0, k.String())
				assert.GreaterOrEqual(t, lookups(b, k, tierLocal, Hit), 1.0, k.String())
			}
			b.Prefetch(ctx, sc, "resp_1")
			assert.Equal(t, int64(1), rt.n.Load(), "nothing to fetch")

			// A new session: absent state is remembered, so nothing more is asked.
			sc2 := Scope{Tenant: ten, Session: "new"}
			b.Prefetch(ctx, sc2)
			assert.Equal(t, int64(2), rt.n.Load())
			if b.local.has(lkey{KindAnchor, ten, "new"}) && b.local.has(lkey{KindReplay, ten, "new"}) {
				_, r = b.Anchor(ctx, sc2)
				assert.Equal(t, Miss, r)
				_, r = b.Replay(ctx, sc2)
				assert.Equal(t, Miss, r)
				assert.Equal(t, int64(2), rt.n.Load(), "absent state is remembered")
			}

			// A write on A reaches B at once: its announcement drops what B prefetched.
			require.NoError(t, a.Commit(ctx, Batch{Scope: sc, DeletePending: []string{"resp_1"}, Anchor: strp("resp_2"),
				PutPending: &PendingPut{ResponseID: "resp_2"}}))
			settle(t, a, b)
			b.Prefetch(ctx, sc, "resp_2")
			id, r = b.Anchor(ctx, sc)
			assert.Equal(t, Hit, r)
			assert.Equal(t, "resp_2", id)
			calls, r = b.Pending(ctx, ten, "resp_2")
			assert.Equal(t, Hit, r)
			assert.Empty(t, calls)
			_, r = b.Pending(ctx, ten, "resp_1")
			assert.Equal(t, Miss, r)
		})
	}
}

// sharedSlot reports whether two of keys share a backfill-generation slot of s.
func sharedSlot(s *Tiered, keys []lkey) bool {
	for i := range keys {
		for j := i + 1; j < len(keys); j++ {
			if s.local.slot(keys[i]) == s.local.slot(keys[j]) {
				return true
			}
		}
	}
	return false
}

func TestPrefetchLocalOnly(t *testing.T) {
	s := newLocal(t)
	s.Prefetch(context.Background(), Scope{Tenant: "t", Session: "s"}, "resp_1")
	_, r := s.Anchor(context.Background(), Scope{Tenant: "t", Session: "s"})
	assert.Equal(t, Miss, r)
}
