package statestore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWriteback: values committed while Redis did not answer reach Redis once it answers
// again, never over a newer value, and values that cannot be written back are deleted
// there, on a standalone server and on a Cluster.
func TestWriteback(t *testing.T) {
	for _, mk := range []func(testing.TB) *env{standaloneEnv, clusterEnv} {
		e := mk(t)
		t.Run(e.name, func(t *testing.T) {
			t.Run("AfterBlip", func(t *testing.T) { testWritebackAfterBlip(t, e) })
			t.Run("NeverOverANewerValue", func(t *testing.T) { testWritebackSuperseded(t, e) })
			t.Run("LostValuesDeleted", func(t *testing.T) { testWritebackLost(t, e) })
			t.Run("NeverOverANewerDelete", func(t *testing.T) { testWritebackTombstone(t, e) })
		})
	}
}

func wb(s *Tiered, result int) float64 { return testutil.ToFloat64(s.metrics.writebacks[result]) }

// pauseRedis stops every server from answering for d, keeping its data.
func pauseRedis(t *testing.T, e *env, d time.Duration) {
	t.Helper()
	ctx := context.Background()
	pause := func(ctx context.Context, c *redis.Client) error {
		return c.Do(ctx, "client", "pause", d.Milliseconds(), "all").Err()
	}
	if cc, ok := e.raw.(*redis.ClusterClient); ok {
		require.NoError(t, cc.ForEachMaster(ctx, pause))
	} else {
		require.NoError(t, pause(ctx, e.raw.(*redis.Client)))
	}
}

// The bug the e2e suite found: Redis pauses (data intact), A commits turn 2 locally, and
// after the pause B must read turn 2, not turn 1.
func testWritebackAfterBlip(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t, WithOpTimeout(100*time.Millisecond))
	b := e.store(t)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")},
		Anchor: strp("resp_1"), ReplayReset: true, ReplayLastResponseID: "resp_1",
		ReplayAppend: []ReplayItem{item("message", "", 10), item("function_call", "c1", 10)}}))

	pauseRedis(t, e, 1500*time.Millisecond)
	err := a.Commit(ctx, Batch{Scope: sc, DeletePending: []string{"resp_1"},
		PutPending: &PendingPut{ResponseID: "resp_2", Calls: calls1("c2"), TTL: 10 * time.Minute},
		Anchor:     strp("resp_2"), ReplayLastResponseID: "resp_2",
		ReplayAppend: []ReplayItem{item("function_call_output", "c1", 10), item("function_call", "c2", 10)}})
	require.ErrorIs(t, err, ErrDegraded)

	// No traffic needed: the write-back retries until Redis answers.
	eventually(t, 10*time.Second, func() bool { return wb(a, wbWritten) >= 4 }, "pending put and delete, anchor and transcript written back")
	assert.Zero(t, wb(a, wbFailed)+wb(a, wbDeleted)+wb(a, wbSuperseded))
	assert.Empty(t, a.local.dirty(), "every value confirmed")

	id, r := b.Anchor(ctx, sc)
	assert.Equal(t, Hit, r)
	assert.Equal(t, "resp_2", id)
	calls, r := b.Pending(ctx, ten, "resp_2")
	assert.Equal(t, Hit, r)
	assert.Equal(t, calls1("c2"), calls)
	_, r = b.Pending(ctx, ten, "resp_1")
	assert.Equal(t, Miss, r, "the answered calls stay answered")
	tr, r := b.Replay(ctx, sc)
	require.Equal(t, Hit, r)
	assert.Len(t, tr.Items, 4)
	assert.Equal(t, "resp_2", tr.LastResponseID)

	// The remaining TTL, not a fresh one.
	ttl, err := e.raw.PTTL(ctx, pendingKey(ten, "resp_2")).Result()
	require.NoError(t, err)
	assert.Greater(t, ttl, 9*time.Minute)
	assert.LessOrEqual(t, ttl, 10*time.Minute)
	ttl, err = e.raw.PTTL(ctx, sessionKey(ten, "s", suffixAnchor)).Result()
	require.NoError(t, err)
	assert.Greater(t, ttl, 59*time.Minute)
}

// Another instance wrote the session after A's failed commit and its announcement never
// reached A: A's write-back leaves the newer values in place and drops its own copies.
func testWritebackSuperseded(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t, WithBreaker(1, time.Hour))
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	a.breaker.failure(false) // Redis "down" for A
	err := a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_a", Calls: calls1("ca")},
		Anchor: strp("resp_a"), ReplayReset: true, ReplayLastResponseID: "resp_a",
		ReplayAppend: []ReplayItem{item("message", "", 10), item("function_call", "ca", 10)}})
	require.ErrorIs(t, err, ErrDegraded)

	later := time.Now().Add(time.Hour + time.Minute).UnixMilli()
	require.NoError(t, e.raw.Set(ctx, sessionKey(ten, "s", suffixAnchor), encodeAnchor("resp_b", later), time.Hour).Err())
	require.NoError(t, replayScript.Run(ctx, e.raw,
		[]string{sessionKey(ten, "s", suffixReplay), sessionKey(ten, "s", suffixReplayMeta)},
		"other:1", replayReset, "resp_b", DefaultReplayCap, time.Hour.Milliseconds(), later,
		encodeReplayItem(item("message", "", 20))).Err())

	a.breaker.success() // Redis "back"
	eventually(t, 10*time.Second, func() bool { return wb(a, wbSuperseded) >= 2 && wb(a, wbWritten) >= 1 }, "write-back")

	id, r := a.Anchor(ctx, sc)
	assert.Equal(t, Hit, r)
	assert.Equal(t, "resp_b", id, "A reads the newer anchor")
	tr, r := a.Replay(ctx, sc)
	require.Equal(t, Hit, r)
	assert.Equal(t, "resp_b", tr.LastResponseID)
	assert.Len(t, tr.Items, 1)
	raw, err := e.raw.Get(ctx, sessionKey(ten, "s", suffixAnchor)).Result()
	require.NoError(t, err)
	got, err := decodeAnchor(raw)
	require.NoError(t, err)
	assert.Equal(t, "resp_b", got.id, "the newer anchor stays in Redis")
	// The pending calls of A's response (a key nobody else writes) did go back.
	calls, r := e.store(t).Pending(ctx, ten, "resp_a")
	assert.Equal(t, Hit, r)
	assert.Equal(t, calls1("ca"), calls)
}

// A's local tier is too small to keep what it committed while Redis was down: the values
// it lost are answered Unknown on A (never read from Redis, which holds older ones), and
// deleted from Redis once it answers, so B sees a miss instead of stale state.
func testWritebackLost(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t, WithBreaker(1, time.Hour), WithLocalEntries(4))
	b := e.store(t)
	ten := tenant(t)
	scope := func(i int) Scope { return Scope{Tenant: ten, Session: fmt.Sprintf("s%d", i)} }
	const sessions = 6
	for i := 0; i < sessions; i++ {
		require.NoError(t, a.Commit(ctx, Batch{Scope: scope(i), Anchor: strp(fmt.Sprintf("resp_%d_1", i)), ReplayReset: true,
			ReplayAppend: []ReplayItem{item("message", "", 10)}, ReplayLastResponseID: fmt.Sprintf("resp_%d_1", i)}))
	}
	a.breaker.failure(false)
	for i := 0; i < sessions; i++ {
		err := a.Commit(ctx, Batch{Scope: scope(i), Anchor: strp(fmt.Sprintf("resp_%d_2", i)),
			ReplayAppend: []ReplayItem{item("message", "", 10)}, ReplayLastResponseID: fmt.Sprintf("resp_%d_2", i)})
		require.ErrorIs(t, err, ErrDegraded)
	}
	_, r := a.Anchor(ctx, scope(0))
	assert.Equal(t, Unknown, r, "a lost value is unknown, not Redis's older one")
	_, r = a.Replay(ctx, scope(0))
	assert.Equal(t, Unknown, r)

	a.breaker.success()
	eventually(t, 10*time.Second, func() bool { return wb(a, wbDeleted) >= 8 && wb(a, wbWritten) >= 2 }, "write-back")
	assert.Zero(t, wb(a, wbFailed))
	for i := 0; i < sessions; i++ {
		id, r := b.Anchor(ctx, scope(i))
		if i < sessions-2 {
			assert.Equal(t, Miss, r, "session %d: deleted, not resp_%d_1", i, i)
		} else {
			assert.Equal(t, Hit, r)
			assert.Equal(t, fmt.Sprintf("resp_%d_2", i), id)
		}
		_, r = b.Replay(ctx, scope(i))
		assert.Equal(t, Miss, r, "session %d: the transcript has a gap and is never replayed", i)
	}
	_, r = a.Anchor(ctx, scope(0))
	assert.Equal(t, Miss, r, "A reads Redis again")
}

// Another instance's write-back deleted the calls (answered elsewhere) later than A put
// them: the delete leaves a tombstone with its version, so A's older put does not come
// back over it.
func testWritebackTombstone(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t, WithBreaker(1, time.Hour))
	ten := tenant(t)
	a.breaker.failure(false) // Redis "down" for A
	require.ErrorIs(t, a.Commit(ctx, Batch{Scope: Scope{Tenant: ten}, PutPending: &PendingPut{ResponseID: "resp_a", Calls: calls1("ca")}}), ErrDegraded)
	later := time.Now().Add(2 * time.Hour).UnixMilli()
	require.NoError(t, guardScript.Run(ctx, e.raw, []string{pendingKey(ten, "resp_a")}, "d", later, encodeTombstone(later),
		time.Hour.Milliseconds(), "0").Err())

	a.breaker.success() // Redis "back"
	eventually(t, 10*time.Second, func() bool { return wb(a, wbSuperseded) >= 1 }, "write-back")
	_, r := a.Pending(ctx, ten, "resp_a")
	assert.Equal(t, Miss, r, "A drops its older value")
	v, err := e.raw.Get(ctx, pendingKey(ten, "resp_a")).Result()
	require.NoError(t, err)
	assert.True(t, absent(v, nil), "the tombstone stays")
	_, r = e.store(t).Pending(ctx, ten, "resp_a")
	assert.Equal(t, Miss, r, "and reads as no value")
}
