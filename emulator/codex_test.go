package emulator

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// capture is one recorded Codex CLI 0.169.0 request (testdata/codex).
type capture struct {
	Frame      json.RawMessage `json:"frame"`
	ResponseID string          `json:"emulator_response_id"`
}

func loadCapture(t *testing.T, name string) capture {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "codex", "codex-0.169.0-"+name+".json"))
	require.NoError(t, err)
	var c capture
	require.NoError(t, json.Unmarshal(b, &c))
	require.NotEmpty(t, c.Frame)
	return c
}

// loadHeaders returns the captured request headers minus those the HTTP
// client sets itself for the handshake or the POST.
func loadHeaders(t *testing.T, name string) http.Header {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "codex", "codex-0.169.0-"+name+".json"))
	require.NoError(t, err)
	var v struct {
		Headers map[string]string `json:"headers"`
	}
	require.NoError(t, json.Unmarshal(b, &v))
	h := http.Header{}
	for k, val := range v.Headers {
		switch http.CanonicalHeaderKey(k) {
		case "Connection", "Upgrade", "Content-Length", "Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions":
			continue
		}
		h.Set(k, val)
	}
	return h
}

// codexScript answers the way the capture's emulator did: one exec_command
// call with call id call_codex_echo_1, then the final text.
func codexScript() Script {
	return Sequence(
		Turn{Output: []Output{
			Reason("Run the command."),
			FunctionCallID("call_codex_echo_1", "exec_command", `{"cmd":"echo acceptance-ok","yield_time_ms":1000}`),
		}},
		TextTurn("acceptance-ok"),
	)
}

func TestCodexCaptureWebSocket(t *testing.T) {
	e := StartTest(t, WithScript(codexScript()), WithCompression(true))
	c := dial(t, e, loadHeaders(t, "ws-conn1-request-headers"))
	for _, name := range []string{"ws-create1-warmup", "ws-create2-user-turn", "ws-create3-tool-output"} {
		t.Run(name, func(t *testing.T) {
			capt := loadCapture(t, name)
			c.sendRaw(capt.Frame)
			res := c.collect()
			// A fresh emulator issues the same ids as the one Codex talked to,
			// so the captured previous_response_id values chain unchanged.
			assert.Equal(t, capt.ResponseID, res.responseID(t))
		})
	}
	conn := e.Conn(1)
	require.NotNil(t, conn)
	assert.Equal(t, "responses_websockets=2026-02-06", conn.Header().Get("OpenAI-Beta"))
	assert.Equal(t, "01a22114-0d89-7292-a2a2-bf495fe2b4f0", conn.Header().Get("Session-Id"))
	creates := e.Creates()
	require.Len(t, creates, 3)
	last := creates[2]
	assert.Equal(t, []string{TypeMessage, TypeMessage, TypeMessage, TypeMessage, TypeReasoning, TypeFunctionCall, TypeFunctionCallOutput},
		itemTypes(last.Context), "the effective context spans warm-up, turn, model output and tool output")
}

func TestCodexCaptureAfterClose(t *testing.T) {
	e := StartTest(t, WithScript(codexScript()))
	e.SetCreateFault(2, CreateFault{CloseAfter: true})
	c1 := dial(t, e, loadHeaders(t, "ws-after-close-conn1-request-headers"))
	for _, name := range []string{"ws-after-close-create1-warmup", "ws-after-close-create2-user-turn"} {
		capt := loadCapture(t, name)
		c1.sendRaw(capt.Frame)
		assert.Equal(t, capt.ResponseID, c1.collect().responseID(t), name)
	}
	_, err := c1.next(testTimeout)
	require.True(t, isClosed(err), "the emulator closed the socket after the tool-call response: %v", err)

	c2 := dial(t, e, loadHeaders(t, "ws-after-close-conn2-request-headers"))
	t.Run("chained continuation on the new socket fails", func(t *testing.T) {
		res := c2.create(req(map[string]any{"previous_response_id": "resp_emu0002"}, fout("call_codex_echo_1", "acceptance-ok")))
		assert.Equal(t, "Previous response with id 'resp_emu0002' not found.", res.errMessage(t))
	})
	t.Run("full create on the new socket succeeds", func(t *testing.T) {
		capt := loadCapture(t, "ws-after-close-create3-tool-output")
		assert.NotContains(t, string(capt.Frame), "previous_response_id")
		c2.sendRaw(capt.Frame)
		res := c2.collect()
		res.responseID(t)
		var msg struct {
			Content []struct {
				Text string `json:"text"`
			} `json:"content"`
		}
		require.Len(t, res.terminal.Response.Output, 1)
		require.NoError(t, json.Unmarshal(res.terminal.Response.Output[0], &msg))
		assert.Equal(t, "acceptance-ok", msg.Content[0].Text)
	})
	assert.Contains(t, e.Conn(2).Header().Get("X-Codex-Turn-Metadata"), `"request_kind":"turn"`)
}

func TestCodexCaptureHTTP(t *testing.T) {
	e := StartTest(t, WithScript(codexScript()))
	for i, name := range []string{"http-create1-user-turn", "http-create2-tool-output"} {
		t.Run(name, func(t *testing.T) {
			capt := loadCapture(t, name)
			h := loadHeaders(t, "http-conn"+string(rune('1'+i))+"-request-headers")
			resp, body := post(t, e, []byte(capt.Frame), h)
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
			events := parseSSE(t, body)
			require.NotEmpty(t, events)
			last := events[len(events)-1]
			assert.Equal(t, "response.completed", last.name)
			assert.True(t, strings.Contains(string(last.data), `"id":"`+capt.ResponseID+`"`), "response id %s", capt.ResponseID)
		})
	}
	// The HTTP captures always carry the full input, never a chain.
	for _, c := range e.Creates() {
		assert.Empty(t, c.PreviousResponseID)
		assert.Equal(t, "http", c.Transport)
	}
}
