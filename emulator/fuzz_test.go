package emulator

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"
)

// FuzzCreate feeds arbitrary frames through parsing, validation against a
// connection cache holding a response with a pending call, and generation.
// Whatever the input, nothing may panic, every error must render as a
// well-formed frame with a status, and every emitted event must be valid
// single-line JSON (SSE data lines cannot hold newlines).
func FuzzCreate(f *testing.F) {
	f.Add([]byte(`{"type":"response.create","model":"m","input":[{"type":"message","role":"user","content":"hi"}]}`))
	f.Add([]byte(`{"type":"response.create","model":"m","store":false,"previous_response_id":"resp_emu0001","input":[]}`))
	f.Add([]byte(`{"type":"response.create","model":"m","input":[{"type":"reasoning","id":"rs_x"}]}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"type":"response.create","model":"m","stream_id":"lane_a.1","input":[]}`))
	f.Add([]byte(`{"type":"response.create","model":"m","stream_id":7,"input":[]}`))
	f.Add([]byte(`{"type":"response.steer","previous_response_id":"resp_1","input":[{"role":"user","content":[{"type":"input_text","text":"x"}]}]}`))
	f.Add([]byte(`{"type":"response.inject","response_id":"resp_1","input":[{"type":"function_call_output","call_id":"c","output":"x"}]}`))

	e := New(WithScript(ToolLoop("exec_command", `{"cmd":"ls"}`)), WithRecording(false), WithTextDeltas(3))
	f.Cleanup(e.Close)
	conn := e.newConn(e.nextConnSeq(), transportWS, http.Header{})
	ctx := context.Background()

	// State the fuzzed frames can chain to: a stored response with an
	// answered call, then a cached store:false response with a pending one.
	seed := func(frame string, cached *response) *response {
		p, perr := parseCreate([]byte(frame))
		x := e.begin(conn, transportWS, []byte(frame), p, perr, &scope{cached: cached})
		if x.err != nil {
			f.Fatalf("seed rejected: %v", x.err)
		}
		r, apiErr, err := e.run(ctx, x, func(string, []byte) error { return nil }, nil)
		if apiErr != nil || err != nil {
			f.Fatalf("seed failed: %v %v", apiErr, err)
		}
		return r
	}
	seed(`{"type":"response.create","model":"m","store":true,"input":[{"type":"message","id":"msg_stored","role":"user","content":"x"}]}`, nil)
	cached := seed(`{"type":"response.create","model":"m","store":false,"input":[{"type":"message","role":"user","content":"go"}]}`, nil)

	f.Fuzz(func(t *testing.T, frame []byte) {
		// Control frames are parsed on the reader goroutine: they must never
		// panic, and a steer's answer must render as JSON.
		if sr, msg := parseSteer(frame); msg == "" {
			if steerFrame := steerFrame("resp_x", []*steer{sr}); !json.Valid(steerFrame) {
				t.Fatalf("successor frame is not JSON: %s", steerFrame)
			}
		}
		_, _ = injectInput(frame)
		p, perr := parseCreate(frame)
		if p == nil {
			if perr == nil {
				t.Fatal("no request and no error")
			}
			checkErrorFrame(t, perr)
			return
		}
		if p.wire.Type != "response.create" {
			if perr == nil {
				perr = checkTop(p, transportWS)
			}
			if perr != nil {
				checkErrorFrame(t, perr)
			}
			return
		}
		x := e.begin(conn, transportWS, frame, p, perr, &scope{cached: cached})
		if x.err != nil {
			checkErrorFrame(t, x.err)
			return
		}
		_, apiErr, err := e.run(ctx, x, func(typ string, data []byte) error {
			if !json.Valid(data) || bytes.ContainsAny(data, "\r\n") {
				t.Fatalf("event %s is not single-line JSON: %q", typ, data)
			}
			return nil
		}, nil)
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if apiErr != nil {
			checkErrorFrame(t, apiErr)
		}
	})
}

func checkErrorFrame(t *testing.T, err *APIError) {
	t.Helper()
	var v struct {
		Type   string `json:"type"`
		Status int    `json:"status"`
		Error  struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if e := json.Unmarshal(err.Frame(), &v); e != nil {
		t.Fatalf("error frame is not JSON: %v", e)
	}
	if v.Type != "error" || v.Status < 400 || v.Error.Message == "" {
		t.Fatalf("malformed error frame %s", err.Frame())
	}
	if !json.Valid(err.HTTPBody()) {
		t.Fatalf("error body is not JSON: %s", err.HTTPBody())
	}
}
