package responses

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func bigCreate() []byte {
	var b strings.Builder
	b.WriteString(`{"type":"response.create","model":"gpt-5.5","store":false,"input":[`)
	enc := strings.Repeat("gAAAAABo", 1024)
	for i := 0; i < 13; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"type":"reasoning","id":"rs_%d","encrypted_content":"%s"},`, i, enc)
		fmt.Fprintf(&b, `{"type":"function_call","call_id":"call_%d","name":"exec","arguments":"{}"},`, i)
		fmt.Fprintf(&b, `{"type":"function_call_output","call_id":"call_%d","output":%q}`, i, strings.Repeat("line of output\n", 200))
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// BenchmarkParse reads a 170 KB create; the baseline validates the same bytes with
// encoding/json, which a proxy must do at the very least.
func BenchmarkParse(b *testing.B) {
	raw := bigCreate()
	b.Run("parse", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Parse(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline_json_valid", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		b.ReportAllocs()
		for b.Loop() {
			if !json.Valid(raw) {
				b.Fatal("invalid")
			}
		}
	})
}

// BenchmarkPatch: insert an output and drop previous_response_id on the 170 KB create.
func BenchmarkPatch(b *testing.B) {
	raw := bigCreate()
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		r, err := Parse(raw)
		if err != nil {
			b.Fatal(err)
		}
		r.InsertItems(1, NewOutputItem(TypeFunctionCall, "call_x", "aborted"))
		r.Delete("previous_response_id")
		_ = r.Bytes()
	}
}

// BenchmarkEventKind is the per-event cost of the relay's classification.
func BenchmarkEventKind(b *testing.B) {
	ev := []byte(`{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hello"}`)
	b.ReportAllocs()
	for b.Loop() {
		if EventKind(ev) != "response.output_text.delta" {
			b.Fatal("kind")
		}
	}
}

// BenchmarkSSERead reads a streamed response of 1,000 events (the HTTP relay's per-event
// parse); the baseline splits the same bytes into lines with bufio.Scanner, the least a
// line-oriented relay can do.
func BenchmarkSSERead(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\"}}\n\n")
	for i := 0; i < 998; i++ {
		fmt.Fprintf(&sb, "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"tok%d \"}\n\n", i)
	}
	sb.WriteString("event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"output\":[]}}\n\n")
	stream := sb.String()
	b.Run("sse_reader", func(b *testing.B) {
		b.SetBytes(int64(len(stream)))
		b.ReportAllocs()
		for b.Loop() {
			rd := NewSSEReader(strings.NewReader(stream))
			n := 0
			for {
				if _, err := rd.Next(); err != nil {
					break
				}
				n++
			}
			if n != 1000 {
				b.Fatal(n)
			}
		}
	})
	b.Run("baseline_line_split", func(b *testing.B) {
		b.SetBytes(int64(len(stream)))
		b.ReportAllocs()
		for b.Loop() {
			sc := bufio.NewScanner(strings.NewReader(stream))
			n := 0
			for sc.Scan() {
				n++
			}
			if n != 3000 {
				b.Fatal(n)
			}
		}
	})
}
