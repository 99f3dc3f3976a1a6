package responses

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func addSeeds(f *testing.F) {
	f.Add([]byte(`{"type":"response.create","store":false,"previous_response_id":"resp_1","input":[{"type":"function_call_output","call_id":"call_A","output":"x"},{"type":"message","role":"user","content":"hi"}]}`))
	f.Add([]byte(`{"type":"response.create","input":"just text","previous_response_id":"a","previous_response_id":"b"}`))
	f.Add([]byte(`{"input":[{"type":"function_call","call_id":"c1"},{"type":"reasoning","encrypted_content":null},1,"s",[],{}]}`))
	f.Add([]byte(`{"a":"\u00e9\ud83d\ude00\"","input":[]}`))
	paths, _ := filepath.Glob(filepath.Join("..", "testdata", "codex", "*create*.json"))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var c struct {
			Frame json.RawMessage `json:"frame"`
			Body  json.RawMessage `json:"body"`
		}
		if json.Unmarshal(data, &c) == nil {
			if c.Frame != nil {
				f.Add([]byte(c.Frame))
			}
			if c.Body != nil {
				f.Add([]byte(c.Body))
			}
		}
	}
}

// FuzzParseCreate: any input is either refused with an error or read so that the unmodified
// request is exactly its input, and the standard library agrees that it is JSON.
func FuzzParseCreate(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(data)
		if err != nil {
			return
		}
		if !json.Valid(data) {
			t.Fatalf("accepted invalid JSON %q", data)
		}
		if !bytes.Equal(r.Bytes(), data) {
			t.Fatalf("unmodified request changed")
		}
		_ = r.Facts()
		_ = r.PreviousResponseID()
	})
}

// FuzzPatch: every mutation yields valid JSON that parses back, and items that were not
// touched keep their bytes.
func FuzzPatch(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(data)
		if err != nil {
			return
		}
		kept := map[string]bool{}
		for _, it := range r.Items() {
			if !it.IsOutput() {
				kept[string(it.Raw)] = true
			}
		}
		r.SetString("previous_response_id", "resp_fuzz\"\x01é")
		r.RemoveItems(func(it *Item) bool { return it.IsOutput() })
		for _, id := range r.Facts().Unanswered {
			r.InsertItems(r.CallIndex(id)+1, NewOutputItem(r.CallType(id), id, "aborted"))
		}
		r.InsertItems(r.FirstNewItem(), NewOutputItem(TypeFunctionCall, "call_\"x", "aborted\n"))
		out := r.Bytes()
		if !json.Valid(out) {
			t.Fatalf("patched output is not JSON: %q", out)
		}
		r2, err := Parse(out)
		if err != nil {
			t.Fatalf("patched output does not parse: %v", err)
		}
		if r2.PreviousResponseID() != "resp_fuzz\"\x01é" {
			t.Fatalf("previous_response_id lost")
		}
		for _, it := range r2.Items() {
			if !it.IsOutput() && !kept[string(it.Raw)] && r.HasInput() {
				t.Fatalf("item bytes changed: %q", it.Raw)
			}
		}
		r2.Delete("previous_response_id")
		if bytes.Contains(r2.Bytes(), []byte(`"previous_response_id"`)) && !bytes.Contains(data, []byte(`previous_response_id\"`)) {
			if p := r2.PreviousResponseID(); p != "" {
				t.Fatalf("drop left previous_response_id %q", p)
			}
		}
	})
}

// FuzzSSE: the SSE reader never panics, never returns an event larger than its input, and
// the raw bytes of the events it returns are a prefix-ordered cover of what it read.
func FuzzSSE(f *testing.F) {
	f.Add([]byte("event: response.created\ndata: {\"type\":\"response.created\"}\n\n"))
	f.Add([]byte(": comment\n\ndata: a\ndata: b\n\nevent: x\n"))
	f.Add([]byte("data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"output\":[]}}\r\n\r\n"))
	f.Add([]byte("\n\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rd := NewSSEReader(bytes.NewReader(data))
		total := 0
		for i := 0; i < 10000; i++ {
			ev, err := rd.Next()
			if err != nil {
				return
			}
			total += len(ev.Raw)
			if total > len(data)+1 {
				t.Fatalf("events hold %d bytes of a %d-byte stream", total, len(data))
			}
			if len(ev.Data) > len(ev.Raw) {
				t.Fatalf("data longer than the event")
			}
		}
	})
}

// FuzzEvent: the event reader never panics, and EventKind agrees with ParseEvent.
func FuzzEvent(f *testing.F) {
	f.Add([]byte(`{"type":"error","status":400,"error":{"type":"invalid_request_error","code":"previous_response_not_found","message":"Previous response with id 'resp_1' not found.","param":"previous_response_id"}}`))
	f.Add([]byte(`{"type":"response.output_item.done","output_index":0,"item":{"type":"function_call","call_id":"call_1","id":"fc_1"}}`))
	f.Add([]byte(`{"type":"response.completed","response":{"id":"resp_1","status":"completed","output":[{"type":"message"}]}}`))
	f.Add([]byte(`{"sequence_number":1,"type":"response.output_text.delta","delta":"hi"}`))
	f.Add([]byte(`{"type":"response.incomplete","stream_id":"lane_a","response":{"id":"resp_2","status":"incomplete","incomplete_details":{"reason":"steered"},"output":[]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		kind := EventKind(data)
		lane := EventLane(data)
		ev, err := ParseEvent(data)
		if err != nil {
			return
		}
		if kind != ev.Type {
			t.Fatalf("EventKind %q, ParseEvent %q", kind, ev.Type)
		}
		if lane != ev.Lane {
			t.Fatalf("EventLane %q, ParseEvent %q", lane, ev.Lane)
		}
		_ = ErrorFrame(ErrorBody{Status: 400, Message: string(data)})
	})
}
