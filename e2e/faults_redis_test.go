package e2e

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/internal/redistest"
)

// Redis is killed (SIGKILL, its data lost) while a few hundred conversations run on two
// instances, and restarted a moment later. No turn may fail because of the store: reads
// answer "unknown" and the policies treat it so, commits stay local, and every
// conversation finishes. Every fifth conversation reconnects between turns (as Codex does
// after an error), so new sockets are opened while Redis is down as well.
func TestFaultRedisKilledUnderLoad(t *testing.T) {
	t.Parallel()
	r := redistest.Start(t)
	bin := Build(t, "./cmd/gateway")
	emu := emulator.StartTest(t, emulator.WithScript(LoadScript()))
	args := []string{"--upstream", emu.URL(), "--policies", policiesDir(t), "--redis", r.URL(), "--reload-poll", "1h", "--log-level", "info"}
	a, b := StartGateway(t, bin, "A", args...), StartGateway(t, bin, "B", args...)

	const turns = 5
	n := loadSessions()
	var progress atomic.Int64
	sp := specs("redis-kill", n, turns, nil, func(i int, sp *convSpec) {
		sp.urls = []string{a.WSURL(), b.WSURL()}
		if i%2 == 1 {
			sp.urls = []string{b.WSURL(), a.WSURL()}
		}
		if i%5 == 0 {
			sp.reconnectEvery = 2
		}
		sp.progress = &progress
	})
	done := make(chan struct{})
	var stats []*convStats
	go func() { stats = runConversations(sp); close(done) }()

	total := int64(n * turns)
	var killedAt, restartedAt int64
	if waitProgress(&progress, total/4, done) {
		r.Kill()
		killedAt = progress.Load()
		// Down for a while under load: long enough for both breakers to open.
		waitProgress(&progress, total/2, done)
		time.Sleep(300 * time.Millisecond)
		restartedAt = progress.Load()
		r.Restart()
	}
	<-done
	res := summarize(stats)
	t.Logf("redis killed after %d turns, restarted after %d: %s", killedAt, restartedAt, res)
	for _, f := range res.failures {
		t.Error(f)
	}
	require.NotZero(t, killedAt, "the load ended before the fault")
	assert.Less(t, killedAt, restartedAt, "turns ran while Redis was down")
	assert.Equal(t, n*turns, res.completed, "every turn of every conversation completed")
	assert.Zero(t, res.errors(), "no error frame")
	assert.Zero(t, res.broken+res.hangs)
	checkUpstream(t, emu, true)

	for _, g := range []*Gateway{a, b} {
		degraded := g.Sum(t, "chainmend_store_commits_total", map[string]string{"result": "degraded"})
		unknown := g.Sum(t, "chainmend_store_lookups_total", map[string]string{"result": "unknown"})
		t.Logf("%s: %v commits kept locally, %v lookups unknown", g.Name, degraded, unknown)
		assert.Positive(t, degraded+unknown, "%s felt the outage", g.Name)
		assert.Zero(t, g.Sum(t, "chainmend_turns_total", map[string]string{"outcome": "upstream_error"}))
	}
	// Both recover: the breakers close and the commits kept locally go back to Redis.
	waitFor(t, "both instances write to Redis again", 20*time.Second, func() bool {
		ok := true
		for _, g := range []*Gateway{a, b} {
			c := Dial(t, g.WSURL(), header("redis-kill-probe-"+g.Name))
			c.OK(Create(nil, User("finish probe")))
			c.Close()
			ok = ok && g.Sum(t, "chainmend_store_breaker_state", nil) == 0
		}
		return ok
	})
	written := func(g *Gateway) float64 {
		return g.Sum(t, "chainmend_store_writeback_keys_total", map[string]string{"result": "written"})
	}
	waitFor(t, "the outage's commits written back", 10*time.Second, func() bool { return written(a)+written(b) > 0 })
	t.Logf("written back: A %v keys, B %v keys (the rest were overwritten by later turns first)", written(a), written(b))
	assert.Zero(t, a.Sum(t, "chainmend_store_writeback_keys_total", map[string]string{"result": "failed"})+
		b.Sum(t, "chainmend_store_writeback_keys_total", map[string]string{"result": "failed"}))
}
