package gateway_test

// End-to-end tests of the decision log (issue 15 item 8): a session recorded through the
// running gateway, replayed against the policies it ran under (nothing changes) and against
// edited ones (exactly the turns the edit touches change), and a log that holds none of the
// session's content.

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/engine"
	"chainmend/gateway"
	"chainmend/internal/decisionlog"
	"chainmend/internal/e2etest"
	"chainmend/internal/policyctl"
	"chainmend/responses"
)

// withTurnHook installs a turn hook on the stack's gateway.
func withTurnHook(h gateway.TurnHook) stackOpt {
	return func(o *stackOpts) { o.srvOpts = append(o.srvOpts, gateway.WithTurnHook(h)) }
}

// newLoggedStack is newStack with the decision log's hook installed.
func newLoggedStack(t *testing.T, script emulator.Script, hook gateway.TurnHook, opts ...stackOpt) *stack {
	t.Helper()
	return newStack(t, script, append(opts, withTurnHook(hook))...)
}

// openDecisionLog opens a decision log in a temporary directory and its hook.
func openDecisionLog(t *testing.T) (string, *decisionlog.Writer, *gateway.DecisionLog) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "decisions.jsonl")
	w, err := decisionlog.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close() })
	hook, err := gateway.NewDecisionLog(w)
	require.NoError(t, err)
	return path, w, hook
}

// waitTurns waits until the gateway counted n turns: it counts a turn after the hooks' End,
// so every record of those turns is queued.
func (s *stack) waitTurns(n int) {
	s.t.Helper()
	s.counterReaches("chainmend_turns_total", nil, float64(n))
}

// readRecords reads a decision log.
func readRecords(t *testing.T, path string) []*decisionlog.Record {
	t.Helper()
	var recs []*decisionlog.Record
	require.NoError(t, decisionlog.ReadFiles([]string{path}, func(_ string, _ int, r *decisionlog.Record) error {
		recs = append(recs, r)
		return nil
	}))
	return recs
}

// editedDecisionPolicies copies the default policies into a directory, with edit applied to the
// normalizer's bytes.
func editedDecisionPolicies(t *testing.T, edit func(t *testing.T, normalizer string) string) string {
	t.Helper()
	dir := t.TempDir()
	srcs, err := engine.ReadSources("../policies")
	require.NoError(t, err)
	for _, src := range srcs {
		data := string(src.Data)
		if filepath.Base(src.Name) == "10-normalizer.yaml" {
			data = edit(t, data)
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(src.Name)), []byte(data), 0o644))
	}
	return dir
}

func replayAgainst(t *testing.T, dir, path string) *policyctl.ReplayReport {
	t.Helper()
	snap, diags, err := engine.LoadDir(dir)
	require.NoError(t, err)
	require.False(t, diags.HasErrors(), diags.Error())
	rep, err := policyctl.Replay(snap, []string{path})
	require.NoError(t, err)
	return rep
}

// changedTurns returns the ids of the turns a replay names, each with its changed stages
// and what changed in them.
func changedTurns(rep *policyctl.ReplayReport) map[string][]string {
	out := map[string][]string{}
	for _, turn := range rep.Turns {
		for _, st := range turn.Stages {
			out[turn.ID] = append(out[turn.ID], st.Stage+": "+strings.Join(st.Changes, ","))
		}
	}
	return out
}

// TestE2EDecisionLogReplay: a session through the real gateway (WebSocket: calls, ESC,
// a continuation, a full create that resets the anchor, a continuation the upstream refuses
// and the recovery replays; HTTP: two full creates) is logged, one record per turn; replayed
// against the set it ran under, nothing changes; against a set whose row 5 answers
// "cancelled", exactly the ESC turn changes, in its request; without row 3, exactly the two
// full creates that reset an anchor change.
func TestE2EDecisionLogReplay(t *testing.T) {
	t.Parallel()
	path, w, hook := openDecisionLog(t)
	s := newLoggedStack(t, e2etest.CmdScript(), hook)

	c := s.dial("sess-dl")
	resp1 := startCalls(t, c, "call_A", "call_B", "call_C")
	esc := c.ok(chained(resp1, fco("call_A", "ok"), user("<turn_aborted>interrupted</turn_aborted>")))
	c.ok(chained(esc.Response.ID, user("carry on")))
	before := s.fired()
	fresh := c.ok(create(nil, user("a new topic")))
	s.requireFired(before, []string{"anchor_reset"})
	s.emu.FailNextCreate(emulator.ErrPreviousResponseNotFound(fresh.Response.ID))
	before = s.fired()
	r := c.turn(chained(fresh.Response.ID, user("and more")))
	require.Equal(t, "response.completed", r.last.Type, "%s", r.last.Raw)
	s.requireFired(before, []string{"drop_previous_response_id_full_replay"})

	// Over HTTP every request is a connection of its own: the anchor comes from the store,
	// and the second full create resets it.
	for _, want := range [][]string{nil, {"anchor_reset"}} {
		before := s.fired()
		resp, _ := s.post(create(nil, user("over http")), "sess-dl-http")
		require.Equal(t, 200, resp.StatusCode)
		s.requireFired(before, want)
	}
	const turns = 7
	s.waitTurns(turns)
	require.NoError(t, w.Close())

	recs := readRecords(t, path)
	require.Len(t, recs, turns, "one record per turn")
	ids := make([]string, len(recs))
	for i, rec := range recs {
		ids[i] = rec.ID
		assert.Equal(t, decisionlog.Version, rec.V)
		assert.NotEmpty(t, rec.PolicySet)
		assert.Equal(t, engine.StagePreSend, rec.Stages[0].Stage)
		for _, st := range rec.Stages {
			assert.Empty(t, st.Unknown, "%s %s: every input fact is known", rec.ID, st.Stage)
		}
	}
	escID, resetID, recoveredID := recs[1].ID, recs[3].ID, recs[4].ID
	httpResetID := recs[6].ID
	var stages []string
	for _, st := range recs[4].Stages {
		stages = append(stages, st.Stage+":"+st.Verdict)
	}
	assert.Equal(t, []string{"pre_send:send", "on_upstream_error:retry", "post_response:send"}, stages, "the recovered turn")
	assert.Equal(t, "sess-dl", recs[0].Session)
	assert.Equal(t, "completed", recs[1].Outcome)

	t.Run("the set it ran under changes nothing", func(t *testing.T) {
		rep := replayAgainst(t, "../policies", path)
		assert.Equal(t, turns, rep.Summary.Turns)
		assert.Equal(t, 0, rep.Summary.ChangedStages, "%v", changedTurns(rep))
		assert.Equal(t, policyctl.ExitOK, rep.Exit)
	})

	t.Run("row 5 answers cancelled: the ESC turn's request changes", func(t *testing.T) {
		dir := editedDecisionPolicies(t, func(t *testing.T, yaml string) string {
			old := "          output: '\"aborted\"'\n          placement: before_first_new_item"
			require.Equal(t, 1, strings.Count(yaml, old), "row 5's output")
			return strings.Replace(yaml, old, "          output: '\"cancelled\"'\n          placement: before_first_new_item", 1)
		})
		rep := replayAgainst(t, dir, path)
		assert.Equal(t, map[string][]string{escID: {"pre_send: request"}}, changedTurns(rep))
		req := rep.Turns[0].Stages[0].Request
		require.NotNil(t, req)
		assert.Equal(t, resp1, req.Was.PreviousResponseID)
		var made []string
		for i, it := range req.Was.Items {
			if it.Made != "" {
				made = append(made, it.CallID)
				assert.NotEqual(t, it.Made, req.Now.Items[i].Made, "the made output differs")
				assert.Equal(t, it.Key, req.Now.Items[i].Key, "in nothing but its text")
			}
		}
		assert.Equal(t, []string{"call_B", "call_C"}, made)
		assert.Equal(t, policyctl.ExitFailed, rep.Exit)

		// The command line says the same, in JSON.
		var stdout, stderr strings.Builder
		code := policyctl.Main([]string{"replay", "--decisions", path, "--policies", dir, "-o", "json"}, &stdout, &stderr)
		require.Equal(t, policyctl.ExitFailed, code, stderr.String())
		var out struct {
			Summary struct {
				Turns        int `json:"turns"`
				ChangedTurns int `json:"changed_turns"`
			} `json:"summary"`
			Turns []struct {
				ID string `json:"id"`
			} `json:"turns"`
		}
		require.NoError(t, json.Unmarshal([]byte(stdout.String()), &out))
		assert.Equal(t, turns, out.Summary.Turns)
		assert.Equal(t, 1, out.Summary.ChangedTurns)
		require.Len(t, out.Turns, 1)
		assert.Equal(t, escID, out.Turns[0].ID)
	})

	t.Run("row 3 deleted: the full creates that reset an anchor change", func(t *testing.T) {
		dir := editedDecisionPolicies(t, func(t *testing.T, yaml string) string {
			start := strings.Index(yaml, "  # Row 3.\n")
			end := strings.Index(yaml, "  # Row 4.")
			require.True(t, start > 0 && end > start)
			return yaml[:start] + yaml[end:]
		})
		rep := replayAgainst(t, dir, path)
		assert.Equal(t, map[string][]string{
			resetID:     {"pre_send: fired,effects"},
			httpResetID: {"pre_send: fired,effects"},
		}, changedTurns(rep))
		for _, turn := range rep.Turns {
			st := turn.Stages[0]
			assert.Equal(t, []string{"reset-anchor-on-full-create", "pair-input"}, st.Fired.Was)
			assert.Equal(t, []string{"pair-input"}, st.Fired.Now)
			assert.Equal(t, []string{"session.anchor", "pending"}, st.Inexact,
				"the stage cleared the anchor it began with: the gateway's memory of the lane supplied it")
		}
		var text strings.Builder
		code := policyctl.Main([]string{"replay", "--decisions", path, "--policies", dir}, &text, &text)
		assert.Equal(t, policyctl.ExitFailed, code)
		assert.Contains(t, text.String(), "2 turns would change (2 stages: verdict 0, fired 2, request 0, effects 2), 5 unchanged")
		assert.Contains(t, text.String(), resetID+"  session sess-dl")
		assert.NotContains(t, text.String(), recoveredID+" ")
	})
}

// TestE2EDecisionLogSteer: a response the server started by itself (a steer's successor) is
// logged as a turn of its own, whose only stage, post_response, began with the anchor and the
// connection's cache of the steered turn, from the gateway's memory of the lane; replayed, it
// changes nothing, and row 5 answering "cancelled" changes only the ESC turn after it.
func TestE2EDecisionLogSteer(t *testing.T) {
	t.Parallel()
	path, w, hook := openDecisionLog(t)
	s := newLoggedStack(t, steerScript(), hook)
	c := s.dial("sess-dl-steer")
	c.send(onLane("s", "", user("steer me")))
	created := c.readUntil("response.created")
	r1 := created[len(created)-1].Response.ID
	c.send(`{"type":"response.steer","stream_id":"s","previous_response_id":"` + r1 + `","input":[{"type":"message","role":"user","content":"do it differently"}]}`)
	c.readUntil("response.incomplete")
	succ := c.lanes(map[string]int{"s": 1})["s"]
	require.Equal(t, "response.completed", succ.last.Type, "%s", succ.last.Raw)
	c.send(onLane("s", succ.last.Response.ID, user("<turn_aborted>")))
	require.Equal(t, "response.completed", c.lanes(map[string]int{"s": 1})["s"].last.Type)
	s.waitTurns(3)
	require.NoError(t, w.Close())

	recs := readRecords(t, path)
	require.Len(t, recs, 3)
	started := recs[1]
	assert.True(t, started.ServerStarted)
	assert.Equal(t, "s", started.Lane)
	assert.Contains(t, started.ID, "/s#")
	require.Len(t, started.Stages, 1)
	st := started.Stages[0]
	assert.Equal(t, engine.StagePostResponse, st.Stage)
	assert.Equal(t, []string{"session.anchor", "pending", "upstream.cached"}, st.Inferred)
	assert.Equal(t, r1, st.Input.Anchor, "the steered response was the anchor")
	assert.Equal(t, r1, st.Input.Cached, "and the connection held it")

	rep := replayAgainst(t, "../policies", path)
	assert.Equal(t, 0, rep.Summary.ChangedStages, "%v", changedTurns(rep))
	dir := editedDecisionPolicies(t, func(t *testing.T, yaml string) string {
		return strings.Replace(yaml, "          output: '\"aborted\"'\n          placement: before_first_new_item",
			"          output: '\"cancelled\"'\n          placement: before_first_new_item", 1)
	})
	assert.Equal(t, map[string][]string{recs[2].ID: {"pre_send: request"}}, changedTurns(replayAgainst(t, dir, path)))
}

// contentScript answers "call …" with a reasoning item and a call whose arguments are
// distinctive, anything else with a distinctive text.
func contentScript() emulator.Script {
	return emulator.ScriptFunc(func(r *emulator.Request) emulator.Turn {
		raws, _ := r.InputRaw()
		if len(raws) > 0 && strings.Contains(string(raws[len(raws)-1]), "please call") {
			return emulator.Turn{Output: []emulator.Output{
				emulator.Reason("Think about narwhals."),
				emulator.FunctionCallID("call_secret_1", "exec", `{"cmd":"echo narwhal-args-7731"}`),
			}}
		}
		return emulator.TextTurn("koala-answer-2264")
	})
}

// TestE2EDecisionLogHoldsNoContent: the log of a session holds its facts (ids, types, call
// ids) and none of its content: no message text, instructions, tool output, call
// arguments, encrypted reasoning, model text or credential.
func TestE2EDecisionLogHoldsNoContent(t *testing.T) {
	t.Parallel()
	path, w, hook := openDecisionLog(t)
	s := newLoggedStack(t, contentScript(), hook)
	c := s.dial("sess-dl-content")

	r1 := c.turn(create(obj{"instructions": "purple-instructions-8812"}, user("zebra-text-4411 please call")))
	require.Equal(t, "response.completed", r1.last.Type)
	var reasoning obj
	for _, raw := range r1.items {
		var it obj
		require.NoError(t, json.Unmarshal(raw, &it))
		if it["type"] == "reasoning" {
			reasoning = it
		}
	}
	require.NotNil(t, reasoning)
	encrypted, _ := reasoning["encrypted_content"].(string)
	require.NotEmpty(t, encrypted, "the emulator encrypts its reasoning")

	c.ok(create(obj{"prev": r1.last.Response.ID, "instructions": "purple-instructions-8812"},
		fco("call_secret_1", "walrus-output-5593"), user("zebra-followup-3301")))
	// A full create that carries everything back, as a client without the server's state does.
	c.ok(create(obj{"instructions": "purple-instructions-8812", "metadata": obj{"note": "heron-meta-6120"}},
		user("zebra-text-4411 please call"), reasoning,
		fcall("call_secret_1", "exec", `{"cmd":"echo narwhal-args-7731"}`), fco("call_secret_1", "walrus-output-5593"),
		obj{"type": "message", "role": "assistant", "content": []obj{{"type": "output_text", "text": "koala-answer-2264"}}},
		user("zebra-last-7777")))
	s.waitTurns(3)
	require.NoError(t, w.Close())

	data, err := os.ReadFile(path)
	require.NoError(t, err)
	log := string(data)
	for _, secret := range []string{"zebra", "purple-instructions", "walrus-output", "narwhal", "koala-answer",
		"heron-meta", encrypted[:min(24, len(encrypted))], testSecret, "sk-test-secret", "Bearer", "please call"} {
		assert.NotContains(t, log, secret)
	}
	// The facts are there.
	for _, fact := range []string{`"call_id":"call_secret_1"`, `"type":"reasoning"`, `"role":"user"`, `"session":"sess-dl-content"`,
		`"name":"instructions"`, `"name":"model","value":"gpt-5"`, r1.last.Response.ID} {
		assert.Contains(t, log, fact)
	}
	assert.Len(t, readRecords(t, path), 3)
}

// TestE2EDecisionLogDropsWhenFull: a sink whose queue is full drops the record and the turn
// goes on; the drop is counted.
func TestE2EDecisionLogDropsWhenFull(t *testing.T) {
	t.Parallel()
	sink := &fullSink{}
	reg := prometheus.NewRegistry()
	hook, err := gateway.NewDecisionLog(sink, gateway.WithDecisionRegisterer(reg))
	require.NoError(t, err)
	s := newLoggedStack(t, e2etest.CmdScript(), hook)
	c := s.dial("sess-dl-drop")
	c.ok(create(nil, user("hello")))
	c.ok(create(nil, user("again")))
	s.waitTurns(2)
	assert.Equal(t, int32(2), sink.calls.Load())
	assert.Equal(t, map[string]float64{"dropped": 2}, sumBy(t, reg, "chainmend_decision_log_records_total", "result"))
}

// fullSink is a sink whose queue is always full.
type fullSink struct{ calls atomic.Int32 }

func (f *fullSink) Write(*decisionlog.Record) bool {
	f.calls.Add(1)
	return false
}

// BenchmarkDecisionLogTurn measures an ESC turn's stage evaluations (parse, pre_send, which
// repairs the request, post_response) and, apart, what the decision log's hook adds to such
// a turn: the facts of both stages (the repaired request parsed again for what it began
// with) and the record handed to the sink. The hook only reads the turn, so it runs on one
// evaluated turn over and over. The sink's disk work is not on the turn.
func BenchmarkDecisionLogTurn(b *testing.B) {
	snap, diags, err := engine.LoadDir("../policies")
	require.NoError(b, err)
	require.False(b, diags.HasErrors())
	frame := []byte(chained("resp_1", fco("call_A", "ok"), user("<turn_aborted>interrupted</turn_aborted>")))
	evaluate := func(b *testing.B) (pre, post *engine.Turn, preOut, postOut *engine.Outcome) {
		req, err := responses.Parse(frame)
		if err != nil {
			b.Fatal(err)
		}
		pre = &engine.Turn{Request: req, Mode: engine.ModeRepair, Transport: engine.TransportWebSocket, Number: 2,
			Anchor: "resp_1", Cached: "resp_1", Pending: engine.Pending{Known: true, ResponseID: "resp_1",
				Calls: []engine.PendingCall{{ID: "call_A", Kind: "function_call"}, {ID: "call_B", Kind: "function_call"}}}}
		preOut = snap.Evaluate(engine.StagePreSend, pre)
		p := *pre
		post = &p
		post.Response = &engine.Response{ID: "resp_2", Status: "completed", Event: "response.completed"}
		postOut = snap.Evaluate(engine.StagePostResponse, post)
		return pre, post, preOut, postOut
	}
	b.Run("stages", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			evaluate(b)
		}
	})
	b.Run("hook", func(b *testing.B) {
		hook, err := gateway.NewDecisionLog(discardSink{})
		require.NoError(b, err)
		info := &gateway.TurnInfo{Transport: engine.TransportWebSocket, Tenant: "t", Session: "s", Conn: "c", Number: 2, PolicySet: snap.Hash}
		pre, post, preOut, postOut := evaluate(b)
		b.ReportAllocs()
		for b.Loop() {
			ctx := hook.Begin(context.Background(), info)
			hook.Stage(ctx, info, engine.StagePreSend, pre, preOut)
			hook.Stage(ctx, info, engine.StagePostResponse, post, postOut)
			hook.End(ctx, info, "completed")
		}
	})
}

type discardSink struct{}

func (discardSink) Write(*decisionlog.Record) bool { return true }
