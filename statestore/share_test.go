package statestore

import (
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func evictions(s *Tiered, reason int) int64 { return s.local.evictions[reason].Load() }

// TestTenantShare: one tenant that writes a lot cannot evict another tenant's local state
// (issue 11: 200 sessions × 2 MB flushed a victim's transcript); alone, a tenant may use
// the whole tier; evictions are counted by reason. On the local tier alone and in front of
// a real Redis.
func TestTenantShare(t *testing.T) {
	ctx := context.Background()
	const tier = 4 << 20
	victim, attacker := TenantOf("victim"), TenantOf("attacker")
	vs := Scope{Tenant: victim, Session: "v"}
	// fill commits n sessions of one tenant, each a transcript of size bytes and a
	// response with a pending call.
	fill := func(t *testing.T, s *Tiered, ten string, n, size int) {
		for i := 0; i < n; i++ {
			resp := fmt.Sprintf("resp_%d", i)
			require.NoError(t, s.Commit(ctx, Batch{Scope: Scope{Tenant: ten, Session: fmt.Sprintf("s%d", i)},
				PutPending: &PendingPut{ResponseID: resp, Calls: calls1("c")}, Anchor: strp(resp),
				ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", size)}}))
		}
	}
	envs := []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"local", func(*testing.T) string { return "" }},
		{"redis", func(t *testing.T) string { return standaloneEnv(t).url }},
	}
	for _, env := range envs {
		t.Run(env.name, func(t *testing.T) {
			for _, tc := range []struct {
				name  string
				share float64
				// victimKept: the victim's transcript, anchor and pending calls survive.
				victimKept bool
				reason     int // the reason the attacker's flood is counted under
			}{
				{"share protects the victim", DefaultTenantShare, true, evictTenant},
				{"without shares the flood flushes it", 1, false, evictBytes},
			} {
				t.Run(tc.name, func(t *testing.T) {
					reg := prometheus.NewRegistry()
					opts := []Option{WithLogger(quiet), WithRegisterer(reg), WithLocalBytes(tier), WithReplayCap(1 << 20), WithTenantShare(tc.share)}
					if url := env.url(t); url != "" {
						opts = append(opts, WithRedisURL(url))
					}
					s, err := New(opts...)
					require.NoError(t, err)
					t.Cleanup(func() { _ = s.Close() })

					require.NoError(t, s.Commit(ctx, Batch{Scope: vs, PutPending: &PendingPut{ResponseID: "resp_v", Calls: calls1("cv")},
						Anchor: strp("resp_v"), ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 256<<10)}}))
					fill(t, s, attacker, 200, 64<<10) // 12.8 MB into a 4 MB tier

					assert.LessOrEqual(t, s.local.nBytes.Load(), int64(tier))
					for _, k := range []lkey{{KindReplay, victim, "v"}, {KindAnchor, victim, "v"}, {KindPending, victim, "resp_v"}} {
						assert.Equal(t, tc.victimKept, s.local.has(k), "victim's %s", k.kind)
					}
					assert.Positive(t, evictions(s, tc.reason), evictNames[tc.reason])
					if tc.victimKept {
						assert.Zero(t, evictions(s, evictBytes)+evictions(s, evictEntries), "only the attacker's entries went")
						tr, r := s.Replay(ctx, vs)
						assert.Equal(t, Hit, r)
						assert.Equal(t, 256<<10, tr.Bytes)
						// The attacker keeps at least its share.
						s.local.mu.Lock()
						held := s.local.tenants[attacker].bytes
						s.local.mu.Unlock()
						assert.GreaterOrEqual(t, held, s.local.shareBytes-(64<<10+1024))
					}
					assert.Equal(t, float64(evictions(s, tc.reason)),
						gathered(t, reg, "chainmend_store_local_evictions_total", "reason", evictNames[tc.reason]))
				})
			}
		})
	}

	t.Run("alone, a tenant uses the whole tier", func(t *testing.T) {
		s := newLocal(t, WithLocalBytes(tier), WithReplayCap(1<<20))
		fill(t, s, attacker, 200, 64<<10)
		assert.Greater(t, s.local.nBytes.Load(), int64(tier*9/10), "far over its share, and nobody else needs the room")
		assert.Zero(t, evictions(s, evictTenant), "plain LRU: nothing evicted in place of another's")
		assert.Positive(t, evictions(s, evictBytes))
	})
	t.Run("entries: many small values do not evict another tenant's", func(t *testing.T) {
		s := newLocal(t, WithLocalEntries(1000))
		require.NoError(t, s.Commit(ctx, Batch{Scope: vs, PutPending: &PendingPut{ResponseID: "resp_v"}, Anchor: strp("resp_v")}))
		for i := 0; i < 5000; i++ {
			require.NoError(t, s.Commit(ctx, Batch{Scope: Scope{Tenant: attacker}, PutPending: &PendingPut{ResponseID: fmt.Sprint(i)}}))
		}
		assert.Equal(t, 1000, s.local.len())
		_, r := s.Pending(ctx, victim, "resp_v")
		assert.Equal(t, Hit, r)
		_, r = s.Anchor(ctx, vs)
		assert.Equal(t, Hit, r)
		assert.Positive(t, evictions(s, evictTenant))
		assert.Zero(t, evictions(s, evictEntries))
	})
	t.Run("a value over one tenant's share is not kept", func(t *testing.T) {
		s := newLocal(t, WithLocalBytes(tier), WithReplayCap(4<<20))
		require.NoError(t, s.Commit(ctx, Batch{Scope: vs, ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 1<<20+1)}}))
		_, r := s.Replay(ctx, vs)
		assert.Equal(t, Miss, r)
		assert.Equal(t, int64(1), evictions(s, evictOversize))
		// Growing in place past it drops it too.
		require.NoError(t, s.Commit(ctx, Batch{Scope: vs, ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 600<<10)}}))
		require.NoError(t, s.Commit(ctx, Batch{Scope: vs, ReplayAppend: []ReplayItem{item("message", "", 600<<10)}}))
		_, r = s.Replay(ctx, vs)
		assert.Equal(t, Miss, r)
		assert.Equal(t, int64(2), evictions(s, evictOversize))
	})
}

// TestTenantUseAccounting: the per-tenant lists and sums stay exact through puts,
// replacements, growth, reads, invalidations and evictions.
func TestTenantUseAccounting(t *testing.T) {
	ctx := context.Background()
	s := newLocal(t, WithLocalEntries(50), WithLocalBytes(200<<10))
	for i := 0; i < 300; i++ {
		ten := TenantOf(fmt.Sprint(i % 3))
		sc := Scope{Tenant: ten, Session: fmt.Sprint(i % 17)}
		b := Batch{Scope: sc, PutPending: &PendingPut{ResponseID: fmt.Sprint(i)}, Anchor: strp(fmt.Sprint(i)),
			ReplayAppend: []ReplayItem{item("message", "", 100+i*13%900)}}
		if i%5 == 0 {
			b.ReplayReset = true
			b.DeletePending = []string{fmt.Sprint(i - 1)}
		}
		require.NoError(t, s.Commit(ctx, b))
		s.Replay(ctx, Scope{Tenant: TenantOf(fmt.Sprint((i + 1) % 3)), Session: fmt.Sprint(i % 11)})
		if i%7 == 0 {
			s.local.remove(lkey{KindAnchor, ten, sc.Session})
		}
		t.Run("", func(t *testing.T) { checkTenantUse(t, s.local) })
	}
}

// checkTenantUse compares every tenant's list and sums with the LRU's entries.
func checkTenantUse(t *testing.T, l *localTier) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	bytes, entries := map[string]int{}, map[string]int{}
	total := 0
	for _, k := range l.lru.Keys() {
		e, _ := l.lru.Peek(k)
		require.NotNil(t, e.tu, "every entry is linked")
		require.Equal(t, k.tenant, e.tu.name)
		bytes[k.tenant] += e.size
		entries[k.tenant]++
		total += e.size
	}
	assert.Equal(t, l.bytes, total)
	assert.Len(t, l.tenants, len(entries))
	for name, tu := range l.tenants {
		assert.Equal(t, bytes[name], tu.bytes, name)
		assert.Equal(t, entries[name], tu.entries, name)
		n := 0
		for e := tu.head; e != nil; e = e.tnext {
			n++
			if e.tnext == nil {
				assert.Same(t, tu.tail, e)
			} else {
				assert.Same(t, e, e.tnext.tprev)
			}
		}
		assert.Equal(t, tu.entries, n, name)
		_, over := l.over[tu]
		assert.Equal(t, tu.bytes > l.shareBytes || tu.entries > l.shareEntries, over, name)
	}
	assert.LessOrEqual(t, l.lru.Len(), l.maxEntries)
	assert.LessOrEqual(t, l.bytes, l.maxBytes)
}
