package statestore

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/internal/redistest"
)

// TestSlowRedisChoice is the documented behaviour under a Redis that is slow, not dead
// (issue 11: 500 ms per command), with the production operation timeout: turns never wait
// longer than the timeout and its one retry, and once the breaker is open not at all; a
// session that stays on its instance goes on from the local tier; a session that moved
// finds nothing (Unknown) and is rebuilt from the client's full resend, kept locally; once
// Redis is fast again every instance converges on the latest state, and no instance
// flushed its local tier over the latency.
func TestSlowRedisChoice(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	slow := redistest.StartSlow(t, srv.Addr)
	e := &env{name: "slow", url: slow.URL(), raw: srv.Client()}
	opts := []Option{WithOpTimeout(DefaultOpTimeout), WithBreaker(DefaultBreakerFailures, 300*time.Millisecond)}
	a, b := e.store(t, opts...), e.store(t, opts...)
	ten := tenant(t)
	sc := Scope{Tenant: ten, Session: "s"}
	turn1 := []ReplayItem{item("message", "", 20), item("function_call", "c1", 20)}
	require.NoError(t, a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c1")},
		Anchor: strp("resp_1"), ReplayReset: true, ReplayAppend: turn1, ReplayLastResponseID: "resp_1"}))
	settle(t, a, b)

	slow.SetLatency(500 * time.Millisecond)
	// Worst case per Redis operation before the breaker opens: the timeout and one retry;
	// a moved turn's first reads are three operations (Prefetch, then Anchor and Replay
	// asking again).
	timed := func(what string, ops int, f func()) {
		t.Helper()
		start := time.Now()
		f()
		assert.Less(t, time.Since(start), time.Duration(ops)*2*DefaultOpTimeout+150*time.Millisecond, what)
	}

	// The session that stays on A: its reads are local, its commits stay local.
	turn2 := []ReplayItem{item("function_call_output", "c1", 20), item("function_call", "c2", 20)}
	for i := 0; i < 3; i++ {
		timed("a local turn", 0, func() {
			id, r := a.Anchor(ctx, sc)
			assert.Equal(t, Hit, r)
			assert.Equal(t, "resp_1", id)
			_, r = a.Pending(ctx, ten, "resp_1")
			assert.Equal(t, Hit, r)
		})
	}
	timed("a commit", 1, func() {
		err := a.Commit(ctx, Batch{Scope: sc, DeletePending: []string{"resp_1"}, PutPending: &PendingPut{ResponseID: "resp_2", Calls: calls1("c2")},
			Anchor: strp("resp_2"), ReplayAppend: turn2, ReplayLastResponseID: "resp_2"})
		assert.ErrorIs(t, err, ErrDegraded)
	})
	id, r := a.Anchor(ctx, sc)
	assert.Equal(t, Hit, r)
	assert.Equal(t, "resp_2", id, "A goes on from its local tier")

	// The session moves to B: nothing is known there, within the bound, every time.
	for i := 0; i < 6; i++ {
		timed("a moved turn's reads", 3, func() {
			b.Prefetch(ctx, sc, "resp_2")
			_, r := b.Anchor(ctx, sc)
			assert.Equal(t, Unknown, r)
			_, r = b.Replay(ctx, sc)
			assert.Equal(t, Unknown, r)
		})
	}
	assert.Equal(t, float64(breakerOpen), testutil.ToFloat64(b.metrics.breakerState), "the breaker spares the turns the wait")
	// The upstream does not know resp_2 from B's connection; the client resends the whole
	// conversation, which B commits as a full create and serves from then on.
	full := append(append(append([]ReplayItem{}, turn1...), turn2...), item("function_call_output", "c2", 20))
	timed("the full resend's commit", 1, func() {
		assert.ErrorIs(t, b.Commit(ctx, Batch{Scope: sc, DeletePending: []string{"resp_2"}, PutPending: &PendingPut{ResponseID: "resp_3"},
			Anchor: strp("resp_3"), ReplayReset: true, ReplayAppend: full, ReplayLastResponseID: "resp_3"}), ErrDegraded)
	})
	timed("the next turn on B", 0, func() {
		id, r := b.Anchor(ctx, sc)
		assert.Equal(t, Hit, r)
		assert.Equal(t, "resp_3", id)
		tr, r := b.Replay(ctx, sc)
		assert.Equal(t, Hit, r)
		assert.Len(t, tr.Items, len(full))
	})

	// A quiet spell under the latency: the subscriptions, pinged when idle, stay up (a
	// slow answer is no lost connection), so nothing is flushed.
	time.Sleep(2500 * time.Millisecond)
	timed("a turn after the quiet spell", 0, func() {
		id, r := b.Anchor(ctx, sc)
		assert.Equal(t, Hit, r)
		assert.Equal(t, "resp_3", id)
	})

	// Redis is fast again: the write-backs land, the latest commit (B's) wins in Redis, and
	// A drops its older copy.
	slow.SetLatency(0)
	converged := func() bool {
		id, r := a.Anchor(ctx, sc)
		tr, r2 := a.Replay(ctx, sc)
		return r == Hit && id == "resp_3" && r2 == Hit && len(tr.Items) == len(full)
	}
	for deadline := time.Now().Add(10 * time.Second); !converged(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			for n, s := range map[string]*Tiered{"A": a, "B": b} {
				id, r := s.Anchor(ctx, sc)
				tr, r2 := s.Replay(ctx, sc)
				t.Logf("%s: anchor %s %s, replay %s %d items; dirty %d; write-backs %v written, %v superseded", n, id, r, r2, len(tr.Items),
					len(s.local.dirty()), wb(s, wbWritten), wb(s, wbSuperseded))
			}
			raw, _ := e.raw.Get(ctx, sessionKey(ten, "s", suffixAnchor)).Result()
			got, _ := decodeAnchor(raw)
			n, _ := e.raw.LLen(ctx, sessionKey(ten, "s", suffixReplay)).Result()
			t.Fatalf("A does not converge on B's state; Redis: anchor %s, %d items", got.id, n)
		}
	}
	raw, err := e.raw.Get(ctx, sessionKey(ten, "s", suffixAnchor)).Result()
	require.NoError(t, err)
	got, err := decodeAnchor(raw)
	require.NoError(t, err)
	assert.Equal(t, "resp_3", got.id)
	// resp_2's calls, put by A and answered on B, are settled apart from the anchor.
	eventually(t, 5*time.Second, func() bool {
		_, r1 := a.Pending(ctx, ten, "resp_2")
		v, err := e.raw.Get(ctx, pendingKey(ten, "resp_2")).Result()
		return r1 == Miss && absent(v, err)
	}, "answered on B, everywhere")
	for name, s := range map[string]*Tiered{"A": a, "B": b} {
		assert.Zero(t, testutil.ToFloat64(s.metrics.flushes), "%s kept its local tier over the latency", name)
	}
}

// TestSubscriptionLost: a subscription whose ping goes unanswered for longer than pongWait
// (here: Redis paused past it) is taken for lost, and the local tier is flushed when it is
// back, since announcements may have been missed; a slower answer is no loss (see
// TestSlowRedisChoice).
func TestSubscriptionLost(t *testing.T) {
	ctx := context.Background()
	e := standaloneEnv(t)
	a, rec, _ := open(t, e.url)
	waitReady(t, a, 5*time.Second)
	pause := pingEvery + pongWait + time.Second
	require.NoError(t, e.raw.Do(ctx, "client", "pause", pause.Milliseconds(), "all").Err())
	eventually(t, pause+5*time.Second, func() bool { return testutil.ToFloat64(a.metrics.flushes) >= 1 }, "flushed once back")
	assert.NotEmpty(t, rec.lines("invalidation subscription lost"))
	waitReady(t, a, 5*time.Second)
}
