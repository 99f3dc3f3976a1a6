package statestore

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConvCodec(t *testing.T) {
	for _, tc := range []struct{ session, lane string }{
		{"s", ""},
		{"0196f4c2-7a0e-7d31-9a51-6a1f2b3c4d5e", "lane_2"},
		{"a:l:b", "x"}, // a session that spells a lane separator is still one session
	} {
		enc := encodeConv(tc.session, tc.lane, 1234)
		session, lane, exp, err := decodeConv(string(enc))
		require.NoError(t, err)
		assert.Equal(t, tc.session, session)
		assert.Equal(t, tc.lane, lane)
		assert.Equal(t, int64(1234), exp)
	}
	for _, bad := range []string{"", "2", "1\x00", "1\x00\x05ab"} {
		_, _, _, err := decodeConv(bad)
		assert.ErrorIs(t, err, errCorrupt, "%q", bad)
	}
}

// TestConversationLocal: the index on the local tier alone, for each way a commit can
// write it or not.
func TestConversationLocal(t *testing.T) {
	ctx := context.Background()
	other := TenantOf("other")
	for _, tc := range []struct {
		name   string
		opts   []Option
		batch  Batch
		tenant string // asked for; "" is the batch's
		id     string
		want   Result
		scope  Scope // the answer on a Hit
		wait   time.Duration
	}{
		{name: "default lane", batch: Batch{Scope: Scope{Tenant: "t", Session: "s"}, PutPending: &PendingPut{ResponseID: "r"}},
			id: "r", want: Hit, scope: Scope{Tenant: "t", Session: "s"}},
		{name: "lane", batch: Batch{Scope: Scope{Tenant: "t", Session: "s", Lane: "l2"}, PutPending: &PendingPut{ResponseID: "r"}},
			id: "r", want: Hit, scope: Scope{Tenant: "t", Session: "s", Lane: "l2"}},
		{name: "another tenant never finds it", batch: Batch{Scope: Scope{Tenant: "t", Session: "s"}, PutPending: &PendingPut{ResponseID: "r"}},
			tenant: other, id: "r", want: Miss},
		{name: "no session, no index", batch: Batch{Scope: Scope{Tenant: "t"}, PutPending: &PendingPut{ResponseID: "r"}},
			id: "r", want: Miss},
		{name: "only a put indexes", batch: Batch{Scope: Scope{Tenant: "t", Session: "s"}, Anchor: strp("r")},
			id: "r", want: Miss},
		{name: "empty id", batch: Batch{Scope: Scope{Tenant: "t", Session: "s"}, PutPending: &PendingPut{ResponseID: "r"}},
			id: "", want: Miss},
		{name: "follows the anchor's TTL", opts: []Option{WithTTL(KindAnchor, 30*time.Millisecond)},
			batch: Batch{Scope: Scope{Tenant: "t", Session: "s"}, PutPending: &PendingPut{ResponseID: "r"}},
			id:    "r", want: Miss, wait: 60 * time.Millisecond},
		{name: "not the pending TTL", batch: Batch{Scope: Scope{Tenant: "t", Session: "s"}, PutPending: &PendingPut{ResponseID: "r", TTL: 30 * time.Millisecond}},
			id: "r", want: Hit, scope: Scope{Tenant: "t", Session: "s"}, wait: 60 * time.Millisecond},
		{name: "a TTL of its own", opts: []Option{WithTTL(KindAnchor, time.Hour), WithTTL(KindConversation, 30*time.Millisecond)},
			batch: Batch{Scope: Scope{Tenant: "t", Session: "s"}, PutPending: &PendingPut{ResponseID: "r"}},
			id:    "r", want: Miss, wait: 60 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newLocal(t, tc.opts...)
			require.NoError(t, s.Commit(ctx, tc.batch))
			time.Sleep(tc.wait)
			ten := tc.tenant
			if ten == "" {
				ten = tc.batch.Scope.Tenant
			}
			got, r := s.Conversation(ctx, ten, tc.id)
			assert.Equal(t, tc.want, r)
			assert.Equal(t, tc.scope, got)
		})
	}
	t.Run("a later put moves it", func(t *testing.T) {
		s := newLocal(t)
		require.NoError(t, s.Commit(ctx, Batch{Scope: Scope{Tenant: "t", Session: "s1"}, PutPending: &PendingPut{ResponseID: "r"}}))
		require.NoError(t, s.Commit(ctx, Batch{Scope: Scope{Tenant: "t", Session: "s2", Lane: "b"}, PutPending: &PendingPut{ResponseID: "r"}}))
		got, r := s.Conversation(ctx, "t", "r")
		assert.Equal(t, Hit, r)
		assert.Equal(t, Scope{Tenant: "t", Session: "s2", Lane: "b"}, got)
		assert.Equal(t, 1.0, lookups(s, KindConversation, tierLocal, Hit))
	})
}

// TestConversation: the index over Redis, standalone and Cluster.
func TestConversation(t *testing.T) {
	for _, mk := range []func(testing.TB) *env{standaloneEnv, clusterEnv} {
		e := mk(t)
		t.Run(e.name, func(t *testing.T) {
			t.Run("CrossInstance", func(t *testing.T) { testConversationCrossInstance(t, e) })
			t.Run("TenantIsolation", func(t *testing.T) { testConversationTenants(t, e) })
			t.Run("InvalidatedOnOverwrite", func(t *testing.T) { testConversationOverwrite(t, e) })
			t.Run("Prefetch", func(t *testing.T) { testConversationPrefetch(t, e) })
			t.Run("CommitOneRoundTrip", func(t *testing.T) { testCommitRoundTrips(t, e) })
		})
	}
}

func testConversationCrossInstance(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t, WithTTL(KindAnchor, 10*time.Minute))
	b := e.store(t)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s", Lane: "l1"}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1"), TTL: time.Minute},
		Anchor: strp("resp_1")}))
	settle(t, a, b)
	for i := 0; i < 2; i++ { // from Redis, then from B's backfilled copy
		got, r := b.Conversation(ctx, ten, "resp_1")
		assert.Equal(t, Hit, r)
		assert.Equal(t, sc, got)
	}
	assert.Equal(t, 1.0, lookups(b, KindConversation, tierRedis, Hit))
	assert.Equal(t, 1.0, lookups(b, KindConversation, tierLocal, Hit))
	_, r := b.Conversation(ctx, ten, "resp_nope")
	assert.Equal(t, Miss, r)

	// Next to the pending key (one Cluster slot), with the anchor's TTL, not the pending one's.
	pttl, err := e.raw.PTTL(ctx, convKey(ten, "resp_1")).Result()
	require.NoError(t, err)
	assert.Greater(t, pttl, 9*time.Minute)
	assert.LessOrEqual(t, pttl, 10*time.Minute)
	if cc, ok := e.raw.(*redis.ClusterClient); ok {
		s1, err := cc.ClusterKeySlot(ctx, convKey(ten, "resp_1")).Result()
		require.NoError(t, err)
		s2, err := cc.ClusterKeySlot(ctx, pendingKey(ten, "resp_1")).Result()
		require.NoError(t, err)
		assert.Equal(t, s2, s1, "the conversation key shares the pending key's slot")
	}
}

func testConversationTenants(t *testing.T, e *env) {
	ctx := context.Background()
	a, b := e.store(t), e.store(t)
	t1, t2 := TenantOf("Bearer one-"+t.Name()), TenantOf("Bearer two-"+t.Name())
	require.NoError(t, a.Commit(ctx, Batch{Scope: Scope{Tenant: t1, Session: "shared"}, PutPending: &PendingPut{ResponseID: "resp_same"}}))
	settle(t, a, b)
	for name, s := range map[string]*Tiered{"same instance": a, "other instance": b} {
		_, r := s.Conversation(ctx, t2, "resp_same")
		assert.Equal(t, Miss, r, name)
		got, r := s.Conversation(ctx, t1, "resp_same")
		assert.Equal(t, Hit, r, name)
		assert.Equal(t, t1, got.Tenant, name)
	}
	// The other tenant's own commit of the same response id indexes its own conversation
	// and leaves the first tenant's alone.
	require.NoError(t, b.Commit(ctx, Batch{Scope: Scope{Tenant: t2, Session: "theirs"}, PutPending: &PendingPut{ResponseID: "resp_same"}}))
	settle(t, b, a)
	got, r := a.Conversation(ctx, t1, "resp_same")
	assert.Equal(t, Hit, r)
	assert.Equal(t, "shared", got.Session)
	got, r = a.Conversation(ctx, t2, "resp_same")
	assert.Equal(t, Hit, r)
	assert.Equal(t, "theirs", got.Session)
}

func testConversationOverwrite(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t)
	b := e.store(t, WithHotTTL(time.Hour)) // only an invalidation can drop B's copy
	ten := tenant(t)
	require.NoError(t, a.Commit(ctx, Batch{Scope: Scope{Tenant: ten, Session: "s1"}, PutPending: &PendingPut{ResponseID: "resp_1"}}))
	settle(t, a, b)
	got, r := b.Conversation(ctx, ten, "resp_1")
	require.Equal(t, Hit, r)
	require.Equal(t, "s1", got.Session)
	require.True(t, b.local.has(lkey{KindConversation, ten, "resp_1"}))

	require.NoError(t, a.Commit(ctx, Batch{Scope: Scope{Tenant: ten, Session: "s2", Lane: "b"}, PutPending: &PendingPut{ResponseID: "resp_1"}}))
	eventually(t, time.Second, func() bool {
		got, r := b.Conversation(ctx, ten, "resp_1")
		return r == Hit && got.Session == "s2" && got.Lane == "b"
	}, "the overwrite reached B")
}

func testConversationPrefetch(t *testing.T, e *env) {
	ctx := context.Background()
	a, b := e.store(t), e.store(t)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s", Lane: "l"}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")}, Anchor: strp("resp_1")}))
	settle(t, a, b)
	rt := &roundTrips{}
	b.client().AddHook(rt)
	keys := []lkey{{KindPending, ten, "resp_1"}, {KindConversation, ten, "resp_1"}}
	// The request names no session: only what its previous_response_id leads to is read.
	for attempt := 0; attempt < 5; attempt++ {
		for _, k := range keys {
			b.local.remove(k)
		}
		rt.n.Store(0)
		b.Prefetch(ctx, Scope{Tenant: ten}, "resp_1")
		require.Equal(t, int64(1), rt.n.Load(), "one pipelined read")
		if b.local.has(keys[0]) && b.local.has(keys[1]) {
			break
		}
	}
	got, r := b.Conversation(ctx, ten, "resp_1")
	assert.Equal(t, Hit, r)
	assert.Equal(t, sc, got)
	calls, r := b.Pending(ctx, ten, "resp_1")
	assert.Equal(t, Hit, r)
	assert.Equal(t, calls1("c1"), calls)
	assert.Equal(t, int64(1), rt.n.Load(), "answered locally after the prefetch")
}

// testCommitRoundTrips: indexing the conversation adds a write, not a round trip. On a
// standalone server a whole commit is one round trip; on a Cluster the announcement
// follows the writes (see writeRedis), so two.
func testCommitRoundTrips(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	// Load the scripts first (on every node: a Cluster keeps them per node); a server's
	// first use of one sends it once more.
	for _, sc := range []*redis.Script{replayScript, delScript, stripScript} {
		require.NoError(t, sc.Load(ctx, e.raw).Err())
	}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 10)}}))
	rt := &roundTrips{}
	a.client().AddHook(rt)
	want := int64(1)
	if a.sharded() {
		want = 2
	}
	for i, b := range []Batch{
		{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")}, Anchor: strp("resp_1"),
			ReplayAppend: []ReplayItem{item("function_call", "c1", 10)}, ReplayLastResponseID: "resp_1"},
		{Scope: sc, DeletePending: []string{"resp_1"}, PutPending: &PendingPut{ResponseID: "resp_2"}, Anchor: strp("resp_2"),
			ReplayAppend: []ReplayItem{item("function_call_output", "c1", 10), item("message", "", 10)}, ReplayLastResponseID: "resp_2"},
	} {
		rt.n.Store(0)
		require.NoError(t, a.Commit(ctx, b))
		assert.Equal(t, want, rt.n.Load(), "commit %d", i)
	}
	assert.Positive(t, testutil.ToFloat64(a.metrics.commits[commitRedis]))
	for _, id := range []string{"resp_1", "resp_2"} {
		n, err := e.raw.Exists(ctx, convKey(ten, id)).Result()
		require.NoError(t, err)
		assert.Equal(t, int64(1), n, "%s indexed", id)
	}
}
