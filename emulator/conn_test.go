package emulator

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBadFrames(t *testing.T) {
	tests := []struct {
		name    string
		frame   []byte
		binary  bool
		wantErr string
		code    string
	}{
		{name: "malformed JSON", frame: []byte(`{"type":"response.create",`), wantErr: "We could not parse the JSON body", code: CodeInvalidJSON},
		{name: "non-object", frame: []byte(`[1,2]`), wantErr: "Invalid type for request body: expected an object, but got an array instead.", code: CodeInvalidType},
		{name: "unknown type", frame: []byte(`{"type":"response.cancel"}`), wantErr: "Invalid value: 'response.cancel'.", code: CodeInvalidValue},
		{name: "response.append is not supported", frame: []byte(`{"type":"response.append","input":[]}`), wantErr: "Invalid value: 'response.append'.", code: CodeInvalidValue},
		{name: "missing type", frame: []byte(`{"model":"m","input":[]}`), wantErr: "Missing required parameter: 'type'.", code: CodeMissingRequiredParameter},
		{name: "binary frame", frame: []byte(`{"type":"response.create"}`), binary: true, wantErr: "Binary frames are not supported", code: CodeInvalidValue},
	}
	e := StartTest(t)
	c := dial(t, e, nil)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			typ := websocket.MessageText
			if tc.binary {
				typ = websocket.MessageBinary
			}
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			require.NoError(t, c.c.Write(ctx, typ, tc.frame))
			ev, err := c.next(testTimeout)
			require.NoError(t, err)
			assert.Equal(t, "error", ev.Type)
			assert.Equal(t, 400, ev.Status)
			assert.Contains(t, ev.Error.Message, tc.wantErr)
			assert.Equal(t, tc.code, *ev.Error.Code)
		})
	}
	// The connection survived every bad frame, and none of them was a create.
	c.create(req(nil, user("still here"))).responseID(t)
	assert.Len(t, e.Creates(), 1)
}

func TestProcessedAckGetsNoReply(t *testing.T) {
	e := StartTest(t)
	c := dial(t, e, nil)
	id := c.create(req(nil, user("1"))).responseID(t)
	c.send(map[string]any{"type": "response.processed", "response_id": id})
	res := c.create(req(map[string]any{"previous_response_id": id}, user("2")))
	assert.Equal(t, "response.created", res.types()[0], "nothing answered the ack")
	res.responseID(t)
	assert.Equal(t, int64(1), e.Stats().Acks)
	var types []string
	for _, f := range e.Conn(1).Received() {
		types = append(types, f.Type)
	}
	assert.Equal(t, []string{"response.create", "response.processed", "response.create"}, types)
}

func TestFrameTooLarge(t *testing.T) {
	e := StartTest(t, WithMaxFrameBytes(1024))
	c := dial(t, e, nil)
	c.send(req(nil, user(strings.Repeat("x", 4096))))
	_, err := c.next(testTimeout)
	assert.Equal(t, websocket.StatusMessageTooBig, websocket.CloseStatus(err), "%v", err)

	resp, body := post(t, e, req(map[string]any{"type": nil}, user(strings.Repeat("x", 4096))), nil)
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, "%s", body)
}

func TestAPIKey(t *testing.T) {
	e := StartTest(t, WithAPIKey("sk-test"))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, e.WebSocketURL(), nil)
	require.Error(t, err)
	require.NotNil(t, resp)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	dial(t, e, http.Header{"Authorization": {"Bearer sk-test"}}).create(req(nil, user("1"))).responseID(t)
	r, body := post(t, e, req(map[string]any{"type": nil}, user("1")), nil)
	assert.Equal(t, http.StatusUnauthorized, r.StatusCode)
	assert.Contains(t, string(body), CodeInvalidAPIKey)
}

// TestRouting covers the answers that do not depend on a body: unknown
// paths, wrong methods, and WebSocket upgrades off the Responses endpoint.
func TestRouting(t *testing.T) {
	e := StartTest(t)
	tests := []struct {
		name    string
		method  string
		path    string
		upgrade bool
		status  int
		route   string
	}{
		{name: "unknown path", method: http.MethodGet, path: "/v1/nonexistent", status: http.StatusNotFound, route: RouteNotFound},
		{name: "create without upgrade", method: http.MethodGet, path: "/v1/responses", status: http.StatusMethodNotAllowed, route: RouteResponsesCreate},
		{name: "wrong method on a known path", method: http.MethodPost, path: "/v1/models", status: http.StatusMethodNotAllowed, route: RouteMethodNotAllowed},
		{name: "models", method: http.MethodGet, path: "/v1/models", status: http.StatusOK, route: RouteModelsList},
		{name: "without the v1 prefix", method: http.MethodGet, path: "/models", status: http.StatusOK, route: RouteModelsList},
		{name: "upgrade on a known path", method: http.MethodGet, path: "/v1/models", upgrade: true, status: http.StatusBadRequest},
		{name: "upgrade on an unknown path", method: http.MethodGet, path: "/v1/realtime", upgrade: true, status: http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.upgrade {
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				defer cancel()
				_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.URL(), "http")+tc.path, nil)
				require.Error(t, err)
				require.NotNil(t, resp)
				assert.Equal(t, tc.status, resp.StatusCode)
				return
			}
			r, err := http.NewRequest(tc.method, e.URL()+tc.path, nil)
			require.NoError(t, err)
			resp, err := http.DefaultClient.Do(r)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, tc.status, resp.StatusCode, "%s", body)
			assert.Equal(t, tc.route, resp.Header.Get(RouteHeader))
			if tc.status >= 400 {
				var v struct {
					Error struct {
						Type    string `json:"type"`
						Message string `json:"message"`
					} `json:"error"`
				}
				require.NoError(t, json.Unmarshal(body, &v), "%s", body)
				assert.Equal(t, TypeInvalidRequest, v.Error.Type)
				assert.NotEmpty(t, v.Error.Message)
			}
		})
	}
}

func TestRecording(t *testing.T) {
	e := StartTest(t, WithScript(Sequence(CallTurn(FunctionCallID("call_1", "exec_command", "{}")))))
	h := http.Header{"Session-Id": {"sess-1"}, "Openai-Beta": {"responses_websockets=2026-02-06"}}
	c := dial(t, e, h)
	warm := c.create(req(map[string]any{"generate": false}, user("base")))
	first := c.create(req(map[string]any{"previous_response_id": warm.responseID(t)}, user("run")))
	bad := c.create(req(nil, fout("call_zz", "x")))
	require.NotNil(t, bad.err)

	conn := e.Conn(1)
	require.NotNil(t, conn)
	assert.Equal(t, "ws", conn.Transport())
	assert.Equal(t, "sess-1", conn.Header().Get("Session-Id"))
	assert.Nil(t, e.Conn(2))
	frames := conn.Frames()
	require.NotEmpty(t, frames)
	assert.Equal(t, Received, frames[0].Dir)
	assert.Equal(t, "response.create", frames[0].Type)
	sent := conn.SentTypes()
	assert.Equal(t, "response.created", sent[0])
	assert.Equal(t, "error", sent[len(sent)-1])
	assert.Equal(t, 3, len(conn.Received()))
	assert.Equal(t, len(warm.events)+len(first.events)+1, len(conn.Sent()))

	creates := e.Creates()
	require.Len(t, creates, 3)
	assert.Equal(t, []int{1, 2, 3}, []int{creates[0].Seq, creates[1].Seq, creates[2].Seq})
	assert.False(t, creates[0].Generate)
	assert.Equal(t, OutcomeCompleted, creates[1].Outcome)
	assert.Equal(t, first.terminal.Response.ID, creates[1].ResponseID)
	assert.Equal(t, warm.terminal.Response.ID, creates[1].PreviousResponseID)
	assert.Equal(t, []string{TypeMessage, TypeMessage}, itemTypes(creates[1].Context))
	assert.Equal(t, OutcomeError, creates[2].Outcome)
	assert.Equal(t, "No tool call found for function call output with call_id call_zz.", creates[2].Error.Message)
	raw, err := creates[2].InputRaw()
	require.NoError(t, err)
	assert.JSONEq(t, `{"type":"function_call_output","call_id":"call_zz","output":"x"}`, string(raw[0]))

	info, ok := e.Response(first.terminal.Response.ID)
	require.True(t, ok)
	assert.Equal(t, []string{TypeMessage, TypeMessage, TypeReasoning, TypeFunctionCall}, itemTypes(info.Context))

	st := e.Stats()
	assert.Equal(t, int64(1), st.Connections)
	assert.Equal(t, int64(3), st.Creates)
	assert.Equal(t, int64(1), st.Warmups)
	assert.Equal(t, int64(2), st.Responses)
	assert.Equal(t, int64(1), st.Errors)
	assert.Equal(t, int64(3), st.FramesIn)
}

func TestRecordingOff(t *testing.T) {
	e := StartTest(t, WithRecording(false))
	c := dial(t, e, nil)
	c.create(req(nil, user("1"))).responseID(t)
	assert.Empty(t, e.Creates())
	assert.Nil(t, e.Conn(1))
	assert.Equal(t, int64(1), e.Stats().Responses)
}

func itemTypes(items []Item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.Type
	}
	return out
}

// TestCloseLeavesNoGoroutines opens connections in every state and checks
// that Close returns the process to its goroutine baseline.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	http.DefaultClient.CloseIdleConnections()
	before := runtime.NumGoroutine()
	e := New(WithScript(Reply("x")))
	require.NoError(t, e.Start())
	idle := dial(t, e, nil)
	idle.create(req(nil, user("1"))).responseID(t)
	e.SetCreateFault(2, CreateFault{Stall: true})
	stalled := dial(t, e, nil)
	stalled.send(req(nil, user("1")))
	require.NoError(t, e.Wait(context.Background(), func(s Stats) bool { return s.Stalls == 1 }))
	post(t, e, req(map[string]any{"type": nil, "stream": true}, user("1")), nil)
	e.Close()
	_ = idle.c.CloseNow()
	_ = stalled.c.CloseNow()
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(testTimeout)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	assert.LessOrEqual(t, runtime.NumGoroutine(), before, "goroutines leaked")
	assert.Equal(t, int64(0), e.Stats().OpenConnections)

	// A closed emulator refuses new work instead of hanging.
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/responses", nil))
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
}

func TestCompressionNegotiated(t *testing.T) {
	e := StartTest(t, WithCompression(true))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, e.WebSocketURL(), &websocket.DialOptions{CompressionMode: websocket.CompressionContextTakeover})
	require.NoError(t, err)
	defer c.CloseNow()
	assert.Contains(t, resp.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate")
	w := &wsClient{t: t, c: c}
	w.create(req(nil, user(strings.Repeat("compress me ", 1000)))).responseID(t)
}
