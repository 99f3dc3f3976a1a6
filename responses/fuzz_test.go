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
