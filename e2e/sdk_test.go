package e2e

// The official Node SDK as a real client (issue 13 item 7a): npm `openai` drives two lanes
// over one WebSocket (testdata/sdk/lanes.mjs, with ResponsesWS and
// ResponsesWebSocketSession) through the gateway binary, on Redis, against the emulator (in
// process, as in the other suites here, so that the test can drop the upstream connection
// and read what each lane received). The upstream connection is dropped between two turns
// and one lane presses ESC. The script checks every answer it gets; this test checks what the
// emulator received on each lane and what the gateway counted. `make deps-node-sdk`
// installs the SDK into .cache/openai-node and `make test` runs this with
// CHAINMEND_OPENAI_NODE set. The SDK declares node >= 22; it runs here on the machine's
// node 20 (Debian has no newer one), with ws as its WebSocket.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/internal/e2etest"
	"chainmend/internal/redistest"
)

// nodeSDKVersion is the npm `openai` release the Makefile installs (deps-node-sdk) and the
// script must run with.
const nodeSDKVersion = "7.60.0"

// nodeSDK returns the node binary and the directory whose node_modules holds the SDK:
// $CHAINMEND_OPENAI_NODE, else the install `make deps-node-sdk` leaves in .cache/openai-node.
// A missing node or SDK, or another SDK version, skips the test loudly, or fails it under
// CI=true or when CHAINMEND_OPENAI_NODE names a directory explicitly.
func nodeSDK(t *testing.T) (node, dir string) {
	t.Helper()
	dir, explicit := os.LookupEnv("CHAINMEND_OPENAI_NODE")
	if !explicit || dir == "" {
		dir = filepath.Join(RepoRoot(t), ".cache", "openai-node")
	}
	missing := func(what string) {
		t.Helper()
		msg := what + ": run `make deps-node-sdk` (installs openai@" + nodeSDKVersion +
			" and ws from npm into .cache/openai-node) or set CHAINMEND_OPENAI_NODE to such a directory"
		if explicit || os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("!!!!!!!! SKIPPING: " + msg + " !!!!!!!!")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node is not on PATH")
	}
	for pkg, want := range map[string]string{"openai": nodeSDKVersion, "ws": ""} {
		data, err := os.ReadFile(filepath.Join(dir, "node_modules", pkg, "package.json"))
		if err != nil {
			missing(fmt.Sprintf("npm package %s not installed in %s", pkg, dir))
		}
		var meta struct {
			Version string `json:"version"`
		}
		if err := json.Unmarshal(data, &meta); err != nil {
			t.Fatalf("%s/node_modules/%s/package.json: %v", dir, pkg, err)
		}
		if want != "" && meta.Version != want {
			missing(fmt.Sprintf("npm package %s is %s in %s, want %s", pkg, meta.Version, dir, want))
		}
	}
	return node, dir
}

// sdkResult is the script's last line.
type sdkResult struct {
	SDKVersion  string              `json:"sdk_version"`
	NodeVersion string              `json:"node_version"`
	Lanes       map[string][]string `json:"lanes"`
	Events      map[string]int      `json:"events"`
	Errors      []string            `json:"errors"`
}

// sdkLanes are the lanes of testdata/sdk/lanes.mjs.
var sdkLanes = []string{"alpha", "beta"}

func TestNodeSDKLanes(t *testing.T) {
	t.Parallel()
	node, sdkDir := nodeSDK(t)
	redis := redistest.Start(t)
	// Paced events make each response last long enough for the two lanes' responses to
	// overlap upstream, which they only do when the gateway runs lanes side by side.
	emu := emulator.StartTest(t, emulator.WithScript(e2etest.CmdScript()),
		emulator.WithFaults(emulator.Faults{All: emulator.CreateFault{EventInterval: 3 * time.Millisecond}}))
	gw := StartGateway(t, Build(t, "./cmd/gateway"), "sdk", "--upstream", emu.URL(),
		"--policies", policiesDir(t), "--redis", redis.URL(), "--reload-poll", "1h")
	before := gw.Fired(t)

	var beforeDrop int
	res := runSDKScript(t, node, sdkDir, "lanes.mjs", gw.URL()+"/v1", func(event string) {
		require.Equal(t, "drop", event)
		beforeDrop = len(emu.Creates())
		emu.ResetConnections()
		waitFor(t, "the emulator to see its connections gone", 5*time.Second, func() bool {
			return emu.Stats().OpenConnections == 0
		})
		// The gateway learns of the drop from its read loop; give the loopback RST a moment
		// so that the next turn meets a dead connection rather than races it.
		time.Sleep(100 * time.Millisecond)
	})

	// What the script saw.
	assert.Equal(t, nodeSDKVersion, res.SDKVersion)
	t.Logf("node %s, openai %s, events per lane %v", res.NodeVersion, res.SDKVersion, res.Events)
	assert.Empty(t, res.Errors, "the SDK reported errors")
	assert.NotContains(t, res.Events, "(none)", "every event of a named lane carries its stream_id")
	for _, lane := range sdkLanes {
		assert.Positive(t, res.Events[lane], "events on lane %s", lane)
	}
	assert.Len(t, res.Events, len(sdkLanes), "events only on the script's lanes: %v", res.Events)

	// What the emulator received, lane by lane.
	creates := emu.Creates()
	require.Equal(t, 14, len(creates), "seven turns per lane, none retried or refused:\n%s", describeCreates(creates))
	require.Equal(t, 6, beforeDrop, "three turns per lane before the drop")
	assert.NotEqual(t, creates[0].Conn, creates[beforeDrop].Conn, "the drop replaced the upstream connection")
	assert.Zero(t, emu.Stats().Errors, "the upstream never had to refuse a turn")
	assert.GreaterOrEqual(t, emu.Stats().PeakInFlight, int64(2), "the lanes' responses ran side by side upstream")
	for _, c := range emu.Conns() {
		assert.Equal(t, "Bearer "+testSecret, c.Header().Get("Authorization"), "the SDK's credential goes upstream")
	}
	byLane := map[string][]emulator.Create{}
	for i, c := range creates {
		require.Contains(t, sdkLanes, c.Lane, "create %d on an unknown lane", c.Seq)
		assert.Equal(t, emulator.OutcomeCompleted, c.Outcome, "create %d: %v", c.Seq, c.Error)
		assert.NoError(t, e2etest.Paired(c))
		assert.False(t, c.Fork, "create %d: lanes never fork here", c.Seq)
		// One upstream connection carries both lanes, and the drop replaces it.
		if i < beforeDrop {
			assert.Equal(t, creates[0].Conn, c.Conn, "create %d: both lanes on the first upstream connection", c.Seq)
		} else {
			assert.Equal(t, creates[beforeDrop].Conn, c.Conn, "create %d: both lanes on the second upstream connection", c.Seq)
		}
		byLane[c.Lane] = append(byLane[c.Lane], c)
	}
	for _, lane := range sdkLanes {
		cs := byLane[lane]
		require.Len(t, cs, 7, "lane %s", lane)
		var ids []string
		for _, c := range cs {
			ids = append(ids, c.ResponseID)
			// No item of the other lane ever reaches this lane's context.
			for _, it := range c.Context {
				if it.CallID != "" {
					assert.True(t, strings.HasPrefix(it.CallID, "call_"+lane+"_"),
						"create %d on lane %s holds %s %s of another lane", c.Seq, lane, it.Type, it.CallID)
				}
			}
		}
		assert.Equal(t, ids, res.Lanes[lane], "lane %s: the client got exactly the emulator's responses, in order", lane)

		// Before the drop every turn chains to the lane's previous response; the first turn
		// after it is the lane's own transcript replayed as a full create on the new
		// connection; then the lane chains again.
		for i, c := range cs {
			switch {
			case i == 0:
				assert.Empty(t, c.PreviousResponseID)
			case i == 3:
				assert.Empty(t, c.PreviousResponseID, "lane %s: the turn after the drop is a full replay", lane)
				assert.Equal(t, []string{
					"msg:user", "rs", "fc:call_" + lane + "_1", "fco:call_" + lane + "_1=call_" + lane + "_1 ran on " + lane,
					"msg:assistant",
					"msg:user", "rs", "fc:call_" + lane + "_2", "fco:call_" + lane + "_2=call_" + lane + "_2 ran on " + lane,
				}, e2etest.Summary(c.Frame), "lane %s: the replay is this lane's transcript and nothing else", lane)
			default:
				assert.Equal(t, cs[i-1].ResponseID, c.PreviousResponseID, "lane %s create %d chains to the lane's last response", lane, c.Seq)
			}
		}
	}

	// ESC on beta: its two pending calls answered "aborted" before the new message; alpha's
	// calls, pending at the same moment, untouched and answered by alpha itself.
	esc := byLane["beta"][5]
	assert.Equal(t, []string{"fco:call_beta_3=aborted", "fco:call_beta_4=aborted", "msg:user"}, e2etest.Summary(esc.Frame))
	answer := byLane["alpha"][5]
	assert.Equal(t, []string{"fco:call_alpha_3=call_alpha_3 ran on alpha", "fco:call_alpha_4=call_alpha_4 ran on alpha"},
		e2etest.Summary(answer.Frame))
	assert.Less(t, esc.Seq, answer.Seq, "alpha answered after beta's ESC")
	for _, c := range creates {
		if c.Seq != esc.Seq {
			assert.NotContains(t, strings.Join(e2etest.Summary(c.Frame), " "), "=aborted", "create %d on lane %s", c.Seq, c.Lane)
		}
	}

	// What the gateway counted.
	fired := map[string]float64{}
	for reason, v := range gw.Fired(t) {
		if d := v - before[reason]; d > 0 {
			fired[reason] = d
		}
	}
	t.Logf("gateway reasons fired: %v", fired)
	assert.Equal(t, 1.0, fired["aborted_injected"], "one ESC, on one lane")
	assert.Equal(t, 2.0, fired["fresh_connection_replay"]+fired["transport_retry"], "one replay per lane after the drop")
	for _, r := range []string{"pending_prev_align", "orphan_output_removed", "input_edited", "drop_previous_response_id_full_replay"} {
		assert.Zero(t, fired[r], "%s: nothing else to repair", r)
	}
	waitFor(t, "the client connection to close", 5*time.Second, func() bool {
		return gw.Sum(t, "chainmend_client_connections", nil) == 0
	})
	m := ParseMetrics(gw.Metrics(t))
	assert.Equal(t, 14.0, SumSamples(m, "chainmend_turns_total", map[string]string{"outcome": "completed"}))
	assert.Equal(t, 14.0, SumSamples(m, "chainmend_turns_total", nil), "every turn completed")
	assert.Equal(t, 2.0, SumSamples(m, "chainmend_upstream_connections_total", map[string]string{"event": "dialed"}))
	assert.Equal(t, 1.0, SumSamples(m, "chainmend_upstream_connections_total", map[string]string{"event": "lost"}))
	assert.Zero(t, SumSamples(m, "chainmend_bad_frames_total", nil))
	assert.Zero(t, SumSamples(m, "chainmend_limit_rejections_total", nil))
	assert.Zero(t, SumSamples(m, "chainmend_bookkeeping_errors_total", nil))

	// Both lanes' state is in Redis, each under its own lane.
	keys, err := redis.Client().Keys(context.Background(), "*").Result()
	require.NoError(t, err)
	for _, lane := range sdkLanes {
		found := false
		for _, k := range keys {
			found = found || strings.Contains(k, ":l:"+lane)
		}
		assert.True(t, found, "no Redis key of lane %s in %v", lane, keys)
	}
	for _, k := range keys {
		noSecret(t, "a Redis key", k)
	}
	noSecret(t, "gateway log", gw.Logs())
}

// describeCreates renders what the emulator received, one create a line, for failure
// messages: a Create's raw frame and contexts are too long to print whole.
func describeCreates(cs []emulator.Create) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "  #%d conn %d lane %q prev %q -> %s %s", c.Seq, c.Conn, c.Lane, c.PreviousResponseID, c.Outcome, c.ResponseID)
		if c.Error != nil {
			fmt.Fprintf(&b, " (%s: %s)", c.Error.Code, c.Error.Message)
		}
		fmt.Fprintf(&b, " %v\n", e2etest.Summary(c.Frame))
	}
	return b.String()
}

// runSDKScript runs testdata/sdk/<script> with node against baseURL, with the test's own key
// (runNodeScript), and decodes its result line.
func runSDKScript(t *testing.T, node, sdkDir, script, baseURL string, onEvent func(event string)) sdkResult {
	t.Helper()
	line := runNodeScript(t, node, sdkDir, script, []string{
		"CHAINMEND_SDK_BASE_URL=" + baseURL,
		"CHAINMEND_SDK_API_KEY=" + testSecret,
		"CHAINMEND_SDK_MODEL=gpt-5.5",
	}, onEvent)
	var res sdkResult
	require.NoError(t, json.Unmarshal([]byte(line), &res))
	return res
}
