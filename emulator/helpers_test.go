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
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

const testTimeout = 5 * time.Second

// wsClient is a test client speaking WebSocket mode. A background reader
// queues frames, so waiting for a frame with a timeout does not close the
// socket (coder/websocket closes it when a Read's context expires).
type wsClient struct {
	t *testing.T
	c *websocket.Conn

	start  sync.Once
	mu     sync.Mutex
	frames [][]byte
	err    error
	notify chan struct{}
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

func (w *wsClient) readLoop() {
	for {
		_, data, err := w.c.Read(context.Background())
		w.mu.Lock()
		if err != nil {
			w.err = err
		} else {
			w.frames = append(w.frames, data)
		}
		w.mu.Unlock()
		select {
		case w.notify <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// next reads one frame; a read error is returned so tests can assert closes.
func (w *wsClient) next(timeout time.Duration) (event, error) {
	w.start.Do(func() {
		w.notify = make(chan struct{}, 1)
		go w.readLoop()
	})
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		if len(w.frames) > 0 {
			data := w.frames[0]
			w.frames = w.frames[1:]
			w.mu.Unlock()
			return parseEvent(w.t, data), nil
		}
		err := w.err
		w.mu.Unlock()
		if err != nil {
			return event{}, err
		}
		select {
		case <-w.notify:
		case <-deadline.C:
			return event{}, context.DeadlineExceeded
		}
	}
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
		case "response.completed", "response.failed", "response.incomplete", "response.cancelled":
			res.terminal = ev
			return res
		}
	}
}

// until reads frames up to and including the first one done accepts.
func (w *wsClient) until(done func(event) bool) []event {
	w.t.Helper()
	var out []event
	for {
		ev, err := w.next(testTimeout)
		require.NoError(w.t, err, "after %v", eventTypes(out))
		out = append(out, ev)
		if done(ev) {
			return out
		}
	}
}

// terminalOf accepts the terminal event of response id.
func terminalOf(id string) func(event) bool {
	return func(ev event) bool { return isTerminal(ev.Type) && ev.Response.ID == id }
}

func isTerminal(typ string) bool {
	switch typ {
	case "response.completed", "response.failed", "response.incomplete", "response.cancelled":
		return true
	}
	return false
}

func typeIs(typ string) func(event) bool {
	return func(ev event) bool { return ev.Type == typ }
}

func eventTypes(evs []event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Type
	}
	return out
}

// silent asserts that no frame arrives within d.
func (w *wsClient) silent(d time.Duration) {
	w.t.Helper()
	ev, err := w.next(d)
	require.Error(w.t, err, "unexpected frame %s", ev.raw)
}

func (w *wsClient) create(v any) result {
	w.t.Helper()
	w.send(v)
	return w.collect()
}

type event struct {
	Type     string  `json:"type"`
	Status   int     `json:"status"`
	Seq      *int    `json:"sequence_number"`
	StreamID *string `json:"stream_id"`
	Response struct {
		ID                string            `json:"id"`
		Status            string            `json:"status"`
		Output            []json.RawMessage `json:"output"`
		Usage             json.RawMessage   `json:"usage"`
		Prev              *string           `json:"previous_response_id"`
		IncompleteDetails *struct {
			Reason string `json:"reason"`
		} `json:"incomplete_details"`
	} `json:"response"`
	// Control replies: steer.*, inject.*.
	ResponseID string `json:"response_id"`
	Steer      struct {
		ID                 string          `json:"id"`
		PreviousResponseID string          `json:"previous_response_id"`
		Input              json.RawMessage `json:"input"`
	} `json:"steer"`
	Reason        string          `json:"reason"`
	RequiredInput json.RawMessage `json:"required_input"`
	Input         json.RawMessage `json:"input"`
	Item          json.RawMessage `json:"item"`
	Delta         string          `json:"delta"`
	Error         struct {
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
