package responses

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
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
		for i := range r.Items() {
			it := &r.Items()[i]
			if k := it.Key(); k != refKey(it) {
				t.Fatalf("Key %q, reference %q", k, refKey(it))
			}
			ref, _ := refParseItem(it.Raw)
			if got, _ := ParseItem(it.Raw); !reflect.DeepEqual(got, ref) {
				t.Fatalf("ParseItem %+v, reference %+v", got, ref)
			}
		}
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
		if r.Size() != len(out) {
			t.Fatalf("Size %d, Bytes %d", r.Size(), len(out))
		}
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
	f.Add([]byte("data: x\r\n\r\ndata: " + strings.Repeat("y", 600) + "\n\nevent: a\ndata: z"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rd := NewSSEReader(bytes.NewReader(data))
		ref := &refSSE{r: bufio.NewReaderSize(bytes.NewReader(data), sseBufferSize)}
		total := 0
		var seen []SSEEvent
		var copies [][2][]byte
		for i := 0; i < 10000; i++ {
			ev, err := rd.Next()
			want, wantErr := ref.next()
			if errString(err) != errString(wantErr) {
				t.Fatalf("event %d: error %v, reference %v", i, err, wantErr)
			}
			if err != nil {
				break
			}
			if !bytes.Equal(ev.Raw, want.Raw) || !bytes.Equal(ev.Data, want.Data) || ev.Name != want.Name || ev.Lines != want.Lines {
				t.Fatalf("event %d: %+v, reference %+v", i, ev, want)
			}
			if cap(ev.Raw) != len(ev.Raw) {
				t.Fatalf("event %d: raw has room past its end", i)
			}
			total += len(ev.Raw)
			if total > len(data)+1 {
				t.Fatalf("events hold %d bytes of a %d-byte stream", total, len(data))
			}
			if len(ev.Data) > len(ev.Raw) {
				t.Fatalf("data longer than the event")
			}
			seen = append(seen, ev)
			copies = append(copies, [2][]byte{bytes.Clone(ev.Raw), bytes.Clone(ev.Data)})
		}
		// Every event is as it was when it was returned.
		for i, ev := range seen {
			if !bytes.Equal(ev.Raw, copies[i][0]) || !bytes.Equal(ev.Data, copies[i][1]) {
				t.Fatalf("event %d changed after later reads", i)
			}
		}
	})
}

// FuzzEvent: the event readers never panic; ParseEvent reads every input as the reader it
// replaced did (refParseEvent), ParseTerminal as ParseEvent without Output, and EventKind and
// EventLane agree with ParseEvent.
func FuzzEvent(f *testing.F) {
	addEventSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		kind := EventKind(data)
		lane := EventLane(data)
		if mentionsLane(data) != bytes.Contains(data, laneKey) {
			t.Fatalf("mentionsLane %v", mentionsLane(data))
		}
		ev, err := ParseEvent(data)
		ref, refErr := refParseEvent(data)
		if errString(err) != errString(refErr) {
			t.Fatalf("ParseEvent error %v, reference %v", err, refErr)
		}
		term, termErr := ParseTerminal(data)
		if errString(termErr) != errString(err) {
			t.Fatalf("ParseTerminal error %v, ParseEvent %v", termErr, err)
		}
		if err != nil {
			return
		}
		if !reflect.DeepEqual(ev, ref) {
			t.Fatalf("ParseEvent %+v\nreference %+v", ev, ref)
		}
		ev.Output = nil
		if !reflect.DeepEqual(term, ev) {
			t.Fatalf("ParseTerminal %+v\nParseEvent %+v", term, ev)
		}
		if kind != ev.Type {
			t.Fatalf("EventKind %q, ParseEvent %q", kind, ev.Type)
		}
		if lane != ev.Lane {
			t.Fatalf("EventLane %q, ParseEvent %q", lane, ev.Lane)
		}
		if ev.Error != nil {
			eb, ok := ParseErrorBody(data, 0)
			if !ok || eb != *ev.Error {
				t.Fatalf("ParseErrorBody %+v, ParseEvent %+v", eb, *ev.Error)
			}
		}
		_ = ErrorFrame(ErrorBody{Status: 400, Message: string(data)})
	})
}

// FuzzResponseObject: ParseResponseObject reads every input as the reader it replaced did.
func FuzzResponseObject(f *testing.F) {
	f.Add([]byte(`{"id":"resp_1","status":"completed","output":[{"type":"function_call","call_id":"c","id":"fc"},{"type":"message","role":"assistant"}]}`))
	f.Add([]byte(`{"id":"resp_2","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"output":[],"error":{"code":"x"}}`))
	f.Add([]byte(` {"output":[1,"s",[],{}],"output":[{"type":"custom_tool_call","call_id":"\u0063"}]} `))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := ParseResponseObject(data)
		ref, refErr := refParseResponseObject(data)
		if errString(err) != errString(refErr) {
			t.Fatalf("error %v, reference %v", err, refErr)
		}
		if err == nil && !reflect.DeepEqual(ev, ref) {
			t.Fatalf("ParseResponseObject %+v\nreference %+v", ev, ref)
		}
	})
}

// FuzzSkipString: the word-at-a-time string scan ends (or fails) where a byte-at-a-time scan
// does.
func FuzzSkipString(f *testing.F) {
	f.Add([]byte(`"plain ascii that runs past a few words of eight bytes"`))
	f.Add([]byte(`"esc\n\"\\\u00e9 é 中文 \ud83d\ude00 tail"`))
	f.Add([]byte("\"ctl\x01\""))
	f.Add([]byte(`"unterminated \`))
	f.Add([]byte("\"\xff\xfe\x80 high bytes \x7f\x1f\""))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := append([]byte{'"'}, data...)
		end, err := skipString(s, 0)
		refEnd, refErr := refSkipString(s, 0)
		if end != refEnd || errString(err) != errString(refErr) {
			t.Fatalf("skipString %d %v, reference %d %v", end, err, refEnd, refErr)
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func addEventSeeds(f *testing.F) {
	f.Add([]byte(`{"type":"error","status":400,"error":{"type":"invalid_request_error","code":"previous_response_not_found","message":"Previous response with id 'resp_1' not found.","param":"previous_response_id"}}`))
	f.Add([]byte(`{"type":"response.output_item.done","output_index":0,"item":{"type":"function_call","call_id":"call_1","id":"fc_1"}}`))
	f.Add([]byte(`{"type":"response.completed","response":{"id":"resp_1","status":"completed","output":[{"type":"message"}]}}`))
	f.Add([]byte(`{"sequence_number":1,"type":"response.output_text.delta","delta":"hi"}`))
	f.Add([]byte(`{"type":"response.incomplete","stream_id":"lane_a","response":{"id":"resp_2","status":"incomplete","incomplete_details":{"reason":"steered"},"output":[]}}`))
	f.Add([]byte(`{"type":"response.failed","status":"x","response":{"id":"r","error":{"code":"server_error","status":500},"output":[{"type":"local_shell_call"},{"type":"custom_tool_call","call_id":"c\u0032"},"x",[{}]]},"response":{"id":"r2","output":{}}}`))
	f.Add([]byte(`{"stream_id":"l","type":"response.done","item":{"role":"user"},"error":{"message":"m"},"status":503,"response":{"output":[],"output":[{"type":"function_call","call_id":"a","id":"b"}]}}`))
	f.Add(benchItemDone(benchCall))
	f.Add(benchTerminal())
	f.Add([]byte(`{"item_id":"m_id\"","x":"stream_id\"","stream_id":"l","m_id":1}`))
}
