package statestore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/internal/redistest"
)

type silentRedisLogger struct{}

func (silentRedisLogger) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	// go-redis logs every refused dial; the outage tests cause many on
	// purpose.
	redis.SetLogger(silentRedisLogger{})
	os.Exit(m.Run())
}

// env is one Redis deployment the suite runs against.
type env struct {
	name    string
	url     string
	raw     redis.UniversalClient
	kill    func()
	restart func()
}

// store starts a store on the env with test-friendly breaker settings;
// stores are closed when the test ends.
func (e *env) store(t testing.TB, opts ...Option) *Tiered {
	t.Helper()
	base := []Option{
		WithRedisURL(e.url),
		WithLogger(quiet),
		WithRegisterer(prometheus.NewRegistry()),
		WithBreaker(3, 200*time.Millisecond),
		WithOpTimeout(500 * time.Millisecond), // generous under -race; outages are refused connections anyway
	}
	s, err := New(append(base, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	select {
	case <-s.subReady:
	case <-time.After(5 * time.Second):
		t.Fatal("store never subscribed to invalidations")
	}
	return s
}

func standaloneEnv(t testing.TB) *env {
	srv := redistest.Start(t)
	return &env{name: "standalone", url: srv.URL(), raw: srv.Client(), kill: srv.Kill, restart: srv.Restart}
}

func clusterEnv(t testing.TB) *env {
	c := redistest.StartCluster(t, 3)
	return &env{name: "cluster", url: c.URL(), raw: c.Client(), kill: c.Kill, restart: c.Restart}
}

// suite lists the integration cases. Each uses its own tenant so they can
// share one deployment; the outage case runs last because it restarts it.
var suite = []struct {
	name string
	fn   func(t *testing.T, e *env)
}{
	{"LocalHit", testLocalHit},
	{"ReadThroughSecondInstance", testReadThrough},
	{"Backfill", testBackfill},
	{"TTLExpiry", testTTLExpiry},
	{"DeleteInvalidatesOtherInstance", testDeleteInvalidation},
	{"OverwritePropagation", testOverwritePropagation},
	{"TenantIsolation", testTenantIsolation},
	{"ReplayAcrossInstances", testReplayAcrossInstances},
	{"ReplayCapWholeUnits", testReplayCap},
	{"ReplayKeep", testReplayKeep},
	{"ReplayKeepScript", testReplayKeepScript},
	{"ReplayKeepWriteback", testReplayKeepWriteback},
	{"ScriptCacheFlushed", testScriptFlushed},
	{"SlowRedis", testSlowRedis},
	{"Concurrent", testConcurrent},
	{"OutageAndRecovery", testOutage},
}

func TestRedis(t *testing.T) {
	for _, mk := range []func(testing.TB) *env{standaloneEnv, clusterEnv} {
		e := mk(t)
		t.Run(e.name, func(t *testing.T) {
			for _, tc := range suite {
				t.Run(tc.name, func(t *testing.T) { tc.fn(t, e) })
			}
		})
	}
}

// settle waits until b has received every announcement a sent, so a test's
// next read is not racing an invalidation still in flight (which would, by
// design, make b skip a backfill).
func settle(t *testing.T, a, b *Tiered) {
	t.Helper()
	eventually(t, time.Second, func() bool {
		n, ok := b.heard.Load(a.cfg.instanceID)
		return a.published.Load() == 0 || ok && n.(*atomic.Int64).Load() >= a.published.Load()
	}, "announcements delivered")
}

func tenant(t *testing.T) string { return TenantOf("Bearer " + t.Name()) }

func calls1(id string) []Call { return []Call{{ID: id, Kind: "function_call"}} }

func lookups(s *Tiered, k Kind, tier int, r Result) float64 {
	return testutil.ToFloat64(s.metrics.lookups[k][tier][r])
}

// eventually polls cond every 2 ms until it holds or within passes.
func eventually(t *testing.T, within time.Duration, cond func() bool, msg string) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if cond() {
		return time.Since(start)
	}
	t.Fatalf("%s: not within %s", msg, within)
	return 0
}

func testLocalHit(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")},
		Anchor: strp("resp_1"), ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 20)}, ReplayLastResponseID: "resp_1"}))
	for i := 0; i < 3; i++ { // a session that stays on its instance: every turn's reads are local
		calls, r := a.Pending(ctx, ten, "resp_1")
		assert.Equal(t, Hit, r)
		assert.Equal(t, calls1("c1"), calls)
		id, r := a.Anchor(ctx, sc)
		assert.Equal(t, Hit, r)
		assert.Equal(t, "resp_1", id)
		_, r = a.Replay(ctx, sc)
		assert.Equal(t, Hit, r)
		found, r := a.Conversation(ctx, ten, "resp_1")
		assert.Equal(t, Hit, r)
		assert.Equal(t, sc, found)
	}
	for k := Kind(0); k < numKinds; k++ {
		assert.Equal(t, 3.0, lookups(a, k, tierLocal, Hit), k.String())
		for r := Miss; r <= Unknown; r++ {
			assert.Zero(t, lookups(a, k, tierRedis, r), "no redis read for %s", k)
		}
	}
	assert.Equal(t, 1.0, testutil.ToFloat64(a.metrics.commits[commitRedis]))
}

func testReadThrough(t *testing.T, e *env) {
	ctx := context.Background()
	a, b := e.store(t), e.store(t)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")},
		Anchor: strp("resp_1")}))
	calls, r := b.Pending(ctx, ten, "resp_1")
	assert.Equal(t, Hit, r)
	assert.Equal(t, calls1("c1"), calls)
	assert.Equal(t, 1.0, lookups(b, KindPending, tierRedis, Hit))
	id, r := b.Anchor(ctx, sc)
	assert.Equal(t, Hit, r)
	assert.Equal(t, "resp_1", id)

	// Unknown keys are misses, and a miss is remembered briefly.
	_, r = b.Pending(ctx, ten, "resp_nope")
	assert.Equal(t, Miss, r)
	_, r = b.Pending(ctx, ten, "resp_nope")
	assert.Equal(t, Miss, r)
	assert.Equal(t, 1.0, lookups(b, KindPending, tierRedis, Miss))
	assert.Equal(t, 1.0, lookups(b, KindPending, tierLocal, Miss))

	// An empty pending list is known on the other instance too.
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_2"}}))
	calls, r = b.Pending(ctx, ten, "resp_2")
	assert.Equal(t, Hit, r)
	assert.Empty(t, calls)
}

func testBackfill(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t)
	b := e.store(t, WithHotTTL(300*time.Millisecond))
	ten := tenant(t)
	require.NoError(t, a.Commit(ctx, Batch{Scope: Scope{Tenant: ten}, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")}}))
	settle(t, a, b)
	_, r := b.Pending(ctx, ten, "resp_1")
	require.Equal(t, Hit, r)
	// Delete behind the stores' back (no announcement): B still answers
	// from its backfilled copy, without asking Redis ...
	require.NoError(t, e.raw.Del(ctx, pendingKey(ten, "resp_1")).Err())
	_, r = b.Pending(ctx, ten, "resp_1")
	assert.Equal(t, Hit, r)
	assert.Equal(t, 1.0, lookups(b, KindPending, tierLocal, Hit))
	assert.Equal(t, 1.0, lookups(b, KindPending, tierRedis, Hit))
	// ... until the short hot TTL of backfilled copies runs out.
	time.Sleep(350 * time.Millisecond)
	_, r = b.Pending(ctx, ten, "resp_1")
	assert.Equal(t, Miss, r)
}

func testTTLExpiry(t *testing.T, e *env) {
	ctx := context.Background()
	ttl := 300 * time.Millisecond
	a := e.store(t, WithTTL(KindAnchor, ttl), WithTTL(KindReplay, ttl))
	b := e.store(t)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1"), TTL: ttl},
		Anchor: strp("resp_1"), ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 20)}}))
	pttl, err := e.raw.PTTL(ctx, pendingKey(ten, "resp_1")).Result()
	require.NoError(t, err)
	assert.Greater(t, pttl, time.Duration(0))
	assert.LessOrEqual(t, pttl, ttl)
	for _, key := range []string{sessionKey(ten, "s", suffixReplay), sessionKey(ten, "s", suffixReplayMeta), sessionKey(ten, "s", suffixAnchor)} {
		pttl, err := e.raw.PTTL(ctx, key).Result()
		require.NoError(t, err)
		assert.Greater(t, pttl, time.Duration(0), key)
	}
	settle(t, a, b)
	_, r := b.Pending(ctx, ten, "resp_1")
	require.Equal(t, Hit, r)
	_, r = b.Anchor(ctx, sc)
	require.Equal(t, Hit, r)
	_, r = b.Replay(ctx, sc)
	require.Equal(t, Hit, r)
	require.Equal(t, 3.0, testutil.ToFloat64(b.metrics.lookups[KindPending][tierRedis][Hit])+
		testutil.ToFloat64(b.metrics.lookups[KindAnchor][tierRedis][Hit])+testutil.ToFloat64(b.metrics.lookups[KindReplay][tierRedis][Hit]))
	// B's backfilled copies must not outlive the keys (its hot TTL is 30 s).
	time.Sleep(ttl + 100*time.Millisecond)
	for name, s := range map[string]*Tiered{"writer": a, "reader": b} {
		_, r := s.Pending(ctx, ten, "resp_1")
		assert.Equal(t, Miss, r, name)
		_, r = s.Anchor(ctx, sc)
		assert.Equal(t, Miss, r, name)
		_, r = s.Replay(ctx, sc)
		assert.Equal(t, Miss, r, name)
	}
}

func testDeleteInvalidation(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t)
	b := e.store(t, WithHotTTL(time.Hour)) // only an invalidation can remove B's copy
	ten := tenant(t)
	require.NoError(t, a.Commit(ctx, Batch{Scope: Scope{Tenant: ten}, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")}}))
	settle(t, a, b)
	_, r := b.Pending(ctx, ten, "resp_1")
	require.Equal(t, Hit, r)
	k := lkey{KindPending, ten, "resp_1"}
	require.True(t, b.local.has(k))

	require.NoError(t, a.Commit(ctx, Batch{Scope: Scope{Tenant: ten}, DeletePending: []string{"resp_1"}}))
	took := eventually(t, 100*time.Millisecond, func() bool { return !b.local.has(k) }, "delete reached B's local tier")
	t.Logf("invalidation took %s", took)
	_, r = b.Pending(ctx, ten, "resp_1")
	assert.Equal(t, Miss, r)
	assert.Equal(t, 2.0, testutil.ToFloat64(a.metrics.invalSent), "the put and the delete")
	assert.Equal(t, 2.0, testutil.ToFloat64(b.metrics.invalReceived))
	assert.Zero(t, testutil.ToFloat64(a.metrics.invalReceived), "own announcements are ignored")
}

func testOverwritePropagation(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t)
	b := e.store(t, WithHotTTL(time.Hour))
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	for i, want := range []string{"resp_1", "resp_2", "resp_3"} {
		require.NoError(t, a.Commit(ctx, Batch{Scope: sc, Anchor: strp(want)}))
		eventually(t, 100*time.Millisecond, func() bool {
			got, r := b.Anchor(ctx, sc)
			return r == Hit && got == want
		}, fmt.Sprintf("overwrite %d seen by B", i))
	}
	// Clearing propagates as well.
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, Anchor: strp("")}))
	eventually(t, 100*time.Millisecond, func() bool { _, r := b.Anchor(ctx, sc); return r == Miss }, "clear seen by B")
	// And B's writes reach A.
	require.NoError(t, b.Commit(ctx, Batch{Scope: sc, Anchor: strp("resp_b")}))
	eventually(t, 100*time.Millisecond, func() bool { id, _ := a.Anchor(ctx, sc); return id == "resp_b" }, "B's write seen by A")
}

func testTenantIsolation(t *testing.T, e *env) {
	ctx := context.Background()
	a, b := e.store(t), e.store(t)
	t1, t2 := TenantOf("Bearer key-one-"+t.Name()), TenantOf("Bearer key-two-"+t.Name())
	sc1, sc2 := Scope{Tenant: t1, Session: "shared"}, Scope{Tenant: t2, Session: "shared"}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc1, PutPending: &PendingPut{ResponseID: "resp_same", Calls: calls1("c1")},
		Anchor: strp("resp_same"), ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 10)}}))
	for name, s := range map[string]*Tiered{"same instance": a, "other instance": b} {
		_, r := s.Pending(ctx, t2, "resp_same")
		assert.Equal(t, Miss, r, name)
		_, r = s.Anchor(ctx, sc2)
		assert.Equal(t, Miss, r, name)
		_, r = s.Replay(ctx, sc2)
		assert.Equal(t, Miss, r, name)
		_, r = s.Pending(ctx, t1, "resp_same")
		assert.Equal(t, Hit, r, name)
	}
	// Keys hold the tenant hash, never the credential.
	keys, err := scanKeys(ctx, e.raw, "cm:{t:"+t1+"*")
	require.NoError(t, err)
	assert.NotEmpty(t, keys)
	for _, k := range keys {
		assert.NotContains(t, k, "key-one")
	}
}

// scanKeys lists keys on every master (a Cluster's SCAN is per node).
func scanKeys(ctx context.Context, c redis.UniversalClient, pattern string) ([]string, error) {
	var mu sync.Mutex
	var out []string
	scan := func(ctx context.Context, n *redis.Client) error {
		keys, err := n.Keys(ctx, pattern).Result()
		mu.Lock()
		out = append(out, keys...)
		mu.Unlock()
		return err
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		return out, cc.ForEachMaster(ctx, scan)
	}
	return out, scan(ctx, c.(*redis.Client))
}

func testReplayAcrossInstances(t *testing.T, e *env) {
	ctx := context.Background()
	a := e.store(t)
	b := e.store(t, WithHotTTL(time.Hour))
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	turn1 := []ReplayItem{item("message", "", 30), item("reasoning", "", 30), item("function_call", "c1", 30)}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, ReplayReset: true, ReplayAppend: turn1, ReplayLastResponseID: "resp_1"}))
	tr, r := b.Replay(ctx, sc)
	require.Equal(t, Hit, r)
	assert.Equal(t, turn1, tr.Items)
	assert.Equal(t, "resp_1", tr.LastResponseID)
	assert.False(t, tr.Trimmed)
	assert.Equal(t, len(turn1[0].Raw)+len(turn1[1].Raw)+len(turn1[2].Raw), tr.Bytes)

	// A's append reaches B (its copy is invalidated and re-read).
	turn2 := []ReplayItem{item("function_call_output", "c1", 30), item("message", "", 30)}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, ReplayAppend: turn2, ReplayLastResponseID: "resp_2"}))
	eventually(t, 100*time.Millisecond, func() bool { tr, _ := b.Replay(ctx, sc); return len(tr.Items) == 5 }, "append seen by B")
	tr, _ = b.Replay(ctx, sc)
	assert.Equal(t, append(append([]ReplayItem{}, turn1...), turn2...), tr.Items)
	assert.Equal(t, "resp_2", tr.LastResponseID)

	// The session moves to B, which appends to the copy it read; A sees it.
	require.NoError(t, b.Commit(ctx, Batch{Scope: sc, ReplayAppend: []ReplayItem{item("message", "", 30)}, ReplayLastResponseID: "resp_3"}))
	eventually(t, 100*time.Millisecond, func() bool { tr, _ := a.Replay(ctx, sc); return len(tr.Items) == 6 }, "B's append seen by A")
	trA, _ := a.Replay(ctx, sc)
	trB, _ := b.Replay(ctx, sc)
	assert.Equal(t, trB, trA)

	// A full create replaces the transcript.
	require.NoError(t, b.Commit(ctx, Batch{Scope: sc, ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 10)}}))
	eventually(t, 100*time.Millisecond, func() bool { tr, _ := a.Replay(ctx, sc); return len(tr.Items) == 1 }, "reset seen by A")
	tr, _ = a.Replay(ctx, sc)
	assert.Equal(t, "", tr.LastResponseID)
}

func testReplayCap(t *testing.T, e *env) {
	ctx := context.Background()
	const capBytes = 2000
	a := e.store(t, WithReplayCap(capBytes))
	ten := tenant(t)
	for _, tc := range []struct {
		name string
		// local: the writer holds the transcript (trims locally and in Redis);
		// remote: it does not (only the script trims).
		holdLocally bool
	}{{"writer holds transcript", true}, {"writer appends blind", false}} {
		t.Run(tc.name, func(t *testing.T) {
			sc := Scope{Tenant: ten, Session: tc.name}
			require.NoError(t, a.Commit(ctx, Batch{Scope: sc, ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 300)}}))
			for i := 0; i < 12; i++ {
				if !tc.holdLocally {
					a.local.remove(lkey{KindReplay, ten, sc.Session})
				}
				id := fmt.Sprintf("call_%d", i)
				require.NoError(t, a.Commit(ctx, Batch{Scope: sc, ReplayAppend: []ReplayItem{
					item("message", "", 40), item("reasoning", "", 60), item("function_call", id, 80),
					item("function_call", id+"b", 80), item("function_call_output", id+"b", 70), item("function_call_output", id, 70),
				}, ReplayLastResponseID: fmt.Sprintf("resp_%d", i)}))
			}
			b := e.store(t)
			trB, r := b.Replay(ctx, sc)
			require.Equal(t, Hit, r)
			assert.True(t, trB.Trimmed)
			assert.LessOrEqual(t, trB.Bytes, capBytes)
			assert.Equal(t, "resp_11", trB.LastResponseID)
			assertWholeUnits(t, trB)
			assert.Equal(t, "message", trB.Items[0].Type, "cuts fall between turns here")
			if tc.holdLocally {
				trA, r := a.Replay(ctx, sc)
				require.Equal(t, Hit, r)
				assert.Equal(t, trB, trA, "local and Redis trim identically")
				assert.Equal(t, 0.0, lookups(a, KindReplay, tierRedis, Hit))
			}
			assert.Positive(t, testutil.ToFloat64(a.metrics.replayTrims))
		})
	}
}

func testScriptFlushed(t *testing.T, e *env) {
	ctx := context.Background()
	a, b := e.store(t), e.store(t)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	flush := func(ctx context.Context, c *redis.Client) error { return c.ScriptFlush(ctx).Err() }
	if cc, ok := e.raw.(*redis.ClusterClient); ok {
		require.NoError(t, cc.ForEachMaster(ctx, flush))
	} else {
		require.NoError(t, flush(ctx, e.raw.(*redis.Client)))
	}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 10)}}))
	tr, r := b.Replay(ctx, sc)
	require.Equal(t, Hit, r)
	assert.Len(t, tr.Items, 1)
}

func testSlowRedis(t *testing.T, e *env) {
	ctx := context.Background()
	const opTimeout = 50 * time.Millisecond
	a := e.store(t)
	b := e.store(t, WithOpTimeout(opTimeout), WithBreaker(100, time.Second))
	ten := tenant(t)
	require.NoError(t, a.Commit(ctx, Batch{Scope: Scope{Tenant: ten}, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")}}))
	settle(t, a, b)
	// CLIENT PAUSE stalls every client: Redis is up but does not answer.
	pause := func(ctx context.Context, c *redis.Client) error {
		return c.Do(ctx, "client", "pause", 1500, "all").Err()
	}
	if cc, ok := e.raw.(*redis.ClusterClient); ok {
		require.NoError(t, cc.ForEachMaster(ctx, pause))
	} else {
		require.NoError(t, pause(ctx, e.raw.(*redis.Client)))
	}
	start := time.Now()
	_, r := b.Pending(ctx, ten, "resp_1")
	took := time.Since(start)
	assert.Equal(t, Unknown, r)
	assert.Less(t, took, 2*opTimeout+500*time.Millisecond, "bounded by the deadline and one retry, not by the 1.5 s pause")
	assert.Equal(t, 2.0, testutil.ToFloat64(b.metrics.redisErrors[opPending]), "one attempt and one retry")
	eventually(t, 3*time.Second, func() bool { _, r := b.Pending(ctx, ten, "resp_1"); return r == Hit }, "answers again after the pause")
}

func testConcurrent(t *testing.T, e *env) {
	ctx := context.Background()
	// This case is about data races and convergence, not latency: give a
	// loaded CI machine room before an operation counts as failed.
	slack := []Option{WithOpTimeout(2 * time.Second), WithBreaker(1000, time.Second)}
	stores := []*Tiered{e.store(t, slack...), e.store(t, slack...)}
	ten := tenant(t)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := Scope{Tenant: ten, Session: fmt.Sprintf("s%d", g%3)} // sessions shared by goroutines
			for i := 0; i < 40; i++ {
				s := stores[(g+i)%2]
				resp := fmt.Sprintf("resp_%d_%d", g, i)
				if err := s.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: resp, Calls: calls1("c")},
					DeletePending: []string{fmt.Sprintf("resp_%d_%d", g, i-1)}, Anchor: strp(resp),
					ReplayAppend: []ReplayItem{item("message", "", 50)}, ReplayLastResponseID: resp}); err != nil {
					errs <- err
					return
				}
				other := stores[(g+i+1)%2]
				if _, r := other.Pending(ctx, ten, resp); r != Hit {
					errs <- fmt.Errorf("pending %s on the other instance: %s", resp, r)
					return
				}
				other.Anchor(ctx, sc)
				other.Replay(ctx, sc)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Both instances converge on Redis's view of every session.
	for i := 0; i < 3; i++ {
		sc := Scope{Tenant: ten, Session: fmt.Sprintf("s%d", i)}
		eventually(t, time.Second, func() bool {
			t0, r0 := stores[0].Replay(ctx, sc)
			t1, r1 := stores[1].Replay(ctx, sc)
			return r0 == Hit && r1 == Hit && len(t0.Items) == len(t1.Items) && t0.Bytes == t1.Bytes
		}, "replays converge")
	}
}

func testOutage(t *testing.T, e *env) {
	ctx := context.Background()
	a, b := e.store(t), e.store(t)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")},
		Anchor: strp("resp_1"), ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 10)}, ReplayLastResponseID: "resp_1"}))

	e.kill()

	// Reads that need Redis answer Unknown quickly, never an error or a hang.
	start := time.Now()
	for i := 0; i < 5; i++ {
		_, r := b.Pending(ctx, ten, "resp_1")
		assert.Equal(t, Unknown, r)
		_, r = b.Anchor(ctx, sc)
		assert.Equal(t, Unknown, r)
		_, r = b.Replay(ctx, sc)
		assert.Equal(t, Unknown, r)
		_, r = b.Conversation(ctx, ten, "resp_1")
		assert.Equal(t, Unknown, r)
	}
	assert.Less(t, time.Since(start), 3*time.Second)
	assert.Equal(t, float64(breakerOpen), testutil.ToFloat64(b.metrics.breakerState), "breaker opened")
	assert.Positive(t, testutil.ToFloat64(b.metrics.redisErrors[opPending]))
	assert.Positive(t, testutil.ToFloat64(b.metrics.redisSkipped[opReplay])+testutil.ToFloat64(b.metrics.redisSkipped[opAnchor]))
	assert.Positive(t, lookups(b, KindPending, tierRedis, Unknown))

	// The writer keeps serving its sessions from the local tier, and its
	// writes stay local.
	_, r := a.Pending(ctx, ten, "resp_1")
	assert.Equal(t, Hit, r)
	err := a.Commit(ctx, Batch{Scope: sc, DeletePending: []string{"resp_1"}, PutPending: &PendingPut{ResponseID: "resp_2", Calls: calls1("c2")},
		Anchor: strp("resp_2"), ReplayAppend: []ReplayItem{item("function_call", "c2", 10)}, ReplayLastResponseID: "resp_2"})
	assert.ErrorIs(t, err, ErrDegraded)
	id, r := a.Anchor(ctx, sc)
	assert.Equal(t, Hit, r)
	assert.Equal(t, "resp_2", id)
	tr, r := a.Replay(ctx, sc)
	assert.Equal(t, Hit, r)
	assert.Len(t, tr.Items, 2)
	// B appends blind to a transcript it does not hold: that history now has
	// a gap, which must never be replayed.
	sc2 := Scope{Tenant: ten, Session: "gap"}
	assert.ErrorIs(t, b.Commit(ctx, Batch{Scope: sc2, ReplayAppend: []ReplayItem{item("message", "", 10)}}), ErrDegraded)
	_, r = b.Replay(ctx, sc2)
	assert.Equal(t, Miss, r)
	assert.Positive(t, testutil.ToFloat64(a.metrics.commits[commitDegraded]))

	e.restart() // empty: the outage lost Redis's data

	// Both instances recover without a restart: the breaker closes, the
	// subscription comes back and flushes copies that may be stale.
	eventually(t, 10*time.Second, func() bool {
		_, r := b.Pending(ctx, ten, "resp_nope")
		return r == Miss
	}, "B reads Redis again")
	eventually(t, 10*time.Second, func() bool {
		return testutil.ToFloat64(a.metrics.flushes) >= 1 && testutil.ToFloat64(b.metrics.flushes) >= 1
	}, "subscriptions restored")
	assert.Equal(t, float64(breakerClosed), testutil.ToFloat64(b.metrics.breakerState))

	// A's unconfirmed state survived the flush and still serves its session.
	id, r = a.Anchor(ctx, sc)
	assert.Equal(t, Hit, r)
	assert.Equal(t, "resp_2", id)
	// The next turn on A rewrites the whole transcript (Redis lost it), so
	// B can take the session over. One turn, committed once A's store is
	// ready again: retrying a commit would append its item twice, and one
	// that still fails is written back, which B must see all the same.
	eventually(t, 10*time.Second, func() bool { return a.Ready() == nil }, "A ready again")
	if err := a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_3"}, Anchor: strp("resp_3"),
		ReplayAppend: []ReplayItem{item("function_call_output", "c2", 10)}, ReplayLastResponseID: "resp_3"}); err != nil {
		t.Logf("the commit after the outage was kept locally (%v); the write-back carries it", err)
	}
	var lastTr Transcript
	var lastR Result
	deadline := time.Now().Add(5 * time.Second)
	for {
		lastTr, lastR = b.Replay(ctx, sc)
		if lastR == Hit && len(lastTr.Items) == 3 && lastTr.LastResponseID == "resp_3" {
			break
		}
		if time.Now().After(deadline) {
			atr, ar := a.Replay(ctx, sc)
			t.Fatalf("B sees A's full transcript: B read %s, %d items, last %q; A reads %s, %d items, last %q",
				lastR, len(lastTr.Items), lastTr.LastResponseID, ar, len(atr.Items), atr.LastResponseID)
		}
		time.Sleep(2 * time.Millisecond)
	}
	id, r = b.Anchor(ctx, sc)
	assert.Equal(t, Hit, r)
	assert.Equal(t, "resp_3", id)
	// B's gap is recorded in Redis by its next write of that session; only a
	// reset clears it.
	require.NoError(t, b.Commit(ctx, Batch{Scope: sc2, ReplayAppend: []ReplayItem{item("message", "", 10)}}))
	c := e.store(t)
	_, r = c.Replay(ctx, sc2)
	assert.Equal(t, Miss, r, "a gapped transcript is never served")
	require.NoError(t, b.Commit(ctx, Batch{Scope: sc2, ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 10)}}))
	eventually(t, 100*time.Millisecond, func() bool { _, r := c.Replay(ctx, sc2); return r == Hit }, "reset clears the gap")
}

func TestRedisUnreachableAtStart(t *testing.T) {
	// A store whose Redis is down from the start still works locally and
	// does not fail New.
	srv := redistest.Start(t)
	url := srv.URL()
	srv.Kill()
	start := time.Now()
	s, err := New(WithRedisURL(url), WithLogger(quiet), WithOpTimeout(50*time.Millisecond))
	require.NoError(t, err)
	defer s.Close()
	assert.Less(t, time.Since(start), 3*time.Second)
	ctx := context.Background()
	_, r := s.Pending(ctx, "t", "r")
	assert.Equal(t, Unknown, r)
	err = s.Commit(ctx, Batch{Scope: Scope{Tenant: "t"}, PutPending: &PendingPut{ResponseID: "r"}})
	assert.True(t, errors.Is(err, ErrDegraded), "%v", err)
	_, r = s.Pending(ctx, "t", "r")
	assert.Equal(t, Hit, r)
	srv.Restart()
	// It subscribes once Redis is there; that first subscription is not a
	// "restored" one, but everything must work.
	eventually(t, 10*time.Second, func() bool { _, r := s.Pending(ctx, "t", "nope"); return r == Miss }, "recovered")
}
