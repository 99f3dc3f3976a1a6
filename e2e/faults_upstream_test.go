package e2e

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
)

// The upstream misbehaves at random while a few hundred conversations run: about one
// create in four stalls (never answers), is delayed, is cut mid-stream, or has its
// connection closed after the response; and every upstream connection is reset at once,
// three times early in the run. Every turn must end within its deadline with either a
// successful recovery or exactly one error frame with a status (never a hang, never a
// second frame for the turn), and every conversation must finish (the client resends its
// full input on a new socket after an error, as Codex does).
func TestFaultUpstreamStallsAndResets(t *testing.T) {
	t.Parallel()
	const (
		firstEvent = 1500 * time.Millisecond
		idle       = 1500 * time.Millisecond
		// deadline bounds one attempt as the client sees it: the gateway's timeouts plus
		// room for a loaded machine.
		deadline = firstEvent + idle + 4*time.Second
	)
	rng := rand.New(rand.NewPCG(8, 8))
	faults := emulator.Faults{Creates: map[int]emulator.CreateFault{}}
	for seq := 1; seq <= 20000; seq++ {
		var f emulator.CreateFault
		switch p := rng.IntN(100); {
		case p < 8:
			f.Stall = true
		case p < 15:
			f.DropAfterEvents = 1 + rng.IntN(8) // cut before or after the first client byte
		case p < 20:
			f.Delay = time.Duration(100+rng.IntN(400)) * time.Millisecond
		case p < 25:
			f.CloseAfter = true
		default:
			continue
		}
		faults.Creates[seq] = f
	}
	faults.CloseMode = emulator.CloseAbrupt
	bin := Build(t, "./cmd/gateway")
	emu := emulator.StartTest(t, emulator.WithScript(LoadScript()), emulator.WithFaults(faults))
	g := StartGateway(t, bin, "A", "--upstream", emu.URL(), "--policies", policiesDir(t), "--reload-poll", "1h", "--log-level", "info",
		"--first-event-timeout", firstEvent.String(), "--idle-timeout", idle.String())

	const turns = 5
	n := loadSessions()
	sp := specs("upstream-faults", n, turns, []string{g.WSURL()}, func(i int, sp *convSpec) {
		sp.deadline = deadline
		sp.attempts = 10
		sp.quietAfterError = 150 * time.Millisecond
	})
	done := make(chan struct{})
	var stats []*convStats
	start := time.Now()
	go func() { stats = runConversations(sp); close(done) }()
	resets := 0
	for resets < 3 {
		select {
		case <-done:
		case <-time.After(500 * time.Millisecond):
			emu.ResetConnections()
			resets++
			continue
		}
		break
	}
	<-done
	res := summarize(stats)
	st := emu.Stats()
	t.Logf("%s in %s; %d resets of every upstream connection; emulator: %d stalls, %d drops, %d fault closes",
		res, time.Since(start).Round(time.Millisecond), resets, st.Stalls, st.Drops, st.FaultCloses)
	t.Logf("gateway: turns by outcome %v, recoveries %v", outcomes(t, g), g.Sum(t, "chainmend_recoveries_total", map[string]string{"result": "succeeded"}))
	for _, f := range res.failures {
		t.Error(f)
	}
	assert.Equal(t, n*turns, res.completed, "every conversation finished")
	assert.Zero(t, res.hangs, "no attempt outlived its deadline")
	assert.Zero(t, res.stray, "nothing follows an error frame")
	assert.Positive(t, st.Stalls+st.Drops, "the faults happened")
	// Whether a random stall outlived every reset depends on the machine's pace; one stall
	// after the resets always shows the answer a stall gets.
	emu.SetCreateFault(len(emu.Creates())+1, emulator.CreateFault{Stall: true})
	probe := Dial(t, g.WSURL(), header("upstream-faults-stall-probe"))
	pr := probe.Turn(Create(nil, User("stall probe")))
	probe.Close()
	require.Equal(t, "error", pr.Last.Type, "%s", pr.Last.Raw)
	assert.Equal(t, 504, pr.Last.Status)
	assert.Equal(t, "upstream_timeout", pr.Last.Error.Code, "stalls end with 504 upstream_timeout")
	for code := range res.errorCodes {
		assert.Contains(t, []string{"upstream_timeout", "upstream_connection_lost"}, code, "unexpected error frame")
	}
	assert.Positive(t, g.Sum(t, "chainmend_recoveries_total", map[string]string{"result": "succeeded"}),
		"cuts before the first client byte are recovered on a fresh connection")
	assert.Equal(t, res.sessions, len(stats))
	// The upstream may refuse a chained create (a connection closed under it between two
	// turns); the recovery then replays it. Every context it completed was paired.
	checkUpstream(t, emu, false)
	for _, c := range emu.Creates() {
		if c.Outcome == emulator.OutcomeError && !c.Injected {
			assert.Equal(t, "previous_response_not_found", c.Error.Code, "create %d: %v", c.Seq, c.Error)
		}
	}
	assert.True(t, g.Alive())
}

// outcomes returns chainmend_turns_total by outcome.
func outcomes(t *testing.T, g *Gateway) map[string]float64 {
	out := map[string]float64{}
	for _, s := range ParseMetrics(g.Metrics(t)) {
		if s.Name == "chainmend_turns_total" {
			out[s.Labels["outcome"]] += s.Value
		}
	}
	return out
}
