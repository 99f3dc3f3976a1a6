package responses

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// Realistic events of a small turn: a reasoning item with ~2 KB of encrypted content, a ~1 KB
// assistant message and a function call, as the upstream writes them (done items, then the
// terminal event that repeats them inside the whole response object).
var (
	benchReasoning = `{"id":"rs_68a1","type":"reasoning","summary":[],"encrypted_content":"` + strings.Repeat("gAAAAABoQ1Zx", 171) + `"}`
	benchMessage   = `{"id":"msg_68a1","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"` + strings.Repeat(`Here is the plan: edit the file, run the tests.\n`, 21) + `"}],"role":"assistant"}`
	benchCall      = `{"id":"fc_68a1","type":"function_call","status":"completed","arguments":"{\"command\":[\"bash\",\"-lc\",\"go test ./...\"],\"workdir\":\"/repo\"}","call_id":"call_Xy12ab","name":"shell"}`
)

func benchItemDone(item string) []byte {
	return []byte(`{"type":"response.output_item.done","output_index":1,"item":` + item + `,"sequence_number":41}`)
}

func benchTerminal() []byte {
	return []byte(`{"type":"response.completed","response":{"id":"resp_68a1f0c2d4","object":"response","created_at":1755000000,"status":"completed","background":false,"error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-5.5","output":[` +
		benchReasoning + `,` + benchMessage + `,` + benchCall +
		`],"parallel_tool_calls":true,"previous_response_id":"resp_68a1f0c2d3","prompt_cache_key":"019a-5c1e","reasoning":{"effort":"medium","summary":"auto"},"service_tier":"default","store":false,"text":{"format":{"type":"text"},"verbosity":"medium"},"tool_choice":"auto","tools":[],"truncation":"disabled","usage":{"input_tokens":1200,"input_tokens_details":{"cached_tokens":1024},"output_tokens":300,"output_tokens_details":{"reasoning_tokens":128},"total_tokens":1500},"user":null,"metadata":{}},"sequence_number":42}`)
}

// BenchmarkTerminalEvent reads the terminal event of a small turn.
func BenchmarkTerminalEvent(b *testing.B) {
	ev := benchTerminal()
	b.Run("parse_event", func(b *testing.B) {
		b.SetBytes(int64(len(ev)))
		b.ReportAllocs()
		for b.Loop() {
			pe, err := ParseEvent(ev)
			if err != nil || len(pe.Output) != 3 {
				b.Fatal(err)
			}
		}
	})
	b.Run("parse_terminal", func(b *testing.B) {
		b.SetBytes(int64(len(ev)))
		b.ReportAllocs()
		for b.Loop() {
			pe, err := ParseTerminal(ev)
			if err != nil || len(pe.OutputCalls) != 1 {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkOutputItemDone reads response.output_item.done events, as the relay does for
// each one.
func BenchmarkOutputItemDone(b *testing.B) {
	for _, c := range []struct{ name, item string }{
		{"function_call", benchCall}, {"message", benchMessage}, {"reasoning", benchReasoning},
	} {
		ev := benchItemDone(c.item)
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(ev)))
			b.ReportAllocs()
			for b.Loop() {
				pe, err := ParseEvent(ev)
				if err != nil || pe.Item == nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEventLane is the per-frame cost of routing an upstream frame to its lane.
func BenchmarkEventLane(b *testing.B) {
	def := []byte(`{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hello","sequence_number":7}`)
	named := []byte(`{"type":"response.output_text.delta","stream_id":"lane_a","item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hello","sequence_number":7}`)
	for _, c := range []struct {
		name  string
		frame []byte
		want  string
	}{{"default", def, ""}, {"named", named, "lane_a"}, {"default_terminal", benchTerminal(), ""}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if EventLane(c.frame) != c.want {
					b.Fatal("lane")
				}
			}
		})
	}
}

// BenchmarkEventKinds classifies every event of a small turn, terminal included.
func BenchmarkEventKinds(b *testing.B) {
	frames := [][]byte{
		[]byte(`{"type":"response.created","response":{"id":"resp_1","status":"in_progress"},"sequence_number":0}`),
		[]byte(`{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hello","sequence_number":7}`),
		benchItemDone(benchCall), benchTerminal(),
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, f := range frames {
			if EventKind(f) == "" {
				b.Fatal("kind")
			}
		}
	}
}

// BenchmarkItemKeys derives the keys of the 175 KB create's items, as a turn does for the
// next turn's comparison.
func BenchmarkItemKeys(b *testing.B) {
	raw := bigCreate()
	r, err := Parse(raw)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		for i := range r.Items() {
			_ = r.Items()[i].Key()
		}
		_ = r.FieldDigests()
	}
}

// BenchmarkSSEReadSmallTurn reads a small turn's stream over HTTP: created, deltas, done
// items and the terminal event.
func BenchmarkSSEReadSmallTurn(b *testing.B) {
	var sb bytes.Buffer
	sse := func(data []byte) {
		fmt.Fprintf(&sb, "event: %s\ndata: %s\n\n", EventKind(data), data)
	}
	sse([]byte(`{"type":"response.created","response":{"id":"resp_1","status":"in_progress"},"sequence_number":0}`))
	for i := 0; i < 40; i++ {
		sse(fmt.Appendf(nil, `{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"tok%d ","sequence_number":%d}`, i, i+1))
	}
	sse(benchItemDone(benchReasoning))
	sse(benchItemDone(benchMessage))
	sse(benchItemDone(benchCall))
	sse(benchTerminal())
	stream := sb.Bytes()
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		rd := NewSSEReader(bytes.NewReader(stream))
		n := 0
		for {
			if _, err := rd.Next(); err != nil {
				break
			}
			n++
		}
		if n != 45 {
			b.Fatal(n)
		}
	}
}

// BenchmarkSkipString walks the strings a turn's bytes are made of: opaque base64, text with
// an escape every line, and short keys.
func BenchmarkSkipString(b *testing.B) {
	for _, c := range []struct{ name, s string }{
		{"base64_8k", `"` + strings.Repeat("gAAAAABo", 1024) + `"`},
		{"text_lines_3k", `"` + strings.Repeat(`line of output, a tool's usual width\n`, 80) + `"`},
		{"utf8_text_3k", `"` + strings.Repeat(`résumé — 中文 ünïcode text `, 100) + `"`},
		{"key", `"previous_response_id"`},
	} {
		s := []byte(c.s)
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(s)))
			for b.Loop() {
				if end, err := skipString(s, 0); err != nil || end != len(s) {
					b.Fatal(end, err)
				}
			}
		})
	}
}
