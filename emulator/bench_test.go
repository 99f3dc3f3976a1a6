package emulator

import (
	"context"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// BenchmarkCreateWebSocket measures one unchained create of a long Codex
// session (about 170 KB of input) answered with 100 text deltas, over a real
// socket.
func BenchmarkCreateWebSocket(b *testing.B) {
	e := New(WithRecording(false), WithTextDeltas(100), WithScript(Reply(strings.Repeat("token ", 200))))
	if err := e.Start(); err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, e.WebSocketURL(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(-1)
	var items []any
	for range 170 {
		items = append(items, user(strings.Repeat("x", 1000)))
	}
	frame := mustJSON(b, req(nil, items...))
	b.SetBytes(int64(len(frame)))
	b.ResetTimer()
	for range b.N {
		if err := c.Write(ctx, websocket.MessageText, frame); err != nil {
			b.Fatal(err)
		}
		for {
			_, data, err := c.Read(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if strings.HasPrefix(string(data[:min(len(data), 40)]), `{"type":"response.completed"`) {
				break
			}
			if strings.HasPrefix(string(data[:min(len(data), 40)]), `{"type":"error"`) {
				b.Fatalf("error: %s", data)
			}
		}
	}
}

// BenchmarkValidate measures parsing and validating the same create without
// sockets.
func BenchmarkValidate(b *testing.B) {
	var items []any
	for i := range 170 {
		id := "call_" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + string(rune('a'+i/26))
		items = append(items, user(strings.Repeat("x", 800)), fcall(id), fout(id, strings.Repeat("o", 200)))
	}
	frame := mustJSON(b, req(nil, items...))
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for range b.N {
		p, err := parseCreate(frame)
		if err != nil {
			b.Fatal(err)
		}
		if err := resolveInput(p, func(string) (Item, bool) { return Item{}, false }); err != nil {
			b.Fatal(err)
		}
		if err := checkContext(p.input); err != nil {
			b.Fatal(err)
		}
	}
}
