package gateway_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/gateway"
)

type client struct {
	t *testing.T
	c *websocket.Conn
}

func dialGateway(t *testing.T, url string, session string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h := http.Header{"Authorization": {"Bearer sk-test-secret"}, "Session-Id": {session}}
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	require.NoError(t, err)
	c.SetReadLimit(64 << 20)
	t.Cleanup(func() { _ = c.CloseNow() })
	return &client{t: t, c: c}
}

type ev struct {
	Type     string `json:"type"`
	Status   int    `json:"status"`
	Response struct {
		ID     string            `json:"id"`
		Output []json.RawMessage `json:"output"`
	} `json:"response"`
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Item json.RawMessage `json:"item"`
}

// turn sends a frame and reads to the terminal event or an error frame.
func (c *client) turn(frame string) (terminal ev, items []json.RawMessage) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(c.t, c.c.Write(ctx, websocket.MessageText, []byte(frame)))
	for {
		_, data, err := c.c.Read(ctx)
		require.NoError(c.t, err)
		var e ev
		require.NoError(c.t, json.Unmarshal(data, &e))
		if e.Type == "response.output_item.done" {
			items = append(items, e.Item)
		}
		switch e.Type {
		case "error", "response.completed", "response.failed", "response.incomplete":
			return e, items
		}
	}
}

func startStack(t *testing.T, script emulator.Script) (*emulator.Emulator, string) {
	t.Helper()
	emu := emulator.New(emulator.WithScript(script))
	require.NoError(t, emu.Start())
	t.Cleanup(emu.Close)
	cfg := gateway.DefaultConfig()
	cfg.Upstream = emu.URL()
	cfg.Policies = "../policies"
	srv, err := gateway.New(cfg)
	require.NoError(t, err)
	_, err = srv.LoadPolicies()
	require.NoError(t, err)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Close() })
	return emu, "ws" + hs.URL[len("http"):] + "/v1/responses"
}

func TestSmokeESC(t *testing.T) {
	emu, url := startStack(t, emulator.Sequence(
		emulator.CallTurn(emulator.FunctionCallID("call_A", "exec", `{"cmd":"ls"}`), emulator.FunctionCallID("call_B", "exec", `{"cmd":"pwd"}`)),
		emulator.TextTurn("done"),
	))
	c := dialGateway(t, url, "sess-esc")
	term, items := c.turn(`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"message","role":"user","content":"go"}]}`)
	require.Equal(t, "response.completed", term.Type, "%+v", term)
	require.Len(t, items, 3)
	// ESC: only call_A answered, no previous_response_id.
	term, _ = c.turn(`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"function_call_output","call_id":"call_A","output":"ok"},{"type":"message","role":"user","content":"next"}]}`)
	require.Equal(t, "response.completed", term.Type, "%+v", term)
	creates := emu.Creates()
	require.Len(t, creates, 2)
	var sent map[string]any
	require.NoError(t, json.Unmarshal(creates[1].Frame, &sent))
	assert.NotEmpty(t, sent["previous_response_id"])
	input := sent["input"].([]any)
	require.Len(t, input, 3)
	assert.Equal(t, "call_B", input[1].(map[string]any)["call_id"])
	assert.Equal(t, "aborted", input[1].(map[string]any)["output"])
}
