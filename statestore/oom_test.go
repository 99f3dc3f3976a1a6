package statestore

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// setMaxmemory sets maxmemory on every master of e, with the noeviction policy: "1"
// makes every write Redis would have to find memory for fail with OOM, "0" lifts it.
func setMaxmemory(t *testing.T, e *env, v string) {
	t.Helper()
	ctx := context.Background()
	set := func(ctx context.Context, c *redis.Client) error {
		if err := c.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
			return err
		}
		return c.ConfigSet(ctx, "maxmemory", v).Err()
	}
	if cc, ok := e.raw.(*redis.ClusterClient); ok {
		require.NoError(t, cc.ForEachMaster(ctx, set))
	} else {
		require.NoError(t, set(ctx, e.raw.(*redis.Client)))
	}
}

// TestOOM: a Redis out of memory (maxmemory, noeviction) takes a commit whole or not at
// all, on a standalone server (a transaction) and on a Cluster (every write refused before
// it changes anything); the write-back writes nothing back, and says nothing was, until
// Redis takes writes again; then the other instances read the whole turn (issue 11).
func TestOOM(t *testing.T) {
	for _, mk := range []func(testing.TB) *env{standaloneEnv, clusterEnv} {
		e := mk(t)
		t.Run(e.name, func(t *testing.T) { testOOM(t, e) })
	}
}

func testOOM(t *testing.T, e *env) {
	ctx := context.Background()
	a, rec, _ := open(t, e.url)
	waitReady(t, a, 5*time.Second)
	b := e.store(t)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	turn1 := []ReplayItem{item("message", "", 20), item("function_call", "c1", 20)}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")},
		Anchor: strp("resp_1"), ReplayReset: true, ReplayAppend: turn1, ReplayLastResponseID: "resp_1"}))
	// A warm commit of every kind of write, so that no script is loaded during the test.
	require.NoError(t, a.Commit(ctx, Batch{Scope: Scope{Tenant: ten, Session: "warm"}, DeletePending: []string{"resp_1x"}, Anchor: strp(""),
		ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 5)}}))

	setMaxmemory(t, e, "1")
	t.Cleanup(func() { setMaxmemory(t, e, "0") })
	// A full create that replaces the transcript (the reset deletes first: the case that
	// once wrote the transcript of a commit Redis otherwise refused), answers resp_1's call
	// and leaves one of its own.
	turn2 := []ReplayItem{item("message", "", 20), item("function_call", "c1", 20), item("function_call_output", "c1", 20),
		item("function_call", "c2", 20)}
	err := a.Commit(ctx, Batch{Scope: sc, DeletePending: []string{"resp_1"}, PutPending: &PendingPut{ResponseID: "resp_2", Calls: calls1("c2")},
		Anchor: strp("resp_2"), ReplayReset: true, ReplayAppend: turn2, ReplayLastResponseID: "resp_2"})
	require.ErrorIs(t, err, ErrDegraded)
	assert.Contains(t, err.Error(), "OOM")

	// Redis holds turn 1 whole, nothing of turn 2, and the write-back adds nothing while
	// Redis refuses: a few passes go by.
	eventually(t, 5*time.Second, func() bool { return len(rec.lines("redis refuses writes")) > 0 }, "the refusal is logged")
	time.Sleep(600 * time.Millisecond)
	assertTurn1 := func() {
		t.Helper()
		raw, err := e.raw.Get(ctx, sessionKey(ten, "s", suffixAnchor)).Result()
		require.NoError(t, err)
		got, err := decodeAnchor(raw)
		require.NoError(t, err)
		assert.Equal(t, "resp_1", got.id, "anchor")
		assert.Equal(t, calls1("c1"), got.calls, "the calls it carries")
		n, err := e.raw.Exists(ctx, pendingKey(ten, "resp_1")).Result()
		require.NoError(t, err)
		assert.Equal(t, int64(1), n, "resp_1's calls are not deleted")
		for _, k := range []string{pendingKey(ten, "resp_2"), convKey(ten, "resp_2")} {
			n, err := e.raw.Exists(ctx, k).Result()
			require.NoError(t, err)
			assert.Zero(t, n, "%s not written", k)
		}
		l, err := e.raw.LLen(ctx, sessionKey(ten, "s", suffixReplay)).Result()
		require.NoError(t, err)
		assert.Equal(t, int64(len(turn1)), l, "transcript")
		last, err := e.raw.HGet(ctx, sessionKey(ten, "s", suffixReplayMeta), "l").Result()
		require.NoError(t, err)
		assert.Equal(t, "resp_1", last)
	}
	assertTurn1()
	assert.Len(t, rec.lines("redis refuses writes"), 1, "logged once per refusal, not per pass")
	assert.Empty(t, rec.lines("state committed while redis was unreachable written back"))
	assert.Zero(t, wb(a, wbDeleted)+wb(a, wbFailed), "nothing deleted in Redis's place")
	// Meanwhile both instances go on: A from its local tier, B with turn 1 from Redis.
	id, r := a.Anchor(ctx, sc)
	assert.Equal(t, Hit, r)
	assert.Equal(t, "resp_2", id)
	id, r = b.Anchor(ctx, sc)
	assert.Equal(t, Hit, r)
	assert.Equal(t, "resp_1", id)
	assert.Equal(t, float64(breakerClosed), float64(a.breakerState.Load()), "reads still work: the breaker stays closed")

	setMaxmemory(t, e, "0")
	eventually(t, 10*time.Second, func() bool {
		return len(rec.lines("state committed while redis was unreachable written back")) > 0
	}, "written back once Redis takes writes")
	assert.Len(t, rec.lines("redis accepts writes again"), 1)
	eventually(t, 5*time.Second, func() bool {
		id, r := b.Anchor(ctx, sc)
		tr, tr2 := b.Replay(ctx, sc)
		return r == Hit && id == "resp_2" && tr2 == Hit && len(tr.Items) == len(turn2) && tr.LastResponseID == "resp_2"
	}, "B reads turn 2 whole")
	calls, r := b.Pending(ctx, ten, "resp_2")
	assert.Equal(t, Hit, r)
	assert.Equal(t, calls1("c2"), calls)
	_, r = b.Pending(ctx, ten, "resp_1")
	assert.Equal(t, Miss, r)
}
