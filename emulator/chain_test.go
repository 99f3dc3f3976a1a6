package emulator

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWarmupChaining(t *testing.T) {
	e := StartTest(t, WithScript(Reply("hello")))
	c := dial(t, e, nil)
	dev := withID(map[string]any{"type": "message", "role": "developer", "content": "base prompt"}, "msg_dev")
	warm := c.create(req(map[string]any{"generate": false}, dev))
	assert.Equal(t, []string{"response.created", "response.completed"}, warm.types())
	assert.Empty(t, warm.terminal.Response.Output)
	assert.Equal(t, "completed", warm.terminal.Response.Status)
	warmID := warm.responseID(t)

	info, ok := e.Response(warmID)
	require.True(t, ok)
	assert.True(t, info.Warmup)
	assert.Equal(t, []Item{{Type: TypeMessage, ID: "msg_dev", Role: "developer"}}, info.Context, "a warm-up's context is its input")

	turn := c.create(req(map[string]any{"previous_response_id": warmID}, user("hi")))
	turn.responseID(t)
	creates := e.Creates()
	require.Len(t, creates, 2)
	assert.Equal(t, []Item{{Type: TypeMessage, ID: "msg_dev", Role: "developer"}, {Type: TypeMessage, Role: "user"}}, creates[1].Context)

	// Resending the warm-up's item on the chained create duplicates it.
	dup := dial(t, e, nil)
	w2 := dup.create(req(map[string]any{"generate": false}, dev)).responseID(t)
	res := dup.create(req(map[string]any{"previous_response_id": w2}, dev, user("hi")))
	assert.Equal(t, "Duplicate item found with id msg_dev. Remove duplicate items from your input and try again.", res.errMessage(t))
}

// TestStoreFalseChaining covers the connection-local cache: only the most
// recent response of the same connection chains, and a failed continuation
// evicts it.
func TestStoreFalseChaining(t *testing.T) {
	notFound := func(id string) string { return "Previous response with id '" + id + "' not found." }
	calls := ScriptFunc(func(r *Request) Turn {
		if r.LastInput().IsOutput() {
			return TextTurn("done")
		}
		return CallTurn(FunctionCall("exec_command", `{"cmd":"true"}`))
	})

	t.Run("latest response on the same connection", func(t *testing.T) {
		e := StartTest(t)
		c := dial(t, e, nil)
		r1 := c.create(req(nil, user("a"))).responseID(t)
		r2 := c.create(req(map[string]any{"previous_response_id": r1}, user("b"))).responseID(t)
		c.create(req(map[string]any{"previous_response_id": r2}, user("c"))).responseID(t)
	})
	t.Run("older response on the same connection", func(t *testing.T) {
		e := StartTest(t)
		c := dial(t, e, nil)
		r1 := c.create(req(nil, user("a"))).responseID(t)
		r2 := c.create(req(map[string]any{"previous_response_id": r1}, user("b"))).responseID(t)
		res := c.create(req(map[string]any{"previous_response_id": r1}, user("c")))
		assert.Equal(t, notFound(r1), res.errMessage(t))
		assert.Equal(t, CodePreviousResponseNotFound, *res.err.Error.Code)
		// The cache still holds r2: a failed chain to another id leaves it.
		c.create(req(map[string]any{"previous_response_id": r2}, user("d"))).responseID(t)
	})
	t.Run("other connection", func(t *testing.T) {
		e := StartTest(t)
		r1 := dial(t, e, nil).create(req(nil, user("a"))).responseID(t)
		res := dial(t, e, nil).create(req(map[string]any{"previous_response_id": r1}, user("b")))
		assert.Equal(t, notFound(r1), res.errMessage(t))
	})
	t.Run("after the connection was replaced", func(t *testing.T) {
		e := StartTest(t)
		c1 := dial(t, e, nil)
		r1 := c1.create(req(nil, user("a"))).responseID(t)
		require.NoError(t, c1.c.CloseNow())
		res := dial(t, e, nil).create(req(map[string]any{"previous_response_id": r1}, user("b")))
		assert.Equal(t, notFound(r1), res.errMessage(t))
	})
	t.Run("failed continuation evicts", func(t *testing.T) {
		e := StartTest(t, WithScript(calls))
		c := dial(t, e, nil)
		first := c.create(req(nil, user("run")))
		r1 := first.responseID(t)
		info, _ := e.Response(r1)
		callID := info.Items[1].CallID
		bad := c.create(req(map[string]any{"previous_response_id": r1}, user("no outputs")))
		assert.Equal(t, "No tool output found for function call "+callID+".", bad.errMessage(t))
		retry := c.create(req(map[string]any{"previous_response_id": r1}, fout(callID, "ok")))
		assert.Equal(t, notFound(r1), retry.errMessage(t), "the failed continuation evicted the cached response")
		// The full context on the same connection still works.
		full := []any{user("run")}
		for _, o := range first.terminal.Response.Output {
			full = append(full, o)
		}
		c.create(req(nil, append(full, fout(callID, "ok"))...)).responseID(t)
	})
	t.Run("failed response is not cached", func(t *testing.T) {
		e := StartTest(t, WithScript(Sequence(Turn{Output: []Output{Say("partial")}, Status: StatusFailed})))
		c := dial(t, e, nil)
		res := c.create(req(nil, user("a")))
		assert.Equal(t, "response.failed", res.terminal.Type)
		id := res.terminal.Response.ID
		again := c.create(req(map[string]any{"previous_response_id": id}, user("b")))
		assert.Equal(t, notFound(id), again.errMessage(t))
	})
	t.Run("incomplete response is cached", func(t *testing.T) {
		e := StartTest(t, WithScript(Sequence(Turn{Output: []Output{Say("trunc")}, Status: StatusIncomplete})))
		c := dial(t, e, nil)
		res := c.create(req(nil, user("a")))
		assert.Equal(t, "response.incomplete", res.terminal.Type)
		c.create(req(map[string]any{"previous_response_id": res.terminal.Response.ID}, user("b"))).responseID(t)
	})
}

func TestStoreTrueChaining(t *testing.T) {
	e := StartTest(t, WithScript(Reply("stored")))
	stored := map[string]any{"store": true}
	r1 := dial(t, e, nil).create(req(stored, withID(user("a"), "msg_a"))).responseID(t)

	t.Run("from another connection", func(t *testing.T) {
		r2 := dial(t, e, nil).create(req(map[string]any{"store": true, "previous_response_id": r1}, user("b"))).responseID(t)
		t.Run("and an older one later", func(t *testing.T) {
			c := dial(t, e, nil)
			c.create(req(map[string]any{"store": true, "previous_response_id": r2}, user("c"))).responseID(t)
			c.create(req(map[string]any{"store": true, "previous_response_id": r1}, user("d"))).responseID(t)
		})
	})
	t.Run("over HTTP", func(t *testing.T) {
		resp, body := post(t, e, req(map[string]any{"type": nil, "store": true, "stream": true, "previous_response_id": r1}, user("b")), nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	})
	t.Run("item_reference resolves", func(t *testing.T) {
		res := dial(t, e, nil).create(req(stored, map[string]any{"type": "item_reference", "id": "msg_a"}, user("again")))
		res.responseID(t)
	})
	t.Run("store false continuation of a stored response", func(t *testing.T) {
		dial(t, e, nil).create(req(map[string]any{"previous_response_id": r1}, user("b"))).responseID(t)
	})
	t.Run("capacity forgets the oldest", func(t *testing.T) {
		small := StartTest(t, WithStoreCapacity(1))
		old := dial(t, small, nil).create(req(stored, user("1"))).responseID(t)
		dial(t, small, nil).create(req(stored, user("2"))).responseID(t)
		res := dial(t, small, nil).create(req(map[string]any{"store": true, "previous_response_id": old}, user("3")))
		assert.Equal(t, "Previous response with id '"+old+"' not found.", res.errMessage(t))
	})
}

func TestHTTPHasNoConnectionCache(t *testing.T) {
	e := StartTest(t)
	resp, body := post(t, e, req(map[string]any{"type": nil, "stream": true}, user("a")), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	events := parseSSE(t, body)
	var done event
	require.NoError(t, json.Unmarshal(events[len(events)-1].data, &done))
	id := done.Response.ID
	require.NotEmpty(t, id)

	resp, body = post(t, e, req(map[string]any{"type": nil, "stream": true, "previous_response_id": id}, user("b")), nil)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	assert.JSONEq(t, `{"error":{"type":"invalid_request_error","code":"previous_response_not_found","message":"Previous response with id '`+id+`' not found.","param":"previous_response_id"}}`, string(body))

	// A store:false response made over WebSocket cannot be chained over HTTP either.
	wsID := dial(t, e, nil).create(req(nil, user("a"))).responseID(t)
	resp, _ = post(t, e, req(map[string]any{"type": nil, "previous_response_id": wsID}, user("b")), nil)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
}
