package emulator

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// onLane builds a create on lane id.
func onLane(id string, fields map[string]any, input ...any) map[string]any {
	f := map[string]any{"stream_id": id}
	for k, v := range fields {
		f[k] = v
	}
	return req(f, input...)
}

// awaitScript pauses every response before its terminal event until a
// control frame names it.
func awaitScript(turn Turn) Script {
	turn.AwaitControl = true
	return ScriptFunc(func(*Request) Turn { return turn })
}

func TestStreamIDValidation(t *testing.T) {
	long := strings.Repeat("a", 256)
	tests := []struct {
		name  string
		id    any
		valid bool
		// echo is the stream_id expected on the error frame; nil for none.
		echo *string
	}{
		{name: "letters digits and punctuation", id: "lane_A-1.b", valid: true},
		{name: "256 characters", id: long, valid: true},
		{name: "empty", id: "", echo: ptr("")},
		{name: "257 characters", id: long + "a", echo: ptr(long + "a")},
		{name: "space", id: "lane a", echo: ptr("lane a")},
		{name: "slash", id: "lane/a", echo: ptr("lane/a")},
		{name: "non-ASCII", id: "lané", echo: ptr("lané")},
		{name: "number", id: 7},
		{name: "null", id: nil},
	}
	e := StartTest(t)
	c := dial(t, e, nil)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			frame := req(nil, user("hi"))
			frame["stream_id"] = tc.id
			res := c.create(frame)
			if tc.valid {
				res.responseID(t)
				assert.Equal(t, tc.id, *res.terminal.StreamID)
				return
			}
			require.NotNil(t, res.err, "%v", res.types())
			var got map[string]any
			require.NoError(t, json.Unmarshal(res.err.raw, &got))
			want := map[string]any{
				"type":   "error",
				"status": float64(400),
				"error": map[string]any{
					"type":    "invalid_request_error",
					"code":    "invalid_stream_id",
					"param":   "stream_id",
					"message": "The 'stream_id' field must be a non-empty string with at most 256 characters and may only contain letters, numbers, underscores, hyphens, and periods.",
				},
			}
			if tc.echo != nil {
				want["stream_id"] = *tc.echo
			}
			assert.Equal(t, want, got)
		})
	}
	refused := e.Creates()[len(e.Creates())-1]
	assert.Equal(t, OutcomeError, refused.Outcome)
	assert.Equal(t, CodeInvalidStreamID, refused.Error.Code)
	assert.Equal(t, int64(2), e.Stats().Lanes, "only the valid ids opened lanes")

	t.Run("not over HTTP", func(t *testing.T) {
		resp, body := post(t, e, req(map[string]any{"type": nil, "stream_id": "lane_a"}, user("hi")), nil)
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		assert.JSONEq(t, `{"error":{"type":"invalid_request_error","code":"unknown_parameter","param":"stream_id","message":"Unknown parameter: 'stream_id'."}}`, string(body))
	})
}

func ptr[T any](v T) *T { return &v }

// TestLanesRunConcurrently holds lane a's response open and runs lane b and
// the default lane to completion meanwhile; every event of a named lane
// carries its stream_id and default-lane events carry none.
func TestLanesRunConcurrently(t *testing.T) {
	e := StartTest(t, WithScript(ScriptFunc(func(r *Request) Turn {
		return Turn{Output: []Output{Say("on " + r.Lane)}, AwaitControl: r.Lane == "a"}
	})))
	c := dial(t, e, nil)
	c.send(onLane("a", nil, user("1")))
	created := c.until(typeIs("response.created"))
	idA := created[0].Response.ID
	c.send(onLane("b", nil, user("2")))
	c.send(req(nil, user("3")))
	var ids []string
	evs := c.until(func(ev event) bool {
		if ev.Type == "response.completed" {
			ids = append(ids, ev.Response.ID)
		}
		return len(ids) == 2
	})
	for _, ev := range evs {
		assert.False(t, isTerminal(ev.Type) && ev.Response.ID == idA, "lane a stays paused: %s", ev.raw)
	}
	c.send(map[string]any{"type": "response.interrupt", "response_id": idA})
	c.until(terminalOf(idA))

	conn := e.Conn(1)
	for _, f := range conn.Sent() {
		var v struct {
			StreamID *string `json:"stream_id"`
		}
		require.NoError(t, json.Unmarshal(f.Data, &v))
		if f.Lane == "" {
			assert.Nil(t, v.StreamID, "default-lane event with stream_id: %s", f.Data)
			continue
		}
		require.NotNil(t, v.StreamID, "lane event without stream_id: %s", f.Data)
		assert.Equal(t, f.Lane, *v.StreamID)
	}
	assert.Equal(t, "response.incomplete", last(conn.SentTypesOn("a")))
	assert.Equal(t, "response.completed", last(conn.SentTypesOn("b")))
	assert.Equal(t, "response.completed", last(conn.SentTypesOn("")))
	lanes := map[string]string{}
	for _, cr := range e.Creates() {
		lanes[cr.ResponseID] = cr.Lane
	}
	assert.Equal(t, "a", lanes[idA])
	assert.ElementsMatch(t, []string{"b", ""}, []string{lanes[ids[0]], lanes[ids[1]]})
	assert.GreaterOrEqual(t, e.Stats().PeakInFlight, int64(2))
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

// TestLaneFIFO sends two creates on one lane back to back: the second waits
// for the first, whatever the other lanes do.
func TestLaneFIFO(t *testing.T) {
	e := StartTest(t, WithScript(Reply("x")))
	e.SetCreateFault(1, CreateFault{Delay: 50 * time.Millisecond, EventInterval: time.Millisecond})
	c := dial(t, e, nil)
	c.send(onLane("a", nil, user("1")))
	c.send(onLane("a", nil, user("2")))
	var marks []string
	c.until(func(ev event) bool {
		if ev.Type == "response.created" || ev.Type == "response.completed" {
			marks = append(marks, ev.Type+" "+ev.Response.ID)
		}
		return len(marks) == 4
	})
	assert.Equal(t, []string{
		"response.created resp_emu0001", "response.completed resp_emu0001",
		"response.created resp_emu0002", "response.completed resp_emu0002",
	}, marks)
}

// TestInFlightLimitQueues opens MaxInFlight+1 lanes at once: the extra
// create waits for a slot instead of being refused.
func TestInFlightLimitQueues(t *testing.T) {
	e := StartTest(t, WithScript(awaitScript(TextTurn("x"))))
	c := dial(t, e, nil)
	for i := range MaxInFlight + 1 {
		c.send(onLane(fmt.Sprintf("l%02d", i), nil, user("go")))
	}
	var ids []string
	c.until(func(ev event) bool {
		require.NotEqual(t, "error", ev.Type, "%s", ev.raw)
		if ev.Type == "response.created" {
			ids = append(ids, ev.Response.ID)
		}
		return len(ids) == MaxInFlight
	})
	// Drain the in_progress and item events of the paused responses; the
	// queued create must not start.
	for {
		ev, err := c.next(150 * time.Millisecond)
		if err != nil {
			break
		}
		require.NotEqual(t, "response.created", ev.Type, "a 17th response started: %s", ev.raw)
	}
	assert.Equal(t, int64(MaxInFlight), e.Stats().PeakInFlight)

	c.send(map[string]any{"type": "response.interrupt", "response_id": ids[0]})
	evs := c.until(typeIs("response.created"))
	assert.Equal(t, "response.incomplete", evs[0].Type, "the slot frees with the terminal event")
	assert.Equal(t, int64(MaxInFlight), e.Stats().PeakInFlight)
	assert.Equal(t, int64(MaxInFlight+1), e.Stats().Lanes)
}

func TestLaneLimit(t *testing.T) {
	e := StartTest(t)
	c := dial(t, e, nil)
	for i := range MaxLanes {
		c.create(onLane(fmt.Sprintf("l%02d", i), nil, user("go"))).responseID(t)
	}
	c.create(req(nil, user("the default lane does not count"))).responseID(t)
	res := c.create(onLane("one-too-many", nil, user("go")))
	require.NotNil(t, res.err)
	var got map[string]any
	require.NoError(t, json.Unmarshal(res.err.raw, &got))
	assert.Equal(t, map[string]any{
		"type":      "error",
		"status":    float64(400),
		"stream_id": "one-too-many",
		"error": map[string]any{
			"type":    "invalid_request_error",
			"code":    "websocket_stream_limit_reached",
			"param":   "stream_id",
			"message": fmt.Sprintf(streamLimitMessage, MaxLanes),
		},
	}, got)
	// Known lanes keep working, and a new connection has its own budget.
	c.create(onLane("l00", nil, user("again"))).responseID(t)
	dial(t, e, nil).create(onLane("one-too-many", nil, user("go"))).responseID(t)
}

// TestPerLaneCache covers the store:false cache per lane: each lane chains
// to its own latest response, a new lane may fork from another lane's
// latest, and nothing else chains.
func TestPerLaneCache(t *testing.T) {
	notFound := func(id string) string { return "Previous response with id '" + id + "' not found." }
	prev := func(id string) map[string]any { return map[string]any{"previous_response_id": id} }

	t.Run("each lane chains to its own latest", func(t *testing.T) {
		e := StartTest(t)
		c := dial(t, e, nil)
		a1 := c.create(onLane("a", nil, user("a1"))).responseID(t)
		b1 := c.create(onLane("b", nil, user("b1"))).responseID(t)
		a2 := c.create(onLane("a", prev(a1), user("a2"))).responseID(t)
		c.create(onLane("b", prev(b1), user("b2"))).responseID(t)
		c.create(onLane("a", prev(a2), user("a3"))).responseID(t)
	})
	t.Run("a used lane cannot chain to another lane", func(t *testing.T) {
		e := StartTest(t)
		c := dial(t, e, nil)
		a1 := c.create(onLane("a", nil, user("a1"))).responseID(t)
		c.create(onLane("b", nil, user("b1"))).responseID(t)
		res := c.create(onLane("b", prev(a1), user("b2")))
		assert.Equal(t, notFound(a1), res.errMessage(t))
		assert.Equal(t, "b", *res.err.StreamID, "errors carry the lane")
	})
	t.Run("fork", func(t *testing.T) {
		e := StartTest(t)
		c := dial(t, e, nil)
		a1 := c.create(onLane("a", nil, withID(user("a1"), "msg_a1"))).responseID(t)
		f1 := c.create(onLane("fork", prev(a1), user("f1"))).responseID(t)
		// Both lanes advance independently from the shared point.
		c.create(onLane("a", prev(a1), user("a2"))).responseID(t)
		c.create(onLane("fork", prev(f1), user("f2"))).responseID(t)
		cr := e.Creates()[1]
		assert.True(t, cr.Fork)
		assert.Equal(t, "a", cr.ForkLane)
		assert.Equal(t, "fork", cr.Lane)
		assert.Equal(t, []string{TypeMessage, TypeMessage, TypeMessage}, itemTypes(cr.Context))
		assert.False(t, e.Creates()[2].Fork)
	})
	t.Run("the default lane forks too", func(t *testing.T) {
		e := StartTest(t)
		c := dial(t, e, nil)
		a1 := c.create(onLane("a", nil, user("a1"))).responseID(t)
		c.create(req(prev(a1), user("d1"))).responseID(t)
		assert.True(t, e.Creates()[1].Fork)
	})
	t.Run("only the latest response forks", func(t *testing.T) {
		e := StartTest(t)
		c := dial(t, e, nil)
		a1 := c.create(onLane("a", nil, user("a1"))).responseID(t)
		c.create(onLane("a", prev(a1), user("a2"))).responseID(t)
		res := c.create(onLane("fork", prev(a1), user("f1")))
		assert.Equal(t, notFound(a1), res.errMessage(t))
	})
	t.Run("lanes do not cross connections", func(t *testing.T) {
		e := StartTest(t)
		a1 := dial(t, e, nil).create(onLane("a", nil, user("a1"))).responseID(t)
		res := dial(t, e, nil).create(onLane("a", prev(a1), user("a2")))
		assert.Equal(t, notFound(a1), res.errMessage(t))
	})
	t.Run("a failed continuation evicts only its lane", func(t *testing.T) {
		e := StartTest(t, WithScript(Sequence(CallTurn(FunctionCallID("call_a", "exec", "{}")), TextTurn("b"))))
		c := dial(t, e, nil)
		a1 := c.create(onLane("a", nil, user("a1"))).responseID(t)
		b1 := c.create(onLane("b", nil, user("b1"))).responseID(t)
		bad := c.create(onLane("a", prev(a1), user("forgot the output")))
		assert.Equal(t, "No tool output found for function call call_a.", bad.errMessage(t))
		retry := c.create(onLane("a", prev(a1), fout("call_a", "ok")))
		assert.Equal(t, notFound(a1), retry.errMessage(t))
		c.create(onLane("b", prev(b1), user("b2"))).responseID(t)
	})
	t.Run("a failed fork leaves the source lane alone", func(t *testing.T) {
		e := StartTest(t, WithScript(Sequence(CallTurn(FunctionCallID("call_a", "exec", "{}")))))
		c := dial(t, e, nil)
		a1 := c.create(onLane("a", nil, user("a1"))).responseID(t)
		bad := c.create(onLane("fork", prev(a1), user("no output")))
		require.NotNil(t, bad.err)
		c.create(onLane("a", prev(a1), fout("call_a", "ok"))).responseID(t)
	})
}

// TestDuplicateItemPerLane checks the duplicate-id rule over each lane's own
// effective context.
func TestDuplicateItemPerLane(t *testing.T) {
	const dup = "Duplicate item found with id msg_x. Remove duplicate items from your input and try again."
	tests := []struct {
		name    string
		second  func(a1, b1 string) map[string]any
		wantErr string
	}{
		{name: "resending a chained item on its lane", wantErr: dup,
			second: func(a1, _ string) map[string]any {
				return onLane("a", map[string]any{"previous_response_id": a1}, withID(user("x"), "msg_x"))
			}},
		{name: "the same id on another lane", second: func(_, b1 string) map[string]any {
			return onLane("b", map[string]any{"previous_response_id": b1}, withID(user("x"), "msg_x"))
		}},
		{name: "a fork inherits the source context", wantErr: dup,
			second: func(a1, _ string) map[string]any {
				return onLane("fork", map[string]any{"previous_response_id": a1}, withID(user("x"), "msg_x"))
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := StartTest(t)
			c := dial(t, e, nil)
			a1 := c.create(onLane("a", nil, withID(user("x"), "msg_x"))).responseID(t)
			b1 := c.create(onLane("b", nil, user("y"))).responseID(t)
			res := c.create(tc.second(a1, b1))
			if tc.wantErr == "" {
				res.responseID(t)
				return
			}
			assert.Equal(t, tc.wantErr, res.errMessage(t))
			assert.Nil(t, res.err.Error.Code)
			assert.Equal(t, "input", *res.err.Error.Param)
		})
	}
}
