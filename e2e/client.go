package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// ClientTimeout bounds every read of a Client: a turn that does not end in time fails the
// test instead of hanging it.
const ClientTimeout = 15 * time.Second

// Item is a JSON object for building frames.
type Item = map[string]any

// User is a user message item.
func User(text string) Item {
	return Item{"type": "message", "role": "user", "content": []Item{{"type": "input_text", "text": text}}}
}

// FCO is a function_call_output item.
func FCO(callID, output string) Item {
	return Item{"type": "function_call_output", "call_id": callID, "output": output}
}

// Create returns a store:false response.create frame with the fields and input items;
// a field "prev" sets previous_response_id.
func Create(fields Item, items ...Item) string {
	m := Item{"type": "response.create", "model": "gpt-5", "store": false}
	for k, v := range fields {
		if k == "prev" {
			k = "previous_response_id"
		}
		m[k] = v
	}
	if items == nil {
		items = []Item{}
	}
	m["input"] = items
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// Chained returns a create chained to prev.
func Chained(prev string, items ...Item) string { return Create(Item{"prev": prev}, items...) }

// Event is one server frame as the client saw it.
type Event struct {
	Type string
	Raw  []byte
	// Lane is the stream_id of a named lane's frame ("" on the default lane).
	Lane string
	// Status is the top-level status of an error frame.
	Status int
	// Error is the error body of an error frame.
	Error *struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
		Param   string `json:"param"`
	}
	// Response is the response object of response.* events.
	Response struct {
		ID     string            `json:"id"`
		Status string            `json:"status"`
		Output []json.RawMessage `json:"output"`
	}
}

// CallIDs returns the call ids of the calls in the response's output.
func (e Event) CallIDs() []string {
	var ids []string
	for _, raw := range e.Response.Output {
		var it struct {
			Type   string `json:"type"`
			CallID string `json:"call_id"`
		}
		_ = json.Unmarshal(raw, &it)
		switch it.Type {
		case "function_call", "custom_tool_call", "local_shell_call":
			ids = append(ids, it.CallID)
		}
	}
	return ids
}

// IsTerminal reports whether a frame type ends a turn (the terminal events and error).
func IsTerminal(typ string) bool {
	switch typ {
	case "response.completed", "response.failed", "response.incomplete", "response.done", "response.cancelled", "error":
		return true
	}
	return false
}

// Client is a WebSocket client of the Responses API (the gateway or the emulator).
type Client struct {
	tb testing.TB
	// Conn is the underlying connection.
	Conn *websocket.Conn
}

// Dial opens a WebSocket to url with the handshake headers h. The connection is closed
// when the test ends.
func Dial(tb testing.TB, url string, h http.Header) *Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ClientTimeout)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		tb.Fatalf("e2e: dial %s: %v", url, err)
	}
	c.SetReadLimit(64 << 20)
	tb.Cleanup(func() { _ = c.CloseNow() })
	return &Client{tb: tb, Conn: c}
}

// Send writes one text frame.
func (c *Client) Send(frame string) {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ClientTimeout)
	defer cancel()
	if err := c.Conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		c.tb.Fatalf("e2e: send: %v", err)
	}
}

// Next reads one frame.
func (c *Client) Next() (Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ClientTimeout)
	defer cancel()
	_, data, err := c.Conn.Read(ctx)
	if err != nil {
		return Event{}, err
	}
	return ParseEvent(data)
}

// ParseEvent decodes a server frame.
func ParseEvent(data []byte) (Event, error) {
	var ev Event
	var head struct {
		Type     string          `json:"type"`
		Status   int             `json:"status"`
		Lane     string          `json:"stream_id"`
		Error    json.RawMessage `json:"error"`
		Response json.RawMessage `json:"response"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return ev, err
	}
	ev.Type, ev.Raw, ev.Status, ev.Lane = head.Type, data, head.Status, head.Lane
	if head.Type == "error" && len(head.Error) > 0 {
		_ = json.Unmarshal(head.Error, &ev.Error)
	}
	if len(head.Response) > 0 && head.Response[0] == '{' {
		_ = json.Unmarshal(head.Response, &ev.Response)
	}
	return ev, nil
}

// TurnResult is every frame of one turn, the last one terminal.
type TurnResult struct {
	Events []Event
	Last   Event
}

// Collect reads until a terminal event or an error frame.
func (c *Client) Collect() TurnResult {
	c.tb.Helper()
	var r TurnResult
	for {
		ev, err := c.Next()
		if err != nil {
			c.tb.Fatalf("e2e: read after %d frames: %v", len(r.Events), err)
		}
		r.Events = append(r.Events, ev)
		if IsTerminal(ev.Type) {
			r.Last = ev
			return r
		}
	}
}

// Turn sends a frame and collects its turn.
func (c *Client) Turn(frame string) TurnResult {
	c.tb.Helper()
	c.Send(frame)
	return c.Collect()
}

// OK runs a turn that must complete and returns its terminal event.
func (c *Client) OK(frame string) Event {
	c.tb.Helper()
	r := c.Turn(frame)
	if r.Last.Type != "response.completed" {
		c.tb.Fatalf("e2e: turn did not complete: %s", r.Last.Raw)
	}
	return r.Last
}

// Close closes the connection.
func (c *Client) Close() { _ = c.Conn.CloseNow() }

// Lanes reads frames until each lane of want has seen want[lane] terminal events (or error
// frames) and returns the last terminal frame of each lane.
func (c *Client) Lanes(want map[string]int) map[string]Event {
	c.tb.Helper()
	last := map[string]Event{}
	left := 0
	for _, n := range want {
		left += n
	}
	seen := map[string]int{}
	for left > 0 {
		e, err := c.Next()
		if err != nil {
			c.tb.Fatalf("waiting for lanes %v, seen %v: %v", want, seen, err)
		}
		if !IsTerminal(e.Type) {
			continue
		}
		if seen[e.Lane] < want[e.Lane] {
			left--
		}
		seen[e.Lane]++
		last[e.Lane] = e
	}
	return last
}
