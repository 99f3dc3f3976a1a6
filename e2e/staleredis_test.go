package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/internal/e2etest"
	"chainmend/internal/redistest"
)

// Redis is unreachable for a moment but keeps its data (a network blip, a paused or
// failed-over server): A's commits during the outage stay in A's local tier only. Once
// Redis answers again, A writes them back (statestore/writeback.go). Without that, Redis
// kept serving the session's pre-outage anchor, pending calls and transcript, and a client
// that moved to B got its turn "repaired" against that stale state: previous_response_id
// aligned back to the old response, its answered call reported to the model as "aborted",
// its real tool output removed as an orphan, the turn between silently dropped from the
// replay, and the upstream accepting all of it (found by this test, then fixed).
func TestStaleRedisAfterBlip(t *testing.T) {
	t.Parallel()
	r := redistest.Start(t)
	rc := r.Client()
	bin := Build(t, "./cmd/gateway")
	emu := emulator.StartTest(t, emulator.WithScript(e2etest.CmdScript()))
	args := []string{"--upstream", emu.URL(), "--policies", policiesDir(t), "--redis", r.URL(), "--reload-poll", "1h"}
	a, b := StartGateway(t, bin, "A", args...), StartGateway(t, bin, "B", args...)
	session := "stale-redis-after-blip"

	a1 := Dial(t, a.WSURL(), header(session))
	r1 := a1.OK(Create(nil, User("call call_X"))).Response.ID

	// Redis stops answering for 2 s, data intact.
	pause := 2 * time.Second
	require.NoError(t, rc.Do(context.Background(), "CLIENT", "PAUSE", pause.Milliseconds(), "ALL").Err())
	paused := time.Now()
	degraded := a.Sum(t, "chainmend_store_commits_total", map[string]string{"result": "degraded"})
	e2 := a1.OK(Chained(r1, FCO("call_X", "ok-x"), User("call call_Y")))
	require.Equal(t, []string{"call_Y"}, e2.CallIDs())
	require.Greater(t, a.Sum(t, "chainmend_store_commits_total", map[string]string{"result": "degraded"}), degraded,
		"A's commit of turn 2 did not reach Redis")
	time.Sleep(time.Until(paused.Add(pause)))

	// Redis answers again: A writes back the pending calls of turn 2, the deleted pending
	// entry of turn 1, the anchor and the transcript, with no traffic needed.
	written := func() float64 {
		return a.Sum(t, "chainmend_store_writeback_keys_total", map[string]string{"result": "written"})
	}
	waitFor(t, "A's write-back", 15*time.Second, func() bool { return written() >= 4 })
	assert.Zero(t, a.Sum(t, "chainmend_store_writeback_keys_total", map[string]string{"result": "failed"}))

	// The client moves to B and answers call_Y.
	before := b.Fired(t)
	n := len(emu.Creates())
	b1 := Dial(t, b.WSURL(), header(session))
	res := b1.Turn(Chained(e2.Response.ID, FCO("call_Y", "ok-y")))
	require.Equal(t, "response.completed", res.Last.Type, "%s", res.Last.Raw)
	reasons := b.FiredSince(t, before)
	assert.NotContains(t, reasons, "pending_prev_align", "B aligned to the stale anchor")
	assert.NotContains(t, reasons, "aborted_injected", "B used the stale pending calls")
	assert.NotContains(t, reasons, "orphan_output_removed", "B removed the client's real output")
	assert.Contains(t, reasons, "fresh_connection_replay")
	require.Len(t, emu.Creates(), n+1, "repaired before sending: no upstream error, no retry")
	up := emu.Creates()[n]
	got := strings.Join(e2etest.Summary(up.Frame), " ")
	assert.Equal(t, "msg:user rs fc:call_X fco:call_X=ok-x msg:user rs fc:call_Y fco:call_Y=ok-y", got,
		"B replays the whole session as A knew it, the client's output last")
	assert.Empty(t, up.PreviousResponseID)
	assert.NoError(t, e2etest.Paired(up))
}
