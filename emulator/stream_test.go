package emulator

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func fullTurn() Turn {
	return Turn{Output: []Output{
		Reason("Plan the call."),
		FunctionCallID("call_x", "exec_command", `{"cmd":"echo hi"}`),
		Say("abcdefghij"),
	}}
}

func TestStreamShapeWebSocket(t *testing.T) {
	e := StartTest(t, WithScript(Sequence(fullTurn())), WithTextDeltas(5), WithEncryptedContentSize(300))
	c := dial(t, e, nil)
	res := c.create(req(map[string]any{"tools": []any{map[string]any{"type": "function", "name": "exec_command"}}}, user("go")))
	require.Nil(t, res.err)
	assert.Equal(t, []string{
		"response.created",
		"response.in_progress",
		"response.output_item.added",
		"response.reasoning_summary_part.added",
		"response.reasoning_summary_text.delta",
		"response.reasoning_summary_text.done",
		"response.reasoning_summary_part.done",
		"response.output_item.done",
		"response.output_item.added",
		"response.function_call_arguments.delta",
		"response.function_call_arguments.done",
		"response.output_item.done",
		"response.output_item.added",
		"response.content_part.added",
		"response.output_text.delta",
		"response.output_text.delta",
		"response.output_text.delta",
		"response.output_text.delta",
		"response.output_text.delta",
		"response.output_text.done",
		"response.content_part.done",
		"response.output_item.done",
		"response.completed",
	}, res.types())

	var text strings.Builder
	for i, ev := range res.events {
		require.NotNil(t, ev.Seq, ev.Type)
		assert.Equal(t, i, *ev.Seq, "sequence numbers count from 0")
		if ev.Type == "response.output_text.delta" {
			text.WriteString(ev.Delta)
		}
	}
	assert.Equal(t, "abcdefghij", text.String())

	done := res.terminal.Response
	assert.Regexp(t, `^resp_emu\d{4}$`, done.ID)
	assert.Equal(t, "completed", done.Status)
	require.Len(t, done.Output, 3)
	var rs struct {
		ID               string `json:"id"`
		Type             string `json:"type"`
		EncryptedContent string `json:"encrypted_content"`
		Summary          []struct {
			Text string `json:"text"`
		} `json:"summary"`
	}
	require.NoError(t, json.Unmarshal(done.Output[0], &rs))
	assert.Regexp(t, `^rs_emu\d{4}$`, rs.ID)
	assert.Len(t, rs.EncryptedContent, 300)
	assert.True(t, strings.HasPrefix(rs.EncryptedContent, "gAAAAB"))
	assert.Equal(t, "Plan the call.", rs.Summary[0].Text)
	var fc map[string]any
	require.NoError(t, json.Unmarshal(done.Output[1], &fc))
	assert.Equal(t, map[string]any{"id": fc["id"], "type": "function_call", "status": "completed",
		"arguments": `{"cmd":"echo hi"}`, "call_id": "call_x", "name": "exec_command"}, fc)
	assert.Regexp(t, `^fc_emu\d{4}$`, fc["id"])
	var msg map[string]any
	require.NoError(t, json.Unmarshal(done.Output[2], &msg))
	assert.Regexp(t, `^msg_emu\d{4}$`, msg["id"])
	assert.Equal(t, "assistant", msg["role"])

	var usage map[string]any
	require.NoError(t, json.Unmarshal(done.Usage, &usage))
	assert.Contains(t, usage, "input_tokens")
	assert.Contains(t, usage, "output_tokens")
	assert.Contains(t, usage, "total_tokens")

	// The echoed request fields and the item ids must be unique per emulator.
	var obj map[string]json.RawMessage
	var wrapper struct {
		Response map[string]json.RawMessage `json:"response"`
	}
	require.NoError(t, json.Unmarshal(res.terminal.raw, &wrapper))
	obj = wrapper.Response
	assert.JSONEq(t, `[{"type":"function","name":"exec_command"}]`, string(obj["tools"]))
	assert.Equal(t, `"gpt-5.5"`, string(obj["model"]))
	assert.Equal(t, `false`, string(obj["store"]))

	second := c.create(req(map[string]any{"previous_response_id": done.ID}, fout("call_x", "ok")))
	second.responseID(t)
	assert.NotEqual(t, done.ID, second.terminal.Response.ID)
	assert.Equal(t, done.ID, *second.terminal.Response.Prev)
}

func TestCustomAndShellCallsStream(t *testing.T) {
	e := StartTest(t, WithScript(Sequence(Turn{Output: []Output{
		CustomToolCall("call_c", "apply_patch", "*** Begin Patch"),
		LocalShellCall("call_s", "ls", "-la"),
	}})))
	c := dial(t, e, nil)
	res := c.create(req(nil, user("go")))
	require.Nil(t, res.err)
	assert.Contains(t, res.types(), "response.custom_tool_call_input.delta")
	assert.Contains(t, res.types(), "response.custom_tool_call_input.done")
	c.create(req(map[string]any{"previous_response_id": res.terminal.Response.ID},
		map[string]any{"type": "custom_tool_call_output", "call_id": "call_c", "output": "done"},
		fout("call_s", "total 0"))).responseID(t)
}

func TestSSEShape(t *testing.T) {
	e := StartTest(t, WithScript(Sequence(fullTurn())), WithTextDeltas(3))
	resp, body := post(t, e, req(map[string]any{"type": nil, "stream": true}, user("go")), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	assert.NotContains(t, string(body), "[DONE]")
	assert.Regexp(t, regexp.MustCompile(`^event: response\.created\ndata: \{`), string(body))
	events := parseSSE(t, body)
	require.NotEmpty(t, events)
	for _, ev := range events {
		var v struct {
			Type string `json:"type"`
		}
		require.NoError(t, json.Unmarshal(ev.data, &v))
		assert.Equal(t, ev.name, v.Type, "event name matches the data type")
	}
	assert.Equal(t, "response.completed", events[len(events)-1].name)
	deltas := 0
	for _, ev := range events {
		if ev.name == "response.output_text.delta" {
			deltas++
		}
	}
	assert.Equal(t, 3, deltas)
}

func TestHTTPErrorBeforeStream(t *testing.T) {
	e := StartTest(t)
	resp, body := post(t, e, req(map[string]any{"type": nil, "stream": true}, user("go"), fcall("call_1")), nil)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	assert.JSONEq(t, `{"error":{"type":"invalid_request_error","code":null,"message":"No tool output found for function call call_1.","param":"input"}}`, string(body))

	resp, body = post(t, e, []byte(`{"model":`), nil)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Contains(t, string(body), `"code":"invalid_json"`)

	// A scripted error is also answered before the stream.
	e.SetScript(Sequence(Turn{Error: ErrServer()}))
	resp, body = post(t, e, req(map[string]any{"type": nil, "stream": true}, user("go")), nil)
	assert.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	assert.Contains(t, string(body), `"code":"server_error"`)
}

func TestHTTPNonStreaming(t *testing.T) {
	e := StartTest(t, WithScript(Reply("plain")))
	resp, body := post(t, e, req(map[string]any{"type": nil}, user("go")), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var obj struct {
		Object string            `json:"object"`
		Status string            `json:"status"`
		Output []json.RawMessage `json:"output"`
	}
	require.NoError(t, json.Unmarshal(body, &obj))
	assert.Equal(t, "response", obj.Object)
	assert.Equal(t, "completed", obj.Status)
	assert.Len(t, obj.Output, 1)
}

func TestSplitText(t *testing.T) {
	tests := []struct {
		text string
		n    int
		want []string
	}{
		{"", 4, []string{""}},
		{"abc", 1, []string{"abc"}},
		{"abc", 5, []string{"a", "b", "c"}},
		{"abcdefg", 3, []string{"abc", "de", "fg"}},
		{"héllo", 2, []string{"hél", "lo"}},
	}
	for _, tc := range tests {
		t.Run(tc.text, func(t *testing.T) {
			assert.Equal(t, tc.want, splitText(tc.text, tc.n))
		})
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", "quote\" back\\ slash", "ctl\x00\x1f\n\r\t", "bad\xffutf8", "sep\u2028\u2029", "emoji 🚀 é"} {
		want, err := json.Marshal(s)
		require.NoError(t, err)
		assert.Equal(t, string(want), string(appendJSONString(nil, s)), "%q", s)
	}
}
