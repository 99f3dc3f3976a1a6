package emulator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

const testTimeout = 5 * time.Second

// wsClient is a test client speaking WebSocket mode.
type wsClient struct {
	t *testing.T
	c *websocket.Conn
}

func dial(t *testing.T, e *Emulator, header http.Header) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, _, err := websocket.Dial(ctx, e.WebSocketURL(), &websocket.DialOptions{HTTPHeader: header})
	require.NoError(t, err)
	c.SetReadLimit(64 << 20)
	t.Cleanup(func() { _ = c.CloseNow() })
	return &wsClient{t: t, c: c}
}

func (w *wsClient) sendRaw(data []byte) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	require.NoError(w.t, w.c.Write(ctx, websocket.MessageText, data))
}

func (w *wsClient) send(v any) {
	w.t.Helper()
	b, err := json.Marshal(v)
	require.NoError(w.t, err)
	w.sendRaw(b)
}

// next reads one frame; a read error is returned so tests can assert closes.
func (w *wsClient) next(timeout time.Duration) (event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, data, err := w.c.Read(ctx)
	if err != nil {
		return event{}, err
	}
	return parseEvent(w.t, data), nil
}

// result collects the events of one create up to its terminal event or
// error frame.
type result struct {
	events   []event
	terminal event
	err      *event
}

func (r result) types() []string {
	out := make([]string, len(r.events))
	for i, ev := range r.events {
		out[i] = ev.Type
	}
	return out
}

// responseID returns the id of the answered response, failing the test on an
// error frame.
func (r result) responseID(t *testing.T) string {
	t.Helper()
	require.Nil(t, r.err, "unexpected error frame: %s", r.errRaw())
	return r.terminal.Response.ID
}

func (r result) errRaw() string {
	if r.err == nil {
		return ""
	}
	return string(r.err.raw)
}

func (r result) errMessage(t *testing.T) string {
	t.Helper()
	require.NotNil(t, r.err, "expected an error frame, got %v", r.types())
	return r.err.Error.Message
}

func (w *wsClient) collect() result {
	w.t.Helper()
	var res result
	for {
		ev, err := w.next(testTimeout)
		require.NoError(w.t, err, "after %v", res.types())
		res.events = append(res.events, ev)
		switch ev.Type {
		case "error":
			res.err = &ev
			return res
		case "response.completed", "response.failed", "response.incomplete":
			res.terminal = ev
			return res
		}
	}
}

func (w *wsClient) create(v any) result {
	w.t.Helper()
	w.send(v)
	return w.collect()
}

type event struct {
	Type     string `json:"type"`
	Status   int    `json:"status"`
	Seq      *int   `json:"sequence_number"`
	Response struct {
		ID     string            `json:"id"`
		Status string            `json:"status"`
		Output []json.RawMessage `json:"output"`
		Usage  json.RawMessage   `json:"usage"`
		Prev   *string           `json:"previous_response_id"`
	} `json:"response"`
	Item  json.RawMessage `json:"item"`
	Delta string          `json:"delta"`
	Error struct {
		Type    string  `json:"type"`
		Code    *string `json:"code"`
		Message string  `json:"message"`
		Param   *string `json:"param"`
	} `json:"error"`
	raw []byte
}

func parseEvent(t *testing.T, data []byte) event {
	t.Helper()
	var ev event
	require.NoError(t, json.Unmarshal(data, &ev), "frame %s", data)
	ev.raw = data
	return ev
}

// req builds a create frame; fields override the defaults.
func req(fields map[string]any, input ...any) map[string]any {
	m := map[string]any{
		"type":  "response.create",
		"model": "gpt-5.5",
		"store": false,
		"input": input,
	}
	if input == nil {
		m["input"] = []any{}
	}
	for k, v := range fields {
		if v == nil {
			delete(m, k)
			continue
		}
		m[k] = v
	}
	return m
}

func user(text string) map[string]any {
	return map[string]any{"type": "message", "role": "user", "content": []any{map[string]any{"type": "input_text", "text": text}}}
}

func fcall(callID string) map[string]any {
	return map[string]any{"type": "function_call", "call_id": callID, "name": "exec_command", "arguments": "{}"}
}

func fout(callID, output string) map[string]any {
	return map[string]any{"type": "function_call_output", "call_id": callID, "output": output}
}

func withID(m map[string]any, id string) map[string]any {
	c := make(map[string]any, len(m)+1)
	for k, v := range m {
		c[k] = v
	}
	c["id"] = id
	return c
}

func reasoning(id string, encrypted bool) map[string]any {
	m := map[string]any{"type": "reasoning", "summary": []any{}}
	if id != "" {
		m["id"] = id
	}
	if encrypted {
		m["encrypted_content"] = "gAAAAB-test"
	}
	return m
}

// sseEvent is one event: / data: pair.
type sseEvent struct {
	name string
	data []byte
}

func post(t *testing.T, e *Emulator, body any, header http.Header) (*http.Response, []byte) {
	t.Helper()
	b, ok := body.([]byte)
	if !ok {
		var err error
		b, err = json.Marshal(body)
		require.NoError(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, e.HTTPURL(), bytes.NewReader(b))
	require.NoError(t, err)
	for k, v := range header {
		r.Header[k] = v
	}
	r.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(r)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, data
}

func parseSSE(t *testing.T, data []byte) []sseEvent {
	t.Helper()
	var out []sseEvent
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	var cur sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.name != "" || cur.data != nil {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "event: "):
			cur.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			cur.data = []byte(strings.TrimPrefix(line, "data: "))
		default:
			t.Fatalf("unexpected SSE line %q", line)
		}
	}
	require.NoError(t, sc.Err())
	require.Empty(t, cur.name, "unterminated event")
	return out
}

func isClosed(err error) bool {
	return err != nil && (websocket.CloseStatus(err) != -1 || errors.Is(err, io.EOF) ||
		strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "closed") ||
		strings.Contains(err.Error(), "reset"))
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
