package gateway_test

// End-to-end tests of lanes (stream_id) and the control frames of SPEC §10 through the
// gateway against the emulator, which enforces per-lane chaining, its limits, steering,
// injection and interrupts.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/internal/e2etest"
)

// onLane is create(fields, items…) on a lane.
func onLane(lane, prev string, items ...obj) string {
	f := obj{"stream_id": lane}
	if prev != "" {
		f["prev"] = prev
	}
	return create(f, items...)
}

// lanes reads frames until each lane of want has seen want[lane] terminal events (or error
// frames), and returns every frame by lane. Every frame of a named lane must carry its
// stream_id: a frame without one counts for the default lane "".
func (c *wsClient) lanes(want map[string]int) map[string]turnResult {
	c.t.Helper()
	got := map[string]turnResult{}
	left := 0
	for _, n := range want {
		left += n
	}
	seen := map[string]int{}
	for left > 0 {
		e, err := c.next()
		require.NoError(c.t, err, "waiting for lanes %v, seen %v", want, seen)
		r := got[e.StreamID]
		r.events = append(r.events, e)
		if e.Type == "response.output_item.done" {
			r.items = append(r.items, e.Item)
		}
		if isTerminal(e.Type) {
			r.last = e
			if seen[e.StreamID] < want[e.StreamID] {
				left--
			}
			seen[e.StreamID]++
		}
		got[e.StreamID] = r
	}
	return got
}

// createsOn returns the creates the emulator received on a lane, in order.
func (s *stack) createsOn(lane string) []emulator.Create {
	var out []emulator.Create
	for _, c := range s.creates() {
		if c.Lane == lane {
			out = append(out, c)
		}
	}
	return out
}

// laneCallIDs are the call ids of a lane's terminal event.
func laneCallIDs(r turnResult) []string { return r.last.callIDs() }

func TestE2ELanesInterleaved(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-lanes-2")
	c.send(onLane("a", "", user("call call_A1")))
	c.send(onLane("b", "", user("call call_B1")))
	r := c.lanes(map[string]int{"a": 1, "b": 1})
	require.Equal(t, "response.completed", r["a"].last.Type, "%s", r["a"].last.Raw)
	require.Equal(t, "response.completed", r["b"].last.Type, "%s", r["b"].last.Raw)
	assert.Equal(t, []string{"call_A1"}, laneCallIDs(r["a"]))
	assert.Equal(t, []string{"call_B1"}, laneCallIDs(r["b"]))
	assert.Empty(t, r[""].events, "every event of a named lane carries its stream_id")
	a1, b1 := r["a"].last.Response.ID, r["b"].last.Response.ID

	// Each lane goes on from its own response, side by side.
	c.send(onLane("a", a1, fco("call_A1", "ok"), user("go on")))
	c.send(onLane("b", b1, fco("call_B1", "ok"), user("go on")))
	r = c.lanes(map[string]int{"a": 1, "b": 1})
	require.Equal(t, "response.completed", r["a"].last.Type, "%s", r["a"].last.Raw)
	require.Equal(t, "response.completed", r["b"].last.Type, "%s", r["b"].last.Raw)
	ca, cb := s.createsOn("a"), s.createsOn("b")
	require.Len(t, ca, 2)
	require.Len(t, cb, 2)
	assert.Equal(t, a1, ca[1].PreviousResponseID)
	assert.Equal(t, b1, cb[1].PreviousResponseID)
	assert.Equal(t, 1, len(s.emu.Conns()), "both lanes share one upstream connection")
}

// TestE2ELanesNoCrossLaneAlignment: lane a waits on a call; lane b's chained turn must keep
// lane b's chain. A gateway with one anchor per connection aligns b onto a (rows 4 and 7)
// and the upstream then continues the wrong conversation, silently.
func TestE2ELanesNoCrossLaneAlignment(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-lanes-cross")
	c.send(onLane("a", "", user("call call_A1")))
	ra := c.lanes(map[string]int{"a": 1})
	c.send(onLane("b", "", user("hello")))
	rb := c.lanes(map[string]int{"b": 1})
	a1, b1 := ra["a"].last.Response.ID, rb["b"].last.Response.ID

	before := s.fired()
	c.send(onLane("b", b1, user("and then?")))
	rb = c.lanes(map[string]int{"b": 1})
	require.Equal(t, "response.completed", rb["b"].last.Type, "%s", rb["b"].last.Raw)
	s.requireFired(before, []string{"strict_incremental_ok"}, "pending_prev_align", "pending_prev_infer",
		"aborted_injected", "function_call_output_prev_align")
	cb := s.createsOn("b")
	assert.Equal(t, b1, cb[len(cb)-1].PreviousResponseID, "lane b stays on its own chain")
	assert.Equal(t, []string{"msg:user"}, summary(t, cb[len(cb)-1].Frame), "nothing of lane a is injected into lane b")

	// Lane a still answers its own call.
	c.send(onLane("a", a1, fco("call_A1", "ok")))
	ra = c.lanes(map[string]int{"a": 1})
	require.Equal(t, "response.completed", ra["a"].last.Type, "%s", ra["a"].last.Raw)
}

func TestE2ELanesSixteen(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-lanes-16")
	want := map[string]int{}
	for i := 0; i < 16; i++ {
		lane := fmt.Sprintf("lane_%02d", i)
		want[lane] = 1
		c.send(onLane(lane, "", user(fmt.Sprintf("call call_%02d", i))))
	}
	r := c.lanes(want)
	for i := 0; i < 16; i++ {
		lane := fmt.Sprintf("lane_%02d", i)
		require.Equal(t, "response.completed", r[lane].last.Type, "%s: %s", lane, r[lane].last.Raw)
		c.send(onLane(lane, r[lane].last.Response.ID, fco(fmt.Sprintf("call_%02d", i), "ok")))
	}
	r = c.lanes(want)
	for lane := range want {
		require.Equal(t, "response.completed", r[lane].last.Type, "%s: %s", lane, r[lane].last.Raw)
		cs := s.createsOn(lane)
		require.Len(t, cs, 2)
		assert.Equal(t, cs[0].ResponseID, cs[1].PreviousResponseID, "%s chains to its own response", lane)
	}
	assert.Equal(t, 1, len(s.emu.Conns()))
}

// TestE2ELanesEscOneLane: an ESC on lane a answers lane a's calls with "aborted" and leaves
// lane b's call pending for lane b.
func TestE2ELanesEscOneLane(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-lanes-esc")
	c.send(onLane("a", "", user("call call_A1 call_A2")))
	c.send(onLane("b", "", user("call call_B1")))
	r := c.lanes(map[string]int{"a": 1, "b": 1})
	a1, b1 := r["a"].last.Response.ID, r["b"].last.Response.ID

	before := s.fired()
	c.send(onLane("a", a1, user("<turn_aborted>")))
	ra := c.lanes(map[string]int{"a": 1})
	require.Equal(t, "response.completed", ra["a"].last.Type, "%s", ra["a"].last.Raw)
	s.requireFired(before, []string{"aborted_injected"})
	ca := s.createsOn("a")
	assert.Equal(t, []string{"fco:call_A1=aborted", "fco:call_A2=aborted", "msg:user"}, summary(t, ca[len(ca)-1].Frame))

	c.send(onLane("b", b1, fco("call_B1", "ok")))
	rb := c.lanes(map[string]int{"b": 1})
	require.Equal(t, "response.completed", rb["b"].last.Type, "%s", rb["b"].last.Raw)
	cb := s.createsOn("b")
	assert.Equal(t, []string{"fco:call_B1=ok"}, summary(t, cb[len(cb)-1].Frame), "lane b's call was not aborted")
}

// TestE2ELanesUpstreamDrop: the upstream connection drops between turns with two lanes; each
// lane's next chained create replays that lane's own transcript.
func TestE2ELanesUpstreamDrop(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-lanes-drop")
	c.send(onLane("a", "", user("alpha one")))
	c.send(onLane("b", "", user("beta one")))
	r := c.lanes(map[string]int{"a": 1, "b": 1})
	a1, b1 := r["a"].last.Response.ID, r["b"].last.Response.ID
	s.emu.ResetConnections()
	s.waitUpstreamClosed(1)

	before := s.fired()
	c.send(onLane("a", a1, user("alpha two")))
	c.send(onLane("b", b1, user("beta two")))
	r = c.lanes(map[string]int{"a": 1, "b": 1})
	require.Equal(t, "response.completed", r["a"].last.Type, "%s", r["a"].last.Raw)
	require.Equal(t, "response.completed", r["b"].last.Type, "%s", r["b"].last.Raw)
	assert.Equal(t, 2.0, s.firedCount(before, "fresh_connection_replay"), "each lane replayed once")
	for lane, want := range map[string][]string{"a": {"alpha one", "alpha two"}, "b": {"beta one", "beta two"}} {
		cs := s.createsOn(lane)
		last := cs[len(cs)-1]
		assert.Empty(t, last.PreviousResponseID, "lane %s replayed as a full create", lane)
		texts := userTexts(t, last.Frame)
		assert.Equal(t, want, texts, "lane %s replays its own transcript only", lane)
	}
}

// TestE2ELanesFork: a create on a new lane chained to another lane's latest response forks
// that conversation; the fork keeps its own chain from then on, and a replay of the fork
// holds the conversation it forked from.
func TestE2ELanesFork(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-lanes-fork")
	c.send(onLane("a", "", user("shared start")))
	a1 := c.lanes(map[string]int{"a": 1})["a"].last.Response.ID

	before := s.fired()
	c.send(onLane("f", a1, user("fork one")))
	rf := c.lanes(map[string]int{"f": 1})
	require.Equal(t, "response.completed", rf["f"].last.Type, "%s", rf["f"].last.Raw)
	s.requireFired(before, nil, "fresh_connection_replay", "previous_response_id_mismatch", "missing_last_turn_response_id")
	cf := s.createsOn("f")
	require.Len(t, cf, 1)
	assert.True(t, cf[0].Fork, "the upstream saw a fork")
	assert.Equal(t, a1, cf[0].PreviousResponseID)
	f1 := rf["f"].last.Response.ID

	// After a drop, the fork's replay starts with what it forked from.
	s.emu.ResetConnections()
	s.waitUpstreamClosed(1)
	c.send(onLane("f", f1, user("fork two")))
	rf = c.lanes(map[string]int{"f": 1})
	require.Equal(t, "response.completed", rf["f"].last.Type, "%s", rf["f"].last.Raw)
	cf = s.createsOn("f")
	assert.Equal(t, []string{"shared start", "fork one", "fork two"}, userTexts(t, cf[len(cf)-1].Frame))
}

// TestE2ELanesUpstreamErrorsCarryTheLane: an invalid stream_id and the 33rd named lane get
// the upstream's own error frames, with the lane on them; the gateway invents neither.
func TestE2ELanesUpstreamErrorsCarryTheLane(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-lanes-limits")
	e := c.fails(onLane("bad lane!", "", user("hi")))
	assert.Equal(t, "invalid_stream_id", e.Error.Code)
	assert.Equal(t, "bad lane!", e.StreamID)

	want := map[string]int{}
	for i := 0; i < 32; i++ {
		lane := fmt.Sprintf("l%02d", i)
		want[lane] = 1
		c.send(onLane(lane, "", user("hi")))
	}
	r := c.lanes(want)
	for lane := range want {
		require.Equal(t, "response.completed", r[lane].last.Type, "%s: %s", lane, r[lane].last.Raw)
	}
	e = c.fails(onLane("l32", "", user("one too many")))
	assert.Equal(t, "websocket_stream_limit_reached", e.Error.Code)
	assert.Equal(t, "l32", e.StreamID)
	assert.Zero(t, s.counter("chainmend_limit_rejections_total", nil), "no limit of the gateway's refused anything")
}

// TestE2ELanesManyQueued: 32 creates sent at once on 32 lanes all run (the upstream queues
// what is over its 16 in flight); the gateway's own queue never refuses them.
func TestE2ELanesManyQueued(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-lanes-32")
	want := map[string]int{}
	for i := 0; i < 32; i++ {
		lane := fmt.Sprintf("q%02d", i)
		want[lane] = 1
		c.send(onLane(lane, "", user("hi")))
	}
	r := c.lanes(want)
	for lane := range want {
		assert.Equal(t, "response.completed", r[lane].last.Type, "%s: %s", lane, r[lane].last.Raw)
	}
}

// steerScript: "steer me" streams a response that waits for a control frame; a steer's
// successor calls call_S1; anything else answers "done".
func steerScript() emulator.Script {
	return emulator.ScriptFunc(func(r *emulator.Request) emulator.Turn {
		if r.Successor {
			return emulator.CallTurn(emulator.FunctionCallID("call_S1", "exec", `{"cmd":"true"}`))
		}
		raws, _ := r.InputRaw()
		if len(raws) > 0 && strings.Contains(string(raws[len(raws)-1]), "steer me") {
			return emulator.Turn{Output: []emulator.Output{emulator.Say("working on it")}, AwaitControl: true}
		}
		if len(raws) > 0 && strings.Contains(string(raws[len(raws)-1]), "inject me") {
			return emulator.Turn{Output: []emulator.Output{emulator.FunctionCallID("call_I1", "exec", `{}`), emulator.Say("thanks")}, AwaitInject: true}
		}
		if len(raws) > 0 && strings.Contains(string(raws[len(raws)-1]), "interrupt me") {
			return emulator.Turn{Output: []emulator.Output{emulator.FunctionCallID("call_X1", "exec", `{}`), emulator.Say("more")}, AwaitControl: true}
		}
		return emulator.TextTurn("done")
	})
}

// readUntil reads frames until one of type typ, and returns them all.
func (c *wsClient) readUntil(typ string) []event {
	c.t.Helper()
	var out []event
	for {
		e, err := c.next()
		require.NoError(c.t, err, "waiting for %s", typ)
		out = append(out, e)
		if e.Type == typ {
			return out
		}
	}
}

// TestE2ESteerSuccessorThenEsc: a steered response ends incomplete and the server starts a
// successor by itself; the gateway bookkeeps it like any response, so the successor's call
// is pending and an ESC after it injects "aborted" for that call.
func TestE2ESteerSuccessorThenEsc(t *testing.T) {
	t.Parallel()
	s := newStack(t, steerScript())
	c := s.dial("sess-steer")
	c.send(onLane("s", "", user("steer me")))
	created := c.readUntil("response.created")
	r1 := created[len(created)-1].Response.ID
	require.NotEmpty(t, r1)
	c.send(fmt.Sprintf(`{"type":"response.steer","stream_id":"s","previous_response_id":%q,"input":[{"type":"message","role":"user","content":"do it differently"}]}`, r1))
	rest := c.readUntil("response.incomplete")
	types := make([]string, len(rest))
	for i, e := range rest {
		types[i] = e.Type
	}
	assert.Contains(t, types, "response.steer.accepted")
	succ := c.lanes(map[string]int{"s": 1})["s"]
	require.Equal(t, "response.completed", succ.last.Type, "%s", succ.last.Raw)
	assert.Equal(t, []string{"call_S1"}, succ.last.callIDs())
	r2 := succ.last.Response.ID
	assert.NotEqual(t, r1, r2)

	before := s.fired()
	c.send(onLane("s", r2, user("<turn_aborted>")))
	esc := c.lanes(map[string]int{"s": 1})["s"]
	require.Equal(t, "response.completed", esc.last.Type, "%s", esc.last.Raw)
	s.requireFired(before, []string{"aborted_injected"})
	cs := s.createsOn("s")
	last := cs[len(cs)-1]
	assert.Equal(t, r2, last.PreviousResponseID)
	assert.Equal(t, []string{"fco:call_S1=aborted", "msg:user"}, summary(t, last.Frame))
	assert.Positive(t, s.booked()["anchor_steered"], "the steered response was the anchor its successor continued")
}

// TestE2EInjectAnswersCalls: outputs injected into a response answer its calls: the next
// create chained to it needs no output for them, and the gateway injects none (the upstream
// would refuse a second output).
func TestE2EInjectAnswersCalls(t *testing.T) {
	t.Parallel()
	s := newStack(t, steerScript())
	h := http.Header{"Authorization": {"Bearer " + testSecret}, "Session-Id": {"sess-inject"}, "Openai-Beta": {"responses_multi_agent=v1"}}
	c := s.dialHeader(h)
	c.send(create(nil, user("inject me")))
	evs := c.readUntil("response.output_item.done")
	r1 := ""
	for _, e := range evs {
		if e.Type == "response.created" {
			r1 = e.Response.ID
		}
	}
	require.NotEmpty(t, r1)
	c.send(fmt.Sprintf(`{"type":"response.inject","response_id":%q,"input":[{"type":"function_call_output","call_id":"call_I1","output":"ok"}]}`, r1))
	r := c.collect()
	require.Equal(t, "response.completed", r.last.Type, "%s", r.last.Raw)

	before := s.fired()
	c.ok(chained(r1, user("next")))
	s.requireFired(before, nil, "aborted_injected")
	assert.Equal(t, []string{"msg:user"}, summary(t, s.lastCreate().Frame))
}

// TestE2EInterruptKeepsCallsPending: an interrupted response ends early; the calls it had
// emitted stay pending (the default reading of SPEC §10), so the client's next turn gets
// "aborted" for them.
func TestE2EInterruptKeepsCallsPending(t *testing.T) {
	t.Parallel()
	s := newStack(t, steerScript())
	c := s.dial("sess-interrupt")
	c.send(create(nil, user("interrupt me")))
	evs := c.readUntil("response.output_item.done")
	r1 := ""
	for _, e := range evs {
		if e.Type == "response.created" {
			r1 = e.Response.ID
		}
	}
	c.send(fmt.Sprintf(`{"type":"response.interrupt","response_id":%q,"mode":"discard_partial_items"}`, r1))
	r := c.collect()
	require.Equal(t, "response.incomplete", r.last.Type, "%s", r.last.Raw)

	before := s.fired()
	c.ok(chained(r1, user("<turn_aborted>")))
	s.requireFired(before, []string{"aborted_injected"})
	assert.Equal(t, []string{"fco:call_X1=aborted", "msg:user"}, summary(t, s.lastCreate().Frame))
	assert.Positive(t, s.booked()["interrupt_calls_pending"])
}

// TestE2EDuplicateItemRecovered: a client that resends its whole history while chaining
// (items with ids the chained context holds) gets "Duplicate item found" upstream; the
// recovery sends its self-contained input as a full create, once.
func TestE2EDuplicateItemRecovered(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-dup")
	dev := obj{"type": "message", "id": "msg_dev", "role": "developer", "content": []obj{{"type": "input_text", "text": "You are a test."}}}
	u1 := obj{"type": "message", "id": "msg_u1", "role": "user", "content": []obj{{"type": "input_text", "text": "one"}}}
	r := c.turn(create(nil, dev, u1))
	require.Equal(t, "response.completed", r.last.Type)
	var out []obj
	for _, raw := range r.items {
		var it obj
		require.NoError(t, json.Unmarshal(raw, &it))
		out = append(out, it)
	}
	resend := append([]obj{dev, u1}, out...)
	resend = append(resend, user("two"))

	before := s.fired()
	c.ok(chained(r.last.Response.ID, resend...))
	s.requireFired(before, []string{"duplicate_item_full_create"})
	cs := s.creates()
	assert.Contains(t, cs[len(cs)-2].Error.Message, "Duplicate item found")
	assert.Empty(t, cs[len(cs)-1].PreviousResponseID, "retried as the client's full create")
}

// TestE2EDuplicateItemReplay: when the chained turn is not self-contained, the recovery
// replays the transcript and drops the repeated items.
func TestE2EDuplicateItemReplay(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-dup-replay")
	e1 := c.ok(create(nil, user("one")))
	s.emu.FailCreate(2, &emulator.APIError{Status: http.StatusBadRequest, Type: emulator.TypeInvalidRequest, Param: "input",
		Message: "Duplicate item found with id msg_x. Remove duplicate items from your input and try again."})
	before := s.fired()
	c.ok(chained(e1.Response.ID, user("two")))
	s.requireFired(before, []string{"duplicate_item_replay"})
	assert.Equal(t, []string{"one", "two"}, userTexts(t, s.lastCreate().Frame))
}

// userTexts returns the texts of the user messages of a create, in order.
func userTexts(t *testing.T, frame []byte) []string {
	t.Helper()
	var v struct {
		Input []struct {
			Type    string          `json:"type"`
			Role    string          `json:"role"`
			Content json.RawMessage `json:"content"`
		} `json:"input"`
	}
	require.NoError(t, json.Unmarshal(frame, &v))
	var out []string
	for _, it := range v.Input {
		if it.Type != "message" || it.Role != "user" {
			continue
		}
		var parts []struct {
			Text string `json:"text"`
		}
		if json.Unmarshal(it.Content, &parts) == nil {
			for _, p := range parts {
				out = append(out, p.Text)
			}
			continue
		}
		var text string
		if json.Unmarshal(it.Content, &text) == nil {
			out = append(out, text)
		}
	}
	return out
}

// firedCount is how often a reason fired since before.
func (s *stack) firedCount(before map[string]float64, reason string) float64 {
	return s.fired()[reason] - before[reason]
}

// TestE2ELanesDropInFlight: the upstream connection drops while both lanes have a response
// in flight and nothing of either reached the client: each lane retries once, as its own
// replay, on the new connection they share.
func TestE2ELanesDropInFlight(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-lanes-inflight")
	c.send(onLane("a", "", user("alpha one")))
	c.send(onLane("b", "", user("beta one")))
	r := c.lanes(map[string]int{"a": 1, "b": 1})
	a1, b1 := r["a"].last.Response.ID, r["b"].last.Response.ID
	s.emu.SetCreateFault(3, emulator.CreateFault{Stall: true})
	s.emu.SetCreateFault(4, emulator.CreateFault{Stall: true})

	before := s.fired()
	c.send(onLane("a", a1, user("alpha two")))
	c.send(onLane("b", b1, user("beta two")))
	eventually(t, "both creates in flight upstream", func() bool { return len(s.creates()) == 4 })
	s.emu.ResetConnections()
	r = c.lanes(map[string]int{"a": 1, "b": 1})
	require.Equal(t, "response.completed", r["a"].last.Type, "%s", r["a"].last.Raw)
	require.Equal(t, "response.completed", r["b"].last.Type, "%s", r["b"].last.Raw)
	assert.Zero(t, r["a"].count("error")+r["b"].count("error"), "the recovery is invisible")
	assert.Equal(t, 2.0, s.firedCount(before, "transport_retry"), "each lane retried once")
	for lane, want := range map[string][]string{"a": {"alpha one", "alpha two"}, "b": {"beta one", "beta two"}} {
		cs := s.createsOn(lane)
		last := cs[len(cs)-1]
		assert.Empty(t, last.PreviousResponseID, "lane %s retried as its replay", lane)
		assert.Equal(t, want, userTexts(t, last.Frame), "lane %s", lane)
	}
}
