package e2e

// The official Node SDK's own reconnect (issue 17, Done-when): npm `openai` with
// ResponsesWS's `reconnect` option and ResponsesWebSocketSession lanes
// (testdata/sdk/reconnect.mjs) sends no session header, so after a reconnect the gateway
// can find a conversation only by the response its next create chains to. Each lane leaves
// a call pending; the gateway instance the client talked to goes away; the SDK reconnects
// by itself and re-sends nothing; the script registers its lanes again and answers the
// pending call chained to the old socket's response. Every lane must complete, replayed
// from its own transcript on the new instance's fresh upstream connection, and a second
// tenant with the same lane names and call ids, running alongside through the same moves,
// must keep its own conversations.
//
//   - TestNodeSDKReconnectRestart: the instance is stopped (SIGTERM: the gateway closes the
//     client with a code after which the SDK reconnects; one lane) or killed (SIGKILL: the
//     socket just drops, nothing is written at exit; two lanes) and a new gateway process
//     starts on the same address over the same Redis.
//   - TestNodeSDKReconnectOtherInstance: two instances on one Redis behind a TCP switch, the
//     SDK's base URL; flipping the switch cuts the client's connections, as a load balancer
//     that moved them would, and the SDK reconnects to the other instance, then back; one
//     lane and two lanes.
//
// nodeSDK (sdk_test.go) finds node and the SDK: missing, they fail the test under CI=true
// and skip it loudly elsewhere.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/internal/e2etest"
	"chainmend/internal/redistest"
)

// secondTenantKey is the credential of the second tenant of the reconnect tests; like
// testSecret it must never reach a log line, a metric or a Redis key.
const secondTenantKey = "sk-chainmend-e2e-fake-tenant2-7a9e"

// reconnectTenants are the script's tenants: same lanes, same call ids, another credential.
var reconnectTenants = []struct{ name, key string }{{"t1", testSecret}, {"t2", secondTenantKey}}

// recoverableCloses are the close codes after which the SDK reconnects (its
// isRecoverableClose) that a gateway shutting down may use: going away, service restart,
// try again later. 1000 and 1008 would end the SDK's socket for good.
var recoverableCloses = []int{1001, 1012, 1013}

// abnormalClose is what the SDK reports when the socket dropped without a close frame.
const abnormalClose = 1006

func TestNodeSDKReconnectRestart(t *testing.T) {
	t.Parallel()
	node, sdkDir := nodeSDK(t)
	// Two cases, not the four of lanes × stop or kill: the suite stays within seconds on a
	// two-core machine under -race, and the two-lane case is the one that must survive the
	// kill (no last writes).
	for _, tc := range []struct {
		lanes []string
		kill  bool
	}{{[]string{"alpha"}, false}, {[]string{"alpha", "beta"}, true}} {
		lanes, kill := tc.lanes, tc.kill
		how := map[bool]string{false: "stopped", true: "killed"}[kill]
		t.Run(fmt.Sprintf("%d lanes, %s", len(lanes), how), func(t *testing.T) {
			t.Parallel()
			r := newReconnectRun(t, lanes, 1)
			old := StartGateway(t, r.bin, "old", r.args...)
			var fresh *Gateway
			r.serving = []*Gateway{old}
			res := r.runScript(t, node, sdkDir, old.URL()+"/v1", func(int) {
				r.endPhase(t, old)
				if kill {
					old.Kill()
				} else {
					old.Stop()
				}
				// The same address: the SDK's URL does not change, as behind a fixed
				// name or a Kubernetes Service.
				fresh = StartGateway(t, r.bin, "new", append(append([]string(nil), r.args...), "--listen", old.Addr)...)
				r.startPhase(t, fresh)
			})
			r.endPhase(t, fresh)
			r.check(t, res)
			for name, tr := range res.Tenants {
				require.NotEmpty(t, tr.CloseCodes, "tenant %s never reconnected", name)
				if kill {
					assert.Equal(t, abnormalClose, tr.CloseCodes[0], "tenant %s: a killed gateway drops the socket", name)
				} else {
					assert.Contains(t, recoverableCloses, tr.CloseCodes[0],
						"tenant %s: a gateway shutting down closes with a code after which the SDK reconnects", name)
				}
			}
			assert.Positive(t, fresh.Sum(t, "chainmend_store_lookups_total", map[string]string{"tier": "redis", "result": "hit"}),
				"the new instance read the conversations from Redis")
			r.noSecrets(t, fresh)
		})
	}
}

func TestNodeSDKReconnectOtherInstance(t *testing.T) {
	t.Parallel()
	node, sdkDir := nodeSDK(t)
	for _, lanes := range [][]string{{"alpha"}, {"alpha", "beta"}} {
		t.Run(fmt.Sprintf("%d lanes", len(lanes)), func(t *testing.T) {
			t.Parallel()
			// A, then B, then back to A: A's memory of the conversations is stale by then,
			// and what B wrote must win.
			r := newReconnectRun(t, lanes, 2)
			a, b := StartGateway(t, r.bin, "A", r.args...), StartGateway(t, r.bin, "B", r.args...)
			// Both at once: a race-enabled binary takes a second to exit.
			t.Cleanup(func() {
				var wg sync.WaitGroup
				for _, g := range []*Gateway{a, b} {
					wg.Add(1)
					go func() { defer wg.Done(); g.Stop() }()
				}
				wg.Wait()
			})
			sw := startTCPSwitch(t, a.Addr)
			r.serving, r.others = []*Gateway{a}, []*Gateway{a, b}
			res := r.runScript(t, node, sdkDir, "http://"+sw.Addr()+"/v1", func(move int) {
				from, to := r.serving[move-1], []*Gateway{a, b, a}[move]
				r.endPhase(t, from)
				sw.Flip(to.Addr)
				waitFor(t, "the clients to leave instance "+from.Name, 10*time.Second, func() bool {
					return from.Sum(t, "chainmend_client_connections", nil) == 0
				})
				r.startPhase(t, to)
			})
			r.endPhase(t, a)
			r.check(t, res)
			for name, tr := range res.Tenants {
				assert.Equal(t, []int{abnormalClose, abnormalClose}, tr.CloseCodes, "tenant %s: the switch cut the socket twice", name)
			}
			// While one instance served, the other one repaired nothing: its rules fired
			// for no one.
			for k, g := range r.serving {
				idle := r.otherThan(g)
				assert.Empty(t, firedDiff(r.idleAt[k][0], r.idleAt[k][1]), "instance %s while %s served phase %d", idle.Name, g.Name, k)
			}
			// What went through the switch: only the SDK's own handshake headers, the
			// credential and no header that names a session.
			hs := sw.Handshakes()
			assert.GreaterOrEqual(t, len(hs), len(reconnectTenants)*3, "each tenant's handshake on A, B and A")
			for _, h := range hs {
				assert.Contains(t, []string{"Bearer " + testSecret, "Bearer " + secondTenantKey}, h.Get("Authorization"))
				assert.Empty(t, h.Get("Openai-Beta"), "the SDK sends no OpenAI-Beta")
				for name := range h {
					assert.NotContains(t, strings.ToLower(name), "session", "the SDK sends no session header")
				}
			}
			r.noSecrets(t, a, b)
		})
	}
}

// reconnectRun is one run of reconnect.mjs: the emulator and Redis behind the gateways, and
// what the test recorded phase by phase. Phase 0 runs before the first move, phase k after
// move k.
type reconnectRun struct {
	lanes []string
	moves int
	emu   *emulator.Emulator
	redis *redistest.Server
	bin   string
	args  []string

	// serving[k] served phase k; startAt[k] and endAt[k] are its metrics at the start and the
	// end of the phase; idleAt[k] the other instance's fired rules at both ends (two
	// instances only); boundary[k-1] the emulator's create count at move k.
	serving  []*Gateway
	startAt  []phaseMetrics
	endAt    []phaseMetrics
	idleAt   [][2]map[string]float64
	boundary []int
	// others are both instances when there are two; nil for a restart.
	others []*Gateway
}

// phaseMetrics is what the test reads of the serving instance at each end of a phase.
type phaseMetrics struct {
	fired     map[string]float64
	completed float64
	turns     float64
}

// newReconnectRun starts Redis and the emulator of one run and builds the gateway.
func newReconnectRun(t *testing.T, lanes []string, moves int) *reconnectRun {
	r := &reconnectRun{lanes: lanes, moves: moves, redis: redistest.Start(t), bin: Build(t, "./cmd/gateway")}
	r.emu = emulator.StartTest(t, emulator.WithScript(e2etest.CmdScript()))
	r.args = []string{"--upstream", r.emu.URL(), "--policies", policiesDir(t), "--redis", r.redis.URL(), "--reload-poll", "1h"}
	return r
}

// readPhase reads g's turns and the rules it fired (shadow rules and the bookkeeping that
// fires on every response left out, as Gateway.Fired does).
func (r *reconnectRun) readPhase(t *testing.T, g *Gateway) phaseMetrics {
	t.Helper()
	m := ParseMetrics(g.Metrics(t))
	pm := phaseMetrics{fired: map[string]float64{},
		completed: SumSamples(m, "chainmend_turns_total", map[string]string{"outcome": "completed"}),
		turns:     SumSamples(m, "chainmend_turns_total", nil)}
	for _, s := range m {
		if s.Name == "chainmend_rule_fired_total" && s.Labels["shadow"] != "true" && s.Labels["stage"] != "post_response" {
			pm.fired[s.Labels["reason"]] += s.Value
		}
	}
	return pm
}

// turnsPerPhase is how many turns each phase runs: three per lane and tenant before the
// first move, two after each.
func (r *reconnectRun) turnsPerPhase(k int) float64 {
	n := 2
	if k == 0 {
		n = 3
	}
	return float64(n * len(r.lanes) * len(reconnectTenants))
}

// endPhase waits until the serving instance has counted the phase's turns (the client sees
// a turn's terminal event a moment before the instance counts it) and records its metrics.
func (r *reconnectRun) endPhase(t *testing.T, g *Gateway) {
	t.Helper()
	k := len(r.endAt)
	require.Same(t, r.serving[k], g, "phase %d", k)
	want := r.startAt[k].turns + r.turnsPerPhase(k)
	waitFor(t, fmt.Sprintf("instance %s to count the turns of phase %d", g.Name, k), 5*time.Second, func() bool {
		return r.readPhase(t, g).turns >= want
	})
	r.endAt = append(r.endAt, r.readPhase(t, g))
	if len(r.others) > 0 {
		r.idleAt[k][1] = r.otherThan(g).Fired(t)
	}
	r.boundary = append(r.boundary, len(r.emu.Creates()))
}

// startPhase waits until every tenant's socket is on g, then records its metrics; the
// script goes on when this returns.
func (r *reconnectRun) startPhase(t *testing.T, g *Gateway) {
	t.Helper()
	waitFor(t, "every tenant to reconnect to instance "+g.Name, 10*time.Second, func() bool {
		return g.Sum(t, "chainmend_client_connections", nil) == float64(len(reconnectTenants))
	})
	r.serving = append(r.serving, g)
	r.startAt = append(r.startAt, r.readPhase(t, g))
	r.trackIdle(t, g)
}

// trackIdle records, with two instances, the rules the one that does not serve the phase
// g starts has fired so far.
func (r *reconnectRun) trackIdle(t *testing.T, g *Gateway) {
	t.Helper()
	if len(r.others) > 0 {
		r.idleAt = append(r.idleAt, [2]map[string]float64{r.otherThan(g).Fired(t), nil})
	}
}

// otherThan returns the instance of the two that is not g.
func (r *reconnectRun) otherThan(g *Gateway) *Gateway {
	for _, o := range r.others {
		if o != g {
			return o
		}
	}
	return nil
}

// reconnectResult is the script's last line.
type reconnectResult struct {
	SDKVersion  string `json:"sdk_version"`
	NodeVersion string `json:"node_version"`
	Tenants     map[string]struct {
		Lanes           map[string][]string `json:"lanes"`
		CloseCodes      []int               `json:"close_codes"`
		Reconnects      int                 `json:"reconnects"`
		APIErrors       []string            `json:"api_errors"`
		TransportErrors []string            `json:"transport_errors"`
	} `json:"tenants"`
}

// runScript runs testdata/sdk/reconnect.mjs against baseURL. At each move it calls
// onMove(k) and lets the script go on when that returns. The first instance, r.serving[0],
// must be set; the metrics of phase 0 start here.
func (r *reconnectRun) runScript(t *testing.T, node, sdkDir, baseURL string, onMove func(move int)) reconnectResult {
	t.Helper()
	r.startAt = append(r.startAt, r.readPhase(t, r.serving[0]))
	r.trackIdle(t, r.serving[0])
	keys := map[string]string{}
	for _, tn := range reconnectTenants {
		keys[tn.name] = tn.key
	}
	tenants, err := json.Marshal(keys)
	require.NoError(t, err)
	env := []string{
		"CHAINMEND_SDK_BASE_URL=" + baseURL,
		"CHAINMEND_SDK_MODEL=gpt-5.5",
		"CHAINMEND_SDK_TENANTS=" + string(tenants),
		"CHAINMEND_SDK_LANES=" + strings.Join(r.lanes, ","),
		fmt.Sprintf("CHAINMEND_SDK_MOVES=%d", r.moves),
	}
	moves := 0
	line := runNodeScript(t, node, sdkDir, "reconnect.mjs", env, func(event string) {
		require.Equal(t, "move", event)
		moves++
		onMove(moves)
	})
	require.Equal(t, r.moves, moves, "the script's moves")
	var res reconnectResult
	require.NoError(t, json.Unmarshal([]byte(line), &res))
	return res
}

// check asserts what the script saw, what the emulator received on each lane of each tenant
// and what each serving instance counted in each phase.
func (r *reconnectRun) check(t *testing.T, res reconnectResult) {
	t.Helper()
	nLanes := len(r.lanes) * len(reconnectTenants)
	assert.Equal(t, nodeSDKVersion, res.SDKVersion)
	require.Len(t, res.Tenants, len(reconnectTenants))
	for name, tr := range res.Tenants {
		t.Logf("tenant %s: close codes %v, %d reconnects, transport errors %q", name, tr.CloseCodes, tr.Reconnects, tr.TransportErrors)
		assert.Empty(t, tr.APIErrors, "tenant %s: the gateway answered an error", name)
		assert.GreaterOrEqual(t, tr.Reconnects, r.moves, "tenant %s: the SDK reconnected at each move", name)
		assert.Len(t, tr.CloseCodes, tr.Reconnects, "tenant %s: one reconnect per lost socket", name)
	}

	// What the emulator received: each create attributed to the tenant whose credential
	// its upstream connection carries.
	creates := r.emu.Creates()
	assert.Zero(t, r.emu.Stats().Errors, "the upstream never refused a turn (no previous_response_not_found)")
	tenantOf := map[string]string{}
	for _, tn := range reconnectTenants {
		tenantOf["Bearer "+tn.key] = tn.name
	}
	type laneKey struct{ tenant, lane string }
	byLane := map[laneKey][]emulator.Create{}
	for _, c := range creates {
		conn := r.emu.Conn(c.Conn)
		require.NotNil(t, conn, "create %d: no upstream connection %d", c.Seq, c.Conn)
		tenant, ok := tenantOf[conn.Header().Get("Authorization")]
		require.True(t, ok, "create %d: upstream connection %d carries no tenant's credential", c.Seq, c.Conn)
		require.Contains(t, r.lanes, c.Lane, "create %d on an unknown lane", c.Seq)
		assert.Equal(t, emulator.OutcomeCompleted, c.Outcome, "create %d: %v", c.Seq, c.Error)
		assert.NoError(t, e2etest.Paired(c))
		assert.False(t, c.Fork, "create %d: lanes never fork here", c.Seq)
		// The frame holds nothing another tenant sent: the outputs and messages name theirs.
		for _, other := range reconnectTenants {
			if other.name != tenant {
				assert.NotContains(t, string(c.Frame), " for "+other.name+`"`, "create %d of tenant %s holds tenant %s's output", c.Seq, tenant, other.name)
				assert.NotContains(t, string(c.Frame), " of "+other.name+`"`, "create %d of tenant %s holds tenant %s's message", c.Seq, tenant, other.name)
			}
		}
		byLane[laneKey{tenant, c.Lane}] = append(byLane[laneKey{tenant, c.Lane}], c)
	}
	require.Len(t, creates, nLanes*(3+2*r.moves), "every turn went upstream once, none retried or refused:\n%s", describeCreates(creates))
	for _, tn := range reconnectTenants {
		for _, lane := range r.lanes {
			cs := byLane[laneKey{tn.name, lane}]
			require.Len(t, cs, 3+2*r.moves, "tenant %s lane %s", tn.name, lane)
			r.checkLane(t, tn.name, lane, cs, res.Tenants[tn.name].Lanes[lane])
			// The effective context upstream (chained or replayed) holds only items of this
			// lane's own responses: none of the other lane's, none of the other tenant's,
			// whose call ids are the same.
			own := map[string]bool{}
			for _, c := range cs {
				own[c.ResponseID] = true
			}
			for _, c := range cs {
				for _, it := range c.Context {
					if it.Response != "" {
						assert.True(t, own[it.Response], "tenant %s lane %s create %d holds %s %s of response %s, not this lane's",
							tn.name, lane, c.Seq, it.Type, it.CallID, it.Response)
					}
					if it.CallID != "" {
						assert.True(t, strings.HasPrefix(it.CallID, "call_"+lane+"_"), "tenant %s lane %s create %d holds %s %s",
							tn.name, lane, c.Seq, it.Type, it.CallID)
					}
				}
			}
		}
	}

	// What each serving instance counted, phase by phase: one replay per lane and tenant
	// after each move, nothing else repaired.
	require.Len(t, r.endAt, r.moves+1)
	for k, g := range r.serving {
		fired := firedDiff(r.startAt[k].fired, r.endAt[k].fired)
		t.Logf("phase %d on instance %s: rules fired %v", k, g.Name, fired)
		assert.Equal(t, r.turnsPerPhase(k), r.endAt[k].completed-r.startAt[k].completed, "phase %d on %s: every turn completed", k, g.Name)
		assert.Equal(t, r.turnsPerPhase(k), r.endAt[k].turns-r.startAt[k].turns, "phase %d on %s: no other turn", k, g.Name)
		wantReplays := float64(nLanes)
		if k == 0 {
			wantReplays = 0
		}
		assert.Equal(t, wantReplays, fired["fresh_connection_replay"], "phase %d on %s: one replay per lane of each tenant", k, g.Name)
		for _, reason := range []string{"aborted_injected", "pending_prev_align", "pending_prev_infer", "orphan_output_removed",
			"input_edited", "drop_previous_response_id_full_replay", "tool_output_not_found_drop_prev_replay", "transport_retry"} {
			assert.Zero(t, fired[reason], "phase %d on %s: %s: nothing else to repair", k, g.Name, reason)
		}
	}
	for _, g := range r.serving {
		assert.Zero(t, g.Sum(t, "chainmend_bookkeeping_errors_total", nil), "instance %s", g.Name)
		assert.Zero(t, g.Sum(t, "chainmend_bad_frames_total", nil), "instance %s", g.Name)
	}
}

// checkLane asserts one lane's creates against the turns the script ran: each chained to
// the lane's previous response, but the first after each move, which is the lane's own
// transcript (its tenant's outputs and nothing else) replayed as a full create on a new
// upstream connection.
func (r *reconnectRun) checkLane(t *testing.T, tenant, lane string, cs []emulator.Create, got []string) {
	t.Helper()
	call := func(n int) string { return fmt.Sprintf("call_%s_%d", lane, n) }
	answer := func(n int) []string {
		return []string{fmt.Sprintf("fco:%s=%s ran on %s for %s", call(n), call(n), lane, tenant)}
	}
	// The script's turns in order: the items each sends and the items its answer adds.
	type turn struct{ in, out []string }
	callTurn := func(n int) turn { return turn{[]string{"msg:user"}, []string{"rs", "fc:" + call(n)}} }
	turns := []turn{callTurn(1), {answer(1), []string{"msg:assistant"}}, callTurn(2)}
	for k := 1; k <= r.moves; k++ {
		turns = append(turns, turn{answer(k + 1), []string{"msg:assistant"}})
		if k < r.moves {
			turns = append(turns, callTurn(k+2))
		} else {
			turns = append(turns, turn{[]string{"msg:user"}, []string{"msg:assistant"}})
		}
	}
	require.Len(t, turns, len(cs))

	var ids, transcript []string
	for i, c := range cs {
		ids = append(ids, c.ResponseID)
		where := fmt.Sprintf("tenant %s lane %s create %d (#%d)", tenant, lane, i, c.Seq)
		phase := 0
		if i >= 3 {
			phase = 1 + (i-3)/2
		}
		if phase > 0 {
			assert.Greater(t, c.Seq, r.boundary[phase-1], "%s ran after move %d", where, phase)
		}
		if phase < r.moves {
			assert.LessOrEqual(t, c.Seq, r.boundary[phase], "%s ran before move %d", where, phase+1)
		}
		replay := i >= 3 && (i-3)%2 == 0
		if replay {
			assert.Empty(t, c.PreviousResponseID, "%s: the turn after a move is a full replay", where)
			assert.NotEqual(t, cs[i-1].Conn, c.Conn, "%s: on a new upstream connection", where)
			assert.Equal(t, append(append([]string(nil), transcript...), turns[i].in...), e2etest.Summary(c.Frame),
				"%s: the replay is this lane's transcript and nothing else", where)
		} else {
			if i == 0 {
				assert.Empty(t, c.PreviousResponseID, where)
			} else {
				assert.Equal(t, cs[i-1].ResponseID, c.PreviousResponseID, "%s chains to the lane's last response", where)
				assert.Equal(t, cs[i-1].Conn, c.Conn, "%s: on the lane's upstream connection", where)
			}
			assert.Equal(t, turns[i].in, e2etest.Summary(c.Frame), where)
		}
		transcript = append(append(transcript, turns[i].in...), turns[i].out...)
	}
	assert.Equal(t, ids, got, "tenant %s lane %s: the client got exactly the emulator's responses, in order", tenant, lane)
}

// noSecrets checks the gateways' logs and metrics, the Redis keys and nothing else for
// either tenant's credential.
func (r *reconnectRun) noSecrets(t *testing.T, gs ...*Gateway) {
	t.Helper()
	keys, err := r.redis.Client().Keys(context.Background(), "*").Result()
	require.NoError(t, err)
	require.NotEmpty(t, keys, "the conversations are in Redis")
	texts := map[string]string{"Redis keys": strings.Join(keys, "\n")}
	for _, g := range gs {
		texts["gateway "+g.Name+" log"] = g.Logs()
		texts["gateway "+g.Name+" metrics"] = g.Metrics(t)
	}
	for where, text := range texts {
		noSecret(t, where, text)
		assert.NotContains(t, text, secondTenantKey, "the second tenant's key leaked into %s", where)
	}
}

// firedDiff returns the reasons whose count grew from before to after, by how much.
func firedDiff(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for reason, v := range after {
		if d := v - before[reason]; d > 0 {
			out[reason] = d
		}
	}
	return out
}

// runNodeScript runs testdata/sdk/<script> with node and env and returns its result line
// ({"event":"result",…}). The script is copied into a temporary directory beside a link to
// the SDK's node_modules, so that it imports the SDK as an application does. Each other event
// line ({"event":NAME}) is handed to onEvent, after which the script gets a line on stdin.
func runNodeScript(t *testing.T, node, sdkDir, script string, env []string, onEvent func(event string)) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(RepoRoot(t), "e2e", "testdata", "sdk", script))
	require.NoError(t, err)
	work := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(work, script), src, 0o644))
	modules, err := filepath.Abs(filepath.Join(sdkDir, "node_modules"))
	require.NoError(t, err)
	require.NoError(t, os.Symlink(modules, filepath.Join(work, "node_modules")))

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, script)
	cmd.Dir = work
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + work}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	require.NoError(t, cmd.Start())

	var result string
	var lines []string
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		lines = append(lines, line)
		var ev struct {
			Event string `json:"event"`
		}
		if json.Unmarshal([]byte(line), &ev) != nil || ev.Event == "" {
			continue
		}
		if ev.Event == "result" {
			result = line
			continue
		}
		onEvent(ev.Event)
		_, err := io.WriteString(stdin, "go\n")
		require.NoError(t, err)
	}
	_ = stdin.Close()
	err = cmd.Wait()
	t.Logf("node %s: %s, %v", script, time.Since(start).Round(time.Millisecond), err)
	require.NoError(t, err, "the script failed:\n--- stdout\n%s\n--- stderr\n%s", tail(strings.Join(lines, "\n"), 4000), tail(stderr.String(), 8000))
	require.NotEmpty(t, result, "the script printed no result:\n%s", strings.Join(lines, "\n"))
	out := strings.Join(lines, "\n") + stderr.String()
	noSecret(t, "the script's output", out)
	assert.NotContains(t, out, secondTenantKey, "the second tenant's key leaked into the script's output")
	return result
}

// tcpSwitch forwards each TCP connection it accepts on a loopback port to its current
// target. Flip points it at another target and cuts every connection it carries, so that
// their clients reconnect, through the switch, to the new target: a load balancer that
// moved them. It records the HTTP request head each client sent first.
type tcpSwitch struct {
	ln net.Listener
	wg sync.WaitGroup

	mu         sync.Mutex
	target     string
	closed     bool
	open       map[net.Conn]struct{}
	handshakes []http.Header
}

// startTCPSwitch listens on a free loopback port and forwards to target until the test
// ends.
func startTCPSwitch(t *testing.T, target string) *tcpSwitch {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &tcpSwitch{ln: ln, target: target, open: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() { defer s.wg.Done(); s.serve(c) }()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cut()
		s.wg.Wait()
	})
	return s
}

// Addr is the switch's host:port.
func (s *tcpSwitch) Addr() string { return s.ln.Addr().String() }

// Flip sends new connections to target and cuts the current ones.
func (s *tcpSwitch) Flip(target string) {
	s.mu.Lock()
	s.target = target
	s.mu.Unlock()
	s.cut()
}

// Handshakes returns the headers of the request each client sent first.
func (s *tcpSwitch) Handshakes() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header(nil), s.handshakes...)
}

// cut closes every connection the switch carries.
func (s *tcpSwitch) cut() {
	s.mu.Lock()
	open := s.open
	s.open = map[net.Conn]struct{}{}
	s.mu.Unlock()
	for c := range open {
		_ = c.Close()
	}
}

// serve connects client to the current target and copies both ways until either side
// ends or the switch cuts them.
func (s *tcpSwitch) serve(client net.Conn) {
	s.mu.Lock()
	target := s.target
	s.mu.Unlock()
	server, err := net.DialTimeout("tcp", target, 2*time.Second)
	if err != nil {
		_ = client.Close()
		return
	}
	// A Flip between the dial and this point would leave the pair on the old target: cut it
	// here instead, and the client reconnects to the new one.
	s.mu.Lock()
	if s.closed || s.target != target {
		s.mu.Unlock()
		_ = client.Close()
		_ = server.Close()
		return
	}
	s.open[client], s.open[server] = struct{}{}, struct{}{}
	s.mu.Unlock()
	defer func() {
		_ = client.Close()
		_ = server.Close()
	}()

	// Read the request head through a tee, then hand the server every byte read so far
	// (the head and whatever the buffered reader read past it) before copying the rest.
	var head bytes.Buffer
	req, err := http.ReadRequest(bufio.NewReader(io.TeeReader(client, &head)))
	if err != nil {
		return
	}
	s.mu.Lock()
	s.handshakes = append(s.handshakes, req.Header.Clone())
	s.mu.Unlock()
	if _, err := server.Write(head.Bytes()); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Either side ending ends the pair: a half-open pair would keep the client waiting.
		_ = dst.Close()
		_ = src.Close()
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	<-done
}
