package statestore

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCarried: a full create that moves between instances reads its state in one round
// trip, and a change of the pending calls made anywhere wins over the copy the anchor
// carries, on a standalone server and on a Cluster.
func TestCarried(t *testing.T) {
	for _, mk := range []func(testing.TB) *env{standaloneEnv, clusterEnv} {
		e := mk(t)
		t.Run(e.name, func(t *testing.T) {
			ctx := context.Background()
			for _, sc := range []*redis.Script{replayScript, delScript, stripScript} {
				require.NoError(t, sc.Load(ctx, e.raw).Err())
			}
			t.Run("MovedFullCreateOneRoundTrip", func(t *testing.T) { testMovedFullCreate(t, e) })
			t.Run("ChangedElsewhereWins", func(t *testing.T) { testCarriedChanged(t, e) })
			t.Run("ExpiresWithThePendingKey", func(t *testing.T) { testCarriedExpiry(t, e) })
		})
	}
}

// movedRead is the state read of a turn that arrived on s with no state local: the
// gateway's first turn on a connection (Prefetch, then the reads). It returns what the
// reads answered and the round trips they took.
func movedRead(t *testing.T, s *Tiered, sc Scope, prev string) (anchor string, calls []Call, pr Result, rts int64) {
	t.Helper()
	ctx := context.Background()
	rt := &roundTrips{}
	s.client().AddHook(rt)
	s.Prefetch(ctx, sc, prev)
	anchor, r := s.Anchor(ctx, sc)
	require.Equal(t, Hit, r)
	calls, pr = s.Pending(ctx, sc.Tenant, anchor)
	_, r = s.Replay(ctx, sc)
	require.Equal(t, Hit, r)
	return anchor, calls, pr, rt.n.Load()
}

// freshStore returns a store on e whose generation slots keep apart the keys a moved
// read keeps (see TestPrefetch): a shared slot costs a round trip by design.
func freshStore(t *testing.T, e *env, ten string, sessions ...string) *Tiered {
	t.Helper()
	var keys []lkey
	for _, s := range sessions {
		keys = append(keys, lkey{KindAnchor, ten, s}, lkey{KindReplay, ten, s})
	}
	keys = append(keys, lkey{KindPending, ten, "resp_1"}, lkey{KindPending, ten, "resp_2"})
	s := e.store(t)
	for i := 0; i < 20 && sharedSlot(s, keys); i++ {
		s = e.store(t)
	}
	return s
}

func testMovedFullCreate(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")},
		Anchor: strp("resp_1"), ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 20), item("function_call", "c1", 20)},
		ReplayLastResponseID: "resp_1"}))
	for _, tc := range []struct {
		name string
		prev string // the create's previous_response_id
	}{{"full create", ""}, {"chained create", "resp_1"}, {"broken chain", "resp_other"}} {
		t.Run(tc.name, func(t *testing.T) {
			b := freshStore(t, e, ten, "s") // subscribed after the commit: nothing in flight
			anchor, calls, r, rts := movedRead(t, b, sc, tc.prev)
			assert.Equal(t, "resp_1", anchor)
			assert.Equal(t, Hit, r)
			assert.Equal(t, calls1("c1"), calls)
			assert.Equal(t, int64(1), rts, "one read round trip per move")
		})
	}
	// A response with nothing pending is carried too: "known: none" is an answer.
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, DeletePending: []string{"resp_1"}, PutPending: &PendingPut{ResponseID: "resp_2"},
		Anchor: strp("resp_2"), ReplayAppend: []ReplayItem{item("function_call_output", "c1", 20)}, ReplayLastResponseID: "resp_2"}))
	b := freshStore(t, e, ten, "s")
	anchor, calls, r, rts := movedRead(t, b, sc, "")
	assert.Equal(t, "resp_2", anchor)
	assert.Equal(t, Hit, r)
	assert.Empty(t, calls)
	assert.Equal(t, int64(1), rts)
}

// testCarriedChanged: the calls an anchor carries are deleted or overwritten by a commit of
// another conversation (a lane that forked it, or a client that moved): every later
// reader sees the change, never the copy, whether the writer knew the response's
// conversation or had to ask Redis for it.
func testCarriedChanged(t *testing.T, e *env) {
	ctx := context.Background()
	ten := tenant(t)
	owner := Scope{Tenant: ten, Session: "s", Lane: "a"}
	fork := Scope{Tenant: ten, Session: "s", Lane: "b"}
	for _, tc := range []struct {
		name string
		// writerKnows: the writer committed the response itself, so its local tier
		// knows the response's conversation; else it asks Redis in its commit.
		writerKnows bool
		change      Batch
		wantR       Result
		wantCalls   []Call
		wantRTs     int64 // the writer's round trips (a Cluster announces after the writes: +1)
	}{
		{name: "deleted by a fork, conversation known", writerKnows: true,
			change: Batch{Scope: fork, DeletePending: []string{"resp_1"}, PutPending: &PendingPut{ResponseID: "resp_f"}, Anchor: strp("resp_f")},
			wantR:  Miss, wantRTs: 1},
		{name: "deleted by a fork, conversation asked", writerKnows: false,
			change: Batch{Scope: fork, DeletePending: []string{"resp_1"}, PutPending: &PendingPut{ResponseID: "resp_f"}, Anchor: strp("resp_f")},
			wantR:  Miss, wantRTs: 2},
		{name: "deleted without a new anchor", writerKnows: true,
			change: Batch{Scope: owner, DeletePending: []string{"resp_1"}},
			wantR:  Miss, wantRTs: 1},
		{name: "overwritten by another conversation", writerKnows: true,
			change: Batch{Scope: fork, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c9")}},
			wantR:  Hit, wantCalls: calls1("c9"), wantRTs: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := e.store(t)
			require.NoError(t, a.Commit(ctx, Batch{Scope: owner, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")},
				Anchor: strp("resp_1"), ReplayReset: true, ReplayAppend: []ReplayItem{item("function_call", "c1", 20)}, ReplayLastResponseID: "resp_1"}))
			raw, err := e.raw.Get(ctx, sessionKey(ten, owner.id(), suffixAnchor)).Result()
			require.NoError(t, err)
			require.Equal(t, byte(anchorCarryVersion), raw[0], "the anchor carries its calls")
			w := a
			if !tc.writerKnows {
				w = e.store(t)
			}
			rt := &roundTrips{}
			w.client().AddHook(rt)
			require.NoError(t, w.Commit(ctx, tc.change))
			want := tc.wantRTs
			if w.sharded() {
				want++
			}
			assert.Equal(t, want, rt.n.Load(), "the writer's round trips")
			raw, err = e.raw.Get(ctx, sessionKey(ten, owner.id(), suffixAnchor)).Result()
			require.NoError(t, err)
			got, err := decodeAnchor(raw)
			require.NoError(t, err)
			assert.Equal(t, "resp_1", got.id, "the anchor stays")
			assert.False(t, got.carries, "the copy is stripped")
			ttl, err := e.raw.PTTL(ctx, sessionKey(ten, owner.id(), suffixAnchor)).Result()
			require.NoError(t, err)
			assert.Greater(t, ttl, 50*time.Minute, "and keeps its TTL")

			b := freshStore(t, e, ten, owner.id())
			anchor, calls, r, _ := movedRead(t, b, owner, "")
			assert.Equal(t, "resp_1", anchor)
			assert.Equal(t, tc.wantR, r)
			assert.Equal(t, tc.wantCalls, calls)
			require.NoError(t, e.raw.Del(ctx, pendingKey(ten, "resp_1"), convKey(ten, "resp_1")).Err())
		})
	}
	t.Run("an anchor that moved on is left alone", func(t *testing.T) {
		a := e.store(t)
		require.NoError(t, a.Commit(ctx, Batch{Scope: owner, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")}, Anchor: strp("resp_1")}))
		require.NoError(t, a.Commit(ctx, Batch{Scope: owner, DeletePending: []string{"resp_1"}, PutPending: &PendingPut{ResponseID: "resp_2", Calls: calls1("c2")},
			Anchor: strp("resp_2")}))
		n, err := stripScript.Run(ctx, e.raw, []string{sessionKey(ten, owner.id(), suffixAnchor)}, "resp_1").Int()
		require.NoError(t, err)
		assert.Zero(t, n)
		raw, err := e.raw.Get(ctx, sessionKey(ten, owner.id(), suffixAnchor)).Result()
		require.NoError(t, err)
		got, err := decodeAnchor(raw)
		require.NoError(t, err)
		assert.Equal(t, anchorValue{id: "resp_2", expiresMs: got.expiresMs, carries: true, calls: calls1("c2"), callsExpMs: got.callsExpMs}, got)
	})
}

// testCarriedExpiry: the copy ends with the pending key it copies (a response's chain TTL
// may be shorter than the anchor's).
func testCarriedExpiry(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1"), TTL: 200 * time.Millisecond},
		Anchor: strp("resp_1"), ReplayReset: true, ReplayAppend: []ReplayItem{item("function_call", "c1", 20)}}))
	time.Sleep(300 * time.Millisecond)
	b := freshStore(t, e, ten, "s")
	anchor, _, r, _ := movedRead(t, b, sc, "")
	assert.Equal(t, "resp_1", anchor)
	assert.Equal(t, Miss, r, "the pending key expired, and its copy with it")
}

// TestCarriedGenerations: a change of the pending key while the anchor was being read wins
// over the copy the anchor brings back, as for any read-through; so does a live local entry.
func TestCarriedGenerations(t *testing.T) {
	ctx := context.Background()
	val := string(encodeAnchorCarrying("resp_1", time.Now().Add(time.Hour).UnixMilli(), calls1("c1"), time.Now().Add(time.Hour).UnixMilli()))
	for _, tc := range []struct {
		name   string
		during func(s *Tiered) // between the snapshot and the answer
		want   Result
	}{
		{"nothing changed", func(*Tiered) {}, Hit},
		{"announced meanwhile", func(s *Tiered) { s.local.remove(lkey{KindPending, "t", "resp_1"}) }, Miss},
		{"deleted here meanwhile", func(s *Tiered) {
			require.NoError(t, s.Commit(ctx, Batch{Scope: Scope{Tenant: "t"}, DeletePending: []string{"resp_1"}}))
		}, Miss},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newLocal(t)
			ak := lkey{KindAnchor, "t", "s"}
			var gens [genSlots]uint64
			s.local.generations(&gens)
			tc.during(s)
			id, r := s.anchorFrom(ak, s.local.generation(ak), &gens, val, nil)
			require.Equal(t, Hit, r)
			require.Equal(t, "resp_1", id)
			calls, r := s.Pending(ctx, "t", "resp_1")
			assert.Equal(t, tc.want, r)
			if r == Hit {
				assert.Equal(t, calls1("c1"), calls)
			}
		})
	}
}
