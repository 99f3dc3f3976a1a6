package e2e

// Lanes across instances (issue 13): two gateway processes on one Redis. A client runs two
// lanes through A, then reconnects to B with the same session; each lane's next turn finds
// that lane's state (anchor, pending calls, transcript) in Redis and is replayed from that
// lane's own transcript on B's new upstream connection. Then back to A.

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/internal/e2etest"
	"chainmend/internal/redistest"
)

func TestLanesMoveBetweenInstances(t *testing.T) {
	t.Parallel()
	r := redistest.Start(t)
	bin := Build(t, "./cmd/gateway")
	emu := emulator.StartTest(t, emulator.WithScript(e2etest.CmdScript()))
	args := []string{"--upstream", emu.URL(), "--policies", policiesDir(t), "--redis", r.URL(), "--reload-poll", "1h"}
	a, b := StartGateway(t, bin, "A", args...), StartGateway(t, bin, "B", args...)
	h := header("sess-lanes-move")
	onLane := func(lane, prev string, items ...Item) string {
		f := Item{"stream_id": lane}
		if prev != "" {
			f["prev"] = prev
		}
		return Create(f, items...)
	}
	lastOn := func(lane string) emulator.Create {
		var out emulator.Create
		for _, c := range emu.Creates() {
			if c.Lane == lane {
				out = c
			}
		}
		return out
	}

	// On A: lane x waits on a call, lane y completed a plain turn.
	ca := Dial(t, a.WSURL(), h)
	ca.Send(onLane("x", "", User("call call_X1")))
	ca.Send(onLane("y", "", User("why one")))
	got := ca.Lanes(map[string]int{"x": 1, "y": 1})
	x1, y1 := got["x"].Response.ID, got["y"].Response.ID
	require.Equal(t, []string{"call_X1"}, got["x"].CallIDs())
	ca.Close()

	// On B: each lane continues; B has neither the lanes' memory nor their upstream
	// connection, so each is replayed from its own transcript in Redis.
	before := b.Fired(t)
	cb := Dial(t, b.WSURL(), h)
	cb.Send(onLane("x", x1, FCO("call_X1", "ok")))
	cb.Send(onLane("y", y1, User("why two")))
	got = cb.Lanes(map[string]int{"x": 1, "y": 1})
	for lane, e := range got {
		require.Equal(t, "response.completed", e.Type, "lane %s: %s", lane, e.Raw)
	}
	assert.Equal(t, 2.0, b.Fired(t)["fresh_connection_replay"]-before["fresh_connection_replay"], "each lane replayed once")
	assert.Equal(t, []string{"msg:user", "rs", "fc:call_X1", "fco:call_X1=ok"}, e2etest.Summary(lastOn("x").Frame))
	assert.Equal(t, []string{"msg:user", "msg:assistant", "msg:user"}, e2etest.Summary(lastOn("y").Frame),
		"lane y's replay holds lane y only")
	x2, y2 := got["x"].Response.ID, got["y"].Response.ID
	cb.Close()

	// Back on A: A's memory of the lanes is stale; the store says where each lane is.
	ca = Dial(t, a.WSURL(), h)
	ca.Send(onLane("x", x2, User("x three")))
	ca.Send(onLane("y", y2, User("why three")))
	got = ca.Lanes(map[string]int{"x": 1, "y": 1})
	for lane, e := range got {
		require.Equal(t, "response.completed", e.Type, "lane %s: %s", lane, e.Raw)
	}
	for _, c := range emu.Creates() {
		require.NoError(t, e2etest.Paired(c), "create %d on lane %q", c.Seq, c.Lane)
		assert.Empty(t, c.Error, fmt.Sprintf("create %d on lane %q", c.Seq, c.Lane))
	}
	for _, g := range []*Gateway{a, b} {
		noSecret(t, "gateway "+g.Name+" log", g.Logs())
	}
}
