package e2e

// Suspected bugs outside e2e/ found by the multi-instance suite, kept as failing tests that
// run only with CHAINMEND_E2E_KNOWN_BUGS=1 (as gateway/e2e_knownbugs_test.go does), so that
// the suite stays green until they are fixed.

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/internal/redistest"
)

func knownBug(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("CHAINMEND_E2E_KNOWN_BUGS") == "" {
		t.Skipf("known bug (set CHAINMEND_E2E_KNOWN_BUGS=1 to run): %s", what)
	}
}

// Redis is unreachable for a moment but keeps its data (a network blip, a paused or
// failed-over server): A's commits during the outage stay in A's local tier only. When
// Redis answers again nothing writes them back, so Redis keeps serving the session's
// pre-outage anchor, pending calls and transcript. A client that moves to B then gets its
// turn "repaired" against that stale state: previous_response_id aligned back to the old
// response, its answered call reported to the model as "aborted", its real tool output
// removed as an orphan, and the turn between silently dropped from the replay. The
// upstream accepts the result, so nobody sees an error.
func TestKnownBugStaleRedisAfterBlip(t *testing.T) {
	knownBug(t, "statestore keeps commits made while Redis was unreachable only locally; other instances read the stale pre-outage state from Redis")
	r := redistest.Start(t)
	rc := r.Client()
	bin := Build(t, "./cmd/gateway")
	emu := emulator.StartTest(t, emulator.WithScript(CmdScript()))
	args := []string{"--upstream", emu.URL(), "--policies", policiesDir(t), "--redis", r.URL(), "--reload-poll", "1h"}
	a, b := StartGateway(t, bin, "A", args...), StartGateway(t, bin, "B", args...)
	session := "bug-stale-redis"

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
	time.Sleep(time.Until(paused.Add(pause + 500*time.Millisecond)))
	// Redis answers again; give both instances time to notice (resubscribe, breaker).
	waitFor(t, "A's breaker closed", 15*time.Second, func() bool {
		c := Dial(t, a.WSURL(), header(session+"-probe"))
		c.OK(Create(nil, User("ping")))
		c.Close()
		return a.Sum(t, "chainmend_store_breaker_state", nil) == 0
	})

	// The client moves to B and answers call_Y.
	n := len(emu.Creates())
	b1 := Dial(t, b.WSURL(), header(session))
	res := b1.Turn(Chained(e2.Response.ID, FCO("call_Y", "ok-y")))
	t.Logf("B answered %s; reasons %v", res.Last.Type, b.FiredSince(t, map[string]float64{}))
	if res.Last.Type == "error" {
		return // an error the client can act on (it resends its full context) is acceptable
	}
	require.Greater(t, len(emu.Creates()), n)
	up := emu.Creates()[len(emu.Creates())-1]
	got := strings.Join(Summary(up.Frame), " ")
	t.Logf("upstream received: %s (prev %q)", got, up.PreviousResponseID)
	assert.NotContains(t, got, "fco:call_X=aborted", "call_X was answered in turn 2; the model is told it was aborted")
	assert.Contains(t, got, "fco:call_Y=ok-y", "the client's tool output reached the model")
	assert.Contains(t, got, "fco:call_X=ok-x", "turn 2 is part of the context")
}
