package e2e

// Several instances on one Redis (SPEC R2, R5; issue 6 item 1): two gateway processes (the
// real binary) share a standalone Redis or a 3-master Cluster and one emulator. A session
// moves between them; the second instance must find the pending calls, the anchor and the
// replay transcript the first one wrote and repair the turn exactly as the first would.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/internal/e2etest"
	"chainmend/internal/redistest"
)

// backend is the Redis a pair of gateways shares.
type backend struct {
	name    string
	url     string
	kill    func()
	restart func()
	// keys lists every key (standalone only; nil elsewhere).
	keys func() []string
}

func TestMultiInstanceStandalone(t *testing.T) {
	t.Parallel()
	r := redistest.Start(t)
	rc := r.Client()
	runMultiInstance(t, backend{
		name: "standalone", url: r.URL(), kill: r.Kill, restart: r.Restart,
		keys: func() []string {
			ks, err := rc.Keys(context.Background(), "*").Result()
			require.NoError(t, err)
			return ks
		},
	})
}

func TestMultiInstanceCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 3)
	runMultiInstance(t, backend{name: "cluster", url: c.URL(), kill: c.Kill, restart: c.Restart})
}

// pair is two gateway instances on one Redis in front of one emulator.
type pair struct {
	emu  *emulator.Emulator
	a, b *Gateway
	be   backend
}

func runMultiInstance(t *testing.T, be backend) {
	bin := Build(t, "./cmd/gateway")
	emu := emulator.StartTest(t, emulator.WithScript(e2etest.CmdScript()))
	args := []string{"--upstream", emu.URL(), "--policies", policiesDir(t), "--redis", be.url, "--reload-poll", "1h"}
	p := &pair{emu: emu, be: be, a: StartGateway(t, bin, "A", args...), b: StartGateway(t, bin, "B", args...)}
	for _, g := range []*Gateway{p.a, p.b} {
		assert.Contains(t, g.Logs(), "store=redis")
		assert.Contains(t, g.Logs(), "state store ready")
	}

	t.Run("reconnect to the other instance", p.reconnect)
	t.Run("write on A seen by B at once", p.invalidation)
	// Last: it stops Redis.
	t.Run("redis outage and return", p.outage)

	for _, g := range []*Gateway{p.a, p.b} {
		noSecret(t, "gateway "+g.Name+" log", g.Logs())
		noSecret(t, "gateway "+g.Name+" metrics", g.Metrics(t))
	}
	if be.keys != nil {
		for _, k := range be.keys() {
			noSecret(t, "a Redis key", k)
		}
	}
}

// reconnectCase is a second turn sent after the client reconnected.
type reconnectCase struct {
	name string
	// frame is the turn on the new connection, given turn 1's response id.
	frame func(resp1 string) string
	// reasons must fire on the instance that serves the second turn.
	reasons []string
	// not must not fire.
	not []string
	// upstream is what the emulator receives: the full replay, repaired.
	upstream []string
}

// replayed is turn 1 as the replay transcript holds it: the user message, the model's
// reasoning and its two calls.
var replayed = []string{"msg:user", "rs", "fc:call_A", "fc:call_B"}

func with(base []string, more ...string) []string {
	return append(append([]string(nil), base...), more...)
}

var reconnectCases = []reconnectCase{
	{
		name:     "outputs chained to turn 1",
		frame:    func(r string) string { return Chained(r, FCO("call_A", "ok-a"), FCO("call_B", "ok-b")) },
		reasons:  []string{"fresh_connection_replay"},
		not:      []string{"aborted_injected", "orphan_output_removed", "pending_prev_align"},
		upstream: with(replayed, "fco:call_A=ok-a", "fco:call_B=ok-b"),
	},
	{
		name:     "outputs without previous_response_id",
		frame:    func(string) string { return Create(nil, FCO("call_A", "ok-a"), FCO("call_B", "ok-b")) },
		reasons:  []string{"pending_prev_infer", "fresh_connection_replay"},
		not:      []string{"aborted_injected", "proactive_tool_output_reject"},
		upstream: with(replayed, "fco:call_A=ok-a", "fco:call_B=ok-b"),
	},
	{
		name:     "ESC: outputs dropped, chained",
		frame:    func(r string) string { return Chained(r, User("<turn_aborted>esc</turn_aborted>")) },
		reasons:  []string{"aborted_injected", "fresh_connection_replay"},
		upstream: with(replayed, "fco:call_A=aborted", "fco:call_B=aborted", "msg:user"),
	},
	{
		name:     "ESC: outputs dropped, no previous_response_id",
		frame:    func(string) string { return Create(nil, User("<turn_aborted>esc</turn_aborted>")) },
		reasons:  []string{"pending_prev_infer", "aborted_injected", "fresh_connection_replay"},
		not:      []string{"anchor_reset"},
		upstream: with(replayed, "fco:call_A=aborted", "fco:call_B=aborted", "msg:user"),
	},
	{
		name:     "stale previous_response_id with outputs",
		frame:    func(string) string { return Chained("resp_stale0001", FCO("call_A", "ok-a"), FCO("call_B", "ok-b")) },
		reasons:  []string{"pending_prev_align", "fresh_connection_replay"},
		upstream: with(replayed, "fco:call_A=ok-a", "fco:call_B=ok-b"),
	},
	{
		name: "stale previous_response_id, one output (ESC)",
		frame: func(string) string {
			return Chained("resp_stale0001", FCO("call_A", "ok-a"), User("<turn_aborted>esc</turn_aborted>"))
		},
		reasons:  []string{"pending_prev_align", "aborted_injected", "fresh_connection_replay"},
		upstream: with(replayed, "fco:call_A=ok-a", "fco:call_B=aborted", "msg:user"),
	},
}

// reconnectOutcome is what one run of a case produced, for the A-versus-B comparison.
type reconnectOutcome struct {
	reasons  []string
	upstream []string
	next     []string
}

// reconnect runs every case twice: turn 1 through A, then the client reconnects to A (a
// new connection: the instance that wrote the state) and, in a second session, to B (which
// reads it from Redis). Both must send the emulator the same repaired turn for the same
// reasons.
func (p *pair) reconnect(t *testing.T) {
	errs := p.emu.Stats().Errors
	for _, k := range reconnectCases {
		t.Run(k.name, func(t *testing.T) {
			out := map[string]reconnectOutcome{}
			for _, second := range []*Gateway{p.a, p.b} {
				session := "multi-" + p.be.name + "-" + strings.ReplaceAll(k.name, " ", "_") + "-A" + second.Name
				out[second.Name] = p.reconnectRun(t, session, second, k)
			}
			assert.Equal(t, out["A"], out["B"], "B repairs the turn exactly as A does")
		})
	}
	assert.Equal(t, errs, p.emu.Stats().Errors, "the upstream never had to refuse a turn")
}

func (p *pair) reconnectRun(t *testing.T, session string, second *Gateway, k reconnectCase) reconnectOutcome {
	t.Helper()
	c1 := Dial(t, p.a.WSURL(), header(session))
	e1 := c1.OK(Create(nil, User("call call_A call_B")))
	require.Equal(t, []string{"call_A", "call_B"}, e1.CallIDs())
	turn1 := p.emu.Creates()[len(p.emu.Creates())-1]
	c1.Close()

	redisHits := func() float64 {
		return second.Sum(t, "chainmend_store_lookups_total", map[string]string{"tier": "redis", "result": "hit"})
	}
	hits := redisHits()
	before := second.Fired(t)
	n := len(p.emu.Creates())
	c2 := Dial(t, second.WSURL(), header(session))
	e2 := c2.OK(k.frame(e1.Response.ID))
	reasons := second.FiredSince(t, before)
	if second == p.a {
		assert.Zero(t, redisHits()-hits, "A serves the session from its local tier")
	} else {
		// Anchor and transcript; the anchor's pending calls ride with the anchor (issue 14:
		// a moved session reads in one round trip).
		assert.GreaterOrEqual(t, redisHits()-hits, 2.0, "B reads anchor (with its pending calls) and replay from Redis")
	}
	creates := p.emu.Creates()
	require.Len(t, creates, n+1, "one create upstream: repaired before sending, no upstream error, no retry")
	up := creates[n]
	for _, r := range k.reasons {
		assert.Contains(t, reasons, r, "instance %s", second.Name)
	}
	for _, r := range k.not {
		assert.NotContains(t, reasons, r, "instance %s", second.Name)
	}
	assert.Empty(t, up.PreviousResponseID, "a full replay on the fresh upstream connection")
	assert.NotEqual(t, turn1.Conn, up.Conn, "a fresh upstream connection")
	assert.Equal(t, k.upstream, e2etest.Summary(up.Frame), "instance %s", second.Name)
	assert.Equal(t, emulator.OutcomeCompleted, up.Outcome)
	assert.NoError(t, e2etest.Paired(up))

	// The session goes on through the second instance, chained on its upstream connection.
	e3 := c2.OK(Chained(e2.Response.ID, User("next")))
	last := p.emu.Creates()[n+1]
	assert.Equal(t, e2.Response.ID, last.PreviousResponseID, "the chain is kept on the new instance")
	assert.Equal(t, up.Conn, last.Conn)
	assert.Equal(t, e3.Response.ID, last.ResponseID)
	return reconnectOutcome{reasons: reasons, upstream: e2etest.Summary(up.Frame), next: e2etest.Summary(last.Frame)}
}

// invalidation: B caches the session's state, A overwrites and deletes it, and B's very
// next turn (no waiting) sees A's writes; then A clears the anchor B wrote, and B sees
// that at once too.
func (p *pair) invalidation(t *testing.T) {
	session := "multi-" + p.be.name + "-invalidation"
	received := func() float64 { return p.b.Sum(t, "chainmend_store_invalidations_received_total", nil) }

	a1 := Dial(t, p.a.WSURL(), header(session))
	resp1 := a1.OK(Create(nil, User("call call_D1"))).Response.ID

	// B reads (and caches) anchor, pending calls and replay: a turn it rejects still builds
	// its turn context from the store first.
	redisHits := func() float64 {
		return p.b.Sum(t, "chainmend_store_lookups_total", map[string]string{"tier": "redis", "result": "hit"})
	}
	hits := redisHits()
	b1 := Dial(t, p.b.WSURL(), header(session))
	r := b1.Turn(Chained("msg_not_a_response", User("x")))
	require.Equal(t, "error", r.Last.Type, "%s", r.Last.Raw)
	require.Equal(t, "invalid_previous_response_id", r.Last.Error.Code)
	assert.GreaterOrEqual(t, redisHits()-hits, 2.0, "B read anchor (with its pending calls) and replay from Redis (and keeps them locally)")
	inval := received()

	// A answers the call: the anchor moves to resp2, resp1's pending entry is deleted, the
	// transcript grows.
	e2 := a1.OK(Chained(resp1, FCO("call_D1", "ok-d1")))
	require.Empty(t, e2.CallIDs())

	// At once on B: a stale cache would align the turn to resp1 and inject an aborted
	// output for call_D1; the fresh state replays resp2's whole context.
	before := p.b.Fired(t)
	n := len(p.emu.Creates())
	b2 := Dial(t, p.b.WSURL(), header(session))
	e3 := b2.OK(Chained(e2.Response.ID, User("next")))
	reasons := p.b.FiredSince(t, before)
	assert.Contains(t, reasons, "fresh_connection_replay")
	assert.NotContains(t, reasons, "pending_prev_align", "B used a stale anchor")
	assert.NotContains(t, reasons, "aborted_injected", "B used a deleted pending entry")
	up := p.emu.Creates()[n]
	assert.Empty(t, up.PreviousResponseID)
	assert.Equal(t, []string{"msg:user", "rs", "fc:call_D1", "fco:call_D1=ok-d1", "msg:assistant", "msg:user"}, e2etest.Summary(up.Frame),
		"B replays the transcript as A extended it")
	assert.Greater(t, received(), inval, "B dropped its copies on A's announcement")

	// A clears the anchor (a forwarded upstream error ends the turn and clears it); B,
	// which wrote that anchor itself, must see it gone at once.
	seq := p.emu.FailNextCreate(emulator.ErrServer())
	a2 := Dial(t, p.a.WSURL(), header(session))
	r = a2.Turn(Chained(e3.Response.ID, User("boom")))
	require.Equal(t, "error", r.Last.Type, "%s", r.Last.Raw)
	assert.Equal(t, "server_error", r.Last.Error.Code)
	assert.Equal(t, 500, r.Last.Status)
	c, ok := p.emu.CreateBySeq(seq)
	require.True(t, ok)
	assert.True(t, c.Injected)

	before = p.b.Fired(t)
	n = len(p.emu.Creates())
	b3 := Dial(t, p.b.WSURL(), header(session))
	b3.OK(Create(nil, User("hello again")))
	reasons = p.b.FiredSince(t, before)
	assert.NotContains(t, reasons, "anchor_reset", "B still held the anchor A cleared")
	assert.NotContains(t, reasons, "pending_prev_infer")
	up = p.emu.Creates()[n]
	assert.Equal(t, []string{"msg:user"}, e2etest.Summary(up.Frame))
	assert.Empty(t, up.PreviousResponseID)
}

// outage: Redis stops mid-conversation. Turns keep succeeding from the local tier (the
// connection that holds the chain, a reconnect to the same instance, a new session on the
// other one); when Redis returns the instances resubscribe, and sessions move between
// instances again.
func (p *pair) outage(t *testing.T) {
	session := "multi-" + p.be.name + "-outage"
	errs := p.emu.Stats().Errors
	flushes := func(g *Gateway) float64 { return g.Sum(t, "chainmend_store_local_flushes_total", nil) }
	flushA, flushB := flushes(p.a), flushes(p.b)
	degraded := p.a.Sum(t, "chainmend_store_commits_total", map[string]string{"result": "degraded"})

	a1 := Dial(t, p.a.WSURL(), header(session))
	resp1 := a1.OK(Create(nil, User("call call_O1"))).Response.ID

	p.be.kill()
	start := time.Now()

	// The connection that holds the chain goes on.
	e2 := a1.OK(Chained(resp1, FCO("call_O1", "ok-o1"), User("call call_O2")))
	require.Equal(t, []string{"call_O2"}, e2.CallIDs())
	assert.Equal(t, resp1, p.emu.Creates()[len(p.emu.Creates())-1].PreviousResponseID)

	// A reconnect to the same instance: pending calls, anchor and replay from A's local tier.
	a1.Close()
	before := p.a.Fired(t)
	a2 := Dial(t, p.a.WSURL(), header(session))
	e3 := a2.OK(Chained(e2.Response.ID, FCO("call_O2", "ok-o2")))
	assert.Contains(t, p.a.FiredSince(t, before), "fresh_connection_replay")
	up := p.emu.Creates()[len(p.emu.Creates())-1]
	assert.Equal(t, []string{"msg:user", "rs", "fc:call_O1", "fco:call_O1=ok-o1", "msg:user", "rs", "fc:call_O2", "fco:call_O2=ok-o2"},
		e2etest.Summary(up.Frame), "the replay of the whole session, kept locally while Redis is down")
	assert.NoError(t, e2etest.Paired(up))

	// B serves a new session on its own.
	b1 := Dial(t, p.b.WSURL(), header(session+"-b"))
	b1.OK(Create(nil, User("hello from B")))
	assert.Greater(t, p.a.Sum(t, "chainmend_store_commits_total", map[string]string{"result": "degraded"}), degraded,
		"A's commits were kept locally")
	assert.Less(t, time.Since(start), 10*time.Second, "turns do not wait on the dead Redis")

	p.be.restart()

	// Both instances resubscribe and flush their local tiers (the announcements of the
	// outage are lost).
	waitFor(t, "both instances resubscribed", 20*time.Second, func() bool {
		return flushes(p.a) > flushA && flushes(p.b) > flushB
	})

	// The session that lived through the outage goes on where its chain is.
	a2.OK(Chained(e3.Response.ID, User("after the outage")))
	assert.Equal(t, e3.Response.ID, p.emu.Creates()[len(p.emu.Creates())-1].PreviousResponseID)

	// Traffic closes the circuit breakers: the first store operation after the cooldown
	// probes Redis. Until then an instance keeps serving from its local tier.
	probes := 0
	waitFor(t, "the breakers closed", 15*time.Second, func() bool {
		closed := true
		for _, g := range []*Gateway{p.a, p.b} {
			probes++
			c := Dial(t, g.WSURL(), header(fmt.Sprintf("%s-probe-%d", session, probes)))
			c.OK(Create(nil, User("ping")))
			c.Close()
			closed = closed && g.Sum(t, "chainmend_store_breaker_state", nil) == 0
		}
		return closed
	})

	// Sessions move between instances again: B repairs from what A wrote to Redis.
	session2 := session + "-after"
	c := Dial(t, p.a.WSURL(), header(session2))
	c.OK(Create(nil, User("call call_R1")))
	c.Close()
	before = p.b.Fired(t)
	b2 := Dial(t, p.b.WSURL(), header(session2))
	b2.OK(Create(nil, User("<turn_aborted>esc</turn_aborted>")))
	reasons := p.b.FiredSince(t, before)
	assert.Contains(t, reasons, "pending_prev_infer")
	assert.Contains(t, reasons, "aborted_injected")
	assert.Contains(t, reasons, "fresh_connection_replay")
	up = p.emu.Creates()[len(p.emu.Creates())-1]
	assert.Equal(t, []string{"msg:user", "rs", "fc:call_R1", "fco:call_R1=aborted", "msg:user"}, e2etest.Summary(up.Frame))
	assert.Equal(t, errs, p.emu.Stats().Errors, "the upstream never had to refuse a turn")
}
