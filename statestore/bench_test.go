package statestore

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"chainmend/internal/redistest"
)

// Run with: go test -run '^$' -bench . -benchmem ./statestore/
// Targets (issue 3): local hit ≤ 300 ns/op and 0 allocs; Redis read-through
// ≤ 1.2 × a raw go-redis GET of the same key.

func benchStore(b *testing.B, opts ...Option) *Tiered {
	b.Helper()
	s, err := New(append([]Option{WithLogger(quiet), WithOpTimeout(time.Second)}, opts...)...)
	require.NoError(b, err)
	b.Cleanup(func() { _ = s.Close() })
	return s
}

func BenchmarkLocalHit(b *testing.B) {
	ctx := context.Background()
	s := benchStore(b)
	ten := TenantOf("Bearer bench")
	sc := Scope{Tenant: ten, Session: "0196f4c2-7a0e-7d31-9a51-6a1f2b3c4d5e"}
	require.NoError(b, s.Commit(ctx, Batch{Scope: sc,
		PutPending: &PendingPut{ResponseID: "resp_68a1f0c2b3d4e5f60718293a4b5c6d7e", Calls: []Call{
			{ID: "call_Xy12", Kind: "function_call"}, {ID: "call_Zq34", Kind: "function_call"}}},
		Anchor:      strp("resp_68a1f0c2b3d4e5f60718293a4b5c6d7e"),
		ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 2000)}}))
	// Fill the tier so the map is not trivially small.
	for i := 0; i < 10_000; i++ {
		require.NoError(b, s.Commit(ctx, Batch{Scope: Scope{Tenant: ten}, PutPending: &PendingPut{ResponseID: "resp_" + strconv.Itoa(i)}}))
	}
	b.Run("pending", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, r := s.Pending(ctx, ten, "resp_68a1f0c2b3d4e5f60718293a4b5c6d7e"); r != Hit {
				b.Fatal(r)
			}
		}
	})
	b.Run("anchor", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, r := s.Anchor(ctx, sc); r != Hit {
				b.Fatal(r)
			}
		}
	})
	b.Run("replay", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, r := s.Replay(ctx, sc); r != Hit {
				b.Fatal(r)
			}
		}
	})
	b.Run("pending_parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				s.Pending(ctx, ten, "resp_68a1f0c2b3d4e5f60718293a4b5c6d7e")
			}
		})
	})
}

// BenchmarkReadThrough measures a local miss answered by Redis (GET, decode,
// backfill) against a raw GET of the same key on the same client, and
// reports their ratio from an interleaved loop so both see the same machine.
func BenchmarkReadThrough(b *testing.B) {
	ctx := context.Background()
	srv := redistest.Start(b)
	s := benchStore(b, WithRedisURL(srv.URL()))
	ten := TenantOf("Bearer bench")
	resp := "resp_68a1f0c2b3d4e5f60718293a4b5c6d7e"
	require.NoError(b, s.Commit(ctx, Batch{Scope: Scope{Tenant: ten}, PutPending: &PendingPut{ResponseID: resp, Calls: []Call{
		{ID: "call_Xy12", Kind: "function_call"}, {ID: "call_Zq34", Kind: "function_call"}}}}))
	k := lkey{KindPending, ten, resp}
	key := pendingKey(ten, resp)
	readThrough := func() {
		s.local.remove(k) // force the miss
		if _, r := s.Pending(ctx, ten, resp); r != Hit {
			b.Fatal(r)
		}
	}
	rawGet := func() {
		if _, err := s.client().Get(ctx, key).Bytes(); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("statestore", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			readThrough()
		}
	})
	b.Run("raw_get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rawGet()
		}
	})
	b.Run("ratio", func(b *testing.B) {
		var tStore, tRaw time.Duration
		for b.Loop() {
			t0 := time.Now()
			readThrough()
			t1 := time.Now()
			rawGet()
			tStore += t1.Sub(t0)
			tRaw += time.Since(t1)
		}
		b.ReportMetric(float64(tStore)/float64(b.N), "store-ns/op")
		b.ReportMetric(float64(tRaw)/float64(b.N), "raw-ns/op")
		b.ReportMetric(float64(tStore)/float64(tRaw), "ratio")
	})
}

// BenchmarkCommitPending is a chained turn's commit: the response's pending calls and its
// conversation index, the previous response's deleted, the anchor. "redis" reports its
// round trips per commit, which the conversation index must leave at one.
func BenchmarkCommitPending(b *testing.B) {
	ctx := context.Background()
	ten := TenantOf("Bearer bench")
	run := func(b *testing.B, s *Tiered, sc Scope) {
		b.ReportAllocs()
		var rt *roundTrips
		if s.target != nil {
			rt = &roundTrips{}
			s.client().AddHook(rt)
			b.Cleanup(func() { b.ReportMetric(float64(rt.n.Load())/float64(b.N), "round-trips/op") })
		}
		i := 0
		prev := ""
		for b.Loop() {
			resp := "resp_" + strconv.Itoa(i)
			i++
			batch := Batch{Scope: sc, PutPending: &PendingPut{ResponseID: resp, Calls: []Call{{ID: "call_" + resp, Kind: "function_call"}}},
				Anchor: &resp}
			if prev != "" {
				batch.DeletePending = []string{prev}
			}
			prev = resp
			if err := s.Commit(ctx, batch); err != nil {
				b.Fatal(err)
			}
		}
	}
	sc := Scope{Tenant: ten, Session: "s"}
	b.Run("local", func(b *testing.B) { run(b, benchStore(b), sc) })
	b.Run("redis", func(b *testing.B) {
		srv := redistest.Start(b)
		run(b, benchStore(b, WithRedisURL(srv.URL())), sc)
	})
}

func BenchmarkReplayAppend(b *testing.B) {
	ctx := context.Background()
	ten := TenantOf("Bearer bench")
	turn := []ReplayItem{
		item("function_call_output", "call_1", 600), item("message", "", 300),
		item("reasoning", "", 800), item("function_call", "call_1", 400),
	}
	run := func(b *testing.B, s *Tiered) {
		sc := Scope{Tenant: ten, Session: "s" + strconv.Itoa(b.N)}
		require.NoError(b, s.Commit(ctx, Batch{Scope: sc, ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 1000)}}))
		b.ReportAllocs()
		b.SetBytes(int64(len(turn[0].Raw) + len(turn[1].Raw) + len(turn[2].Raw) + len(turn[3].Raw)))
		for b.Loop() {
			if err := s.Commit(ctx, Batch{Scope: sc, ReplayAppend: turn, ReplayLastResponseID: "resp_x"}); err != nil {
				b.Fatal(err)
			}
		}
	}
	// A 256 KiB cap makes the runs cross it, so trimming is part of the cost.
	b.Run("local", func(b *testing.B) { run(b, benchStore(b, WithReplayCap(256<<10))) })
	b.Run("redis", func(b *testing.B) {
		srv := redistest.Start(b)
		run(b, benchStore(b, WithRedisURL(srv.URL()), WithReplayCap(256<<10)))
	})
}

// BenchmarkMovedRead is the state read of a session that arrived from another instance:
// anchor, the pending calls of the response it chains to, and the replay transcript, none
// of them local. "prefetch" is one pipelined round trip (Prefetch, then three local reads);
// "prefetch_full" is the same for a full create, which names no previous response (the
// anchor brings its pending calls, still one round trip); the baseline "single_reads" is
// the three reads one by one (three round trips). Each reports its round trips per move;
// "prefetch" and "single_reads" run interleaved in "ratio".
func BenchmarkMovedRead(b *testing.B) {
	ctx := context.Background()
	srv := redistest.Start(b)
	s := benchStore(b, WithRedisURL(srv.URL()))
	ten := TenantOf("Bearer bench")
	sc := Scope{Tenant: ten, Session: "0196f4c2-7a0e-7d31-9a51-6a1f2b3c4d5e"}
	resp := "resp_68a1f0c2b3d4e5f60718293a4b5c6d7e"
	items := make([]ReplayItem, 20)
	for i := range items {
		items[i] = item("message", "", 500)
	}
	require.NoError(b, s.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: resp, Calls: []Call{
		{ID: "call_Xy12", Kind: "function_call"}}}, Anchor: strp(resp), ReplayReset: true, ReplayAppend: items, ReplayLastResponseID: resp}))
	drop := func() {
		s.local.remove(lkey{KindAnchor, ten, sc.Session})
		s.local.remove(lkey{KindPending, ten, resp})
		s.local.remove(lkey{KindReplay, ten, sc.Session})
	}
	reads := func() {
		a, r := s.Anchor(ctx, sc)
		if r != Hit {
			b.Fatal("anchor", r)
		}
		if _, r := s.Pending(ctx, ten, a); r != Hit {
			b.Fatal("pending", r)
		}
		if _, r := s.Replay(ctx, sc); r != Hit {
			b.Fatal("replay", r)
		}
	}
	prefetch := func() {
		drop()
		s.Prefetch(ctx, sc, resp)
		reads()
	}
	prefetchFull := func() {
		drop()
		s.Prefetch(ctx, sc)
		reads()
	}
	single := func() {
		drop()
		reads()
	}
	rt := &roundTrips{}
	s.client().AddHook(rt)
	perMove := func(b *testing.B, f func()) {
		b.ReportAllocs()
		rt.n.Store(0)
		for b.Loop() {
			f()
		}
		b.ReportMetric(float64(rt.n.Load())/float64(b.N), "round-trips/op")
	}
	b.Run("prefetch", func(b *testing.B) { perMove(b, prefetch) })
	b.Run("prefetch_full", func(b *testing.B) { perMove(b, prefetchFull) })
	b.Run("single_reads", func(b *testing.B) { perMove(b, single) })
	b.Run("ratio", func(b *testing.B) {
		var tp, ts time.Duration
		for b.Loop() {
			t0 := time.Now()
			prefetch()
			t1 := time.Now()
			single()
			tp += t1.Sub(t0)
			ts += time.Since(t1)
		}
		b.ReportMetric(float64(tp)/float64(b.N), "prefetch-ns/op")
		b.ReportMetric(float64(ts)/float64(b.N), "single-ns/op")
		b.ReportMetric(float64(tp)/float64(ts), "ratio")
	})
}
