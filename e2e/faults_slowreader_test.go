package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
)

// Clients that stop reading while their responses are large: the gateway must not buffer
// for them without bound (its write to such a client fails after --write-timeout, and the
// session ends), and the other sessions must not slow down. The load runs twice, alone
// (the control) and next to the stuck clients; the median turn latency of the second run
// must stay close to the control's, and the gateway's memory must stay within what a
// bounded relay can hold. Not parallel: it compares latencies, so it runs alone.
func TestFaultClientStopsReading(t *testing.T) {
	const (
		floodBytes  = 1 << 20 // the text of one flood response; a turn relays about 3x that
		floodQueued = 3       // creates each stuck client queues
		turns       = 4
	)
	// Long enough for the measured load to run while the stuck clients are stuck, even on
	// a machine busy with other work.
	const writeTimeout = 5 * time.Second
	stuck, sessions := 10, loadSessions()/3
	flood := strings.Repeat("x", floodBytes)
	script := LoadScript()
	emu := emulator.StartTest(t, emulator.WithRecording(false), emulator.WithScript(emulator.ScriptFunc(func(r *emulator.Request) emulator.Turn {
		if raws, _ := r.InputRaw(); len(raws) > 0 && strings.Contains(string(raws[len(raws)-1]), "flood") {
			return emulator.Turn{Output: []emulator.Output{emulator.Say(flood)}, TextDeltas: 16}
		}
		return script.Turn(r)
	})))
	bin := Build(t, "./cmd/gateway")
	g := StartGateway(t, bin, "A", "--upstream", emu.URL(), "--policies", policiesDir(t), "--reload-poll", "1h", "--log-level", "info",
		"--write-timeout", writeTimeout.String())

	run := func(name string) loadResult {
		res := summarize(runConversations(specs(name, sessions, turns, []string{g.WSURL()}, nil)))
		for _, f := range res.failures {
			t.Error(f)
		}
		require.Equal(t, sessions*turns, res.completed, "%s: every turn completed", name)
		require.Zero(t, res.errors(), "%s: no error frame", name)
		return res
	}
	run("slow-reader-warmup")
	control := run("slow-reader-control-before")
	base := g.RSS()
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if rss := g.RSS(); rss > peak.Load() {
				peak.Store(rss)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()

	// The stuck clients: each asks for floodQueued large responses and never reads.
	for i := 0; i < stuck; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, _, err := websocket.Dial(ctx, g.WSURL(), &websocket.DialOptions{HTTPHeader: header(fmt.Sprintf("stuck-%d", i))})
		cancel()
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.CloseNow() })
		for j := 0; j < floodQueued; j++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(Create(nil, User(fmt.Sprintf("flood %d", j))))))
			cancel()
		}
	}
	// Wait until they are stuck: the socket buffers are full and the upstream stopped
	// sending (the relay does not read ahead without bound).
	stuckSince := time.Now()
	last, quiet := emu.Stats().FramesOut, 0
	for quiet < 10 && time.Since(stuckSince) < writeTimeout/2 {
		time.Sleep(20 * time.Millisecond)
		if out := emu.Stats().FramesOut; out != last {
			last, quiet = out, 0
		} else {
			quiet++
		}
	}
	stalled := time.Since(stuckSince)
	start := time.Now()
	with := run("slow-reader-with")
	loadTook := time.Since(start)
	stillStuck := g.Sum(t, "chainmend_client_connections", nil)

	// Every stuck client is cut off: its session ends although it never closed.
	waitFor(t, "the stuck clients cut off", writeTimeout+10*time.Second, func() bool {
		return g.Sum(t, "chainmend_client_connections", nil) == 0
	})
	cutAfter := time.Since(stuckSince)
	close(stop)
	wg.Wait()
	// A second control after the stuck clients are gone, so that a machine busy with
	// something else during one run does not decide the comparison.
	control2 := run("slow-reader-control-after")
	gone := g.Sum(t, "chainmend_turns_total", map[string]string{"outcome": "client_gone"})
	t.Logf("control: %s; after: %s", control, control2)
	t.Logf("with %d stuck clients (relay to them stalled after %s; %v still connected when the load ended after %s): %s",
		stuck, stalled.Round(time.Millisecond), stillStuck, loadTook.Round(time.Millisecond), with)
	t.Logf("gateway RSS %d MiB before, peak %d MiB (+%d MiB); stuck clients cut off %s after they stalled; %v turns ended client_gone",
		base>>20, peak.Load()>>20, (peak.Load()-base)>>20, cutAfter.Round(time.Millisecond), gone)
	assert.GreaterOrEqual(t, stillStuck, float64(stuck), "the load ran while the stuck clients were stuck")
	assert.Equal(t, float64(stuck), gone, "each stuck client's turn ended when its write timed out, its queued creates dropped")

	// Bounded: per stuck client at most about one response in flight (the relay queue
	// holds one turn's events; the upstream socket pushes back on the rest), with a
	// generous allowance for the race detector's shadow memory.
	bound := int64(stuck) * 4 * floodBytes * 2
	if raceEnabled {
		bound *= 4
	}
	assert.Less(t, peak.Load()-base, bound+64<<20, "gateway memory grew without bound")
	// Latency: no turn of another session waits on a stuck client (that would take a
	// write timeout), and the median stays close to the controls'.
	p50c, p50w := max(pctl(control.latencies, 0.5), pctl(control2.latencies, 0.5)), pctl(with.latencies, 0.5)
	assert.Less(t, pctl(with.latencies, 1), writeTimeout, "a turn of another session waited on a stuck client")
	// The medians are reported, not asserted: on a shared 2-core machine they follow the
	// load, and the hard property is the bound above (nobody waits on a stuck client).
	t.Logf("median turn latency %s with stuck clients, %s without (ratio %.2f)", p50w, p50c, float64(p50w)/float64(p50c))
}
