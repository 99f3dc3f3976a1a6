package emulator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// do sends one request and returns the answer with its whole body.
func do(t *testing.T, method, url string, body []byte, header http.Header) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	r, err := http.NewRequestWithContext(ctx, method, url, rd)
	require.NoError(t, err)
	for k, v := range header {
		r.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(r)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, data
}

func multipartFile(t *testing.T, name, purpose string, content []byte) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	require.NoError(t, mw.SetBoundary("emulator-test-boundary"))
	require.NoError(t, mw.WriteField("purpose", purpose))
	fw, err := mw.CreateFormFile("file", name)
	require.NoError(t, err)
	_, err = fw.Write(content)
	require.NoError(t, err)
	require.NoError(t, mw.Close())
	return buf.Bytes(), mw.FormDataContentType()
}

// TestEndpoints sends each request of the rest of the API twice: the answer
// has the expected status and shape, is the same bytes both times (so a
// direct and a proxied call can be compared), echoes custom headers, and is
// recorded.
func TestEndpoints(t *testing.T) {
	e := StartTest(t, WithChatText("hello there"))
	jsonHeader := http.Header{"Content-Type": {"application/json"}}
	_, stored := post(t, e, req(map[string]any{"type": nil, "store": true}, withID(user("first"), "msg_1"), user("second")), nil)
	var obj struct {
		ID string `json:"id"`
	}
	require.NoError(t, json.Unmarshal(stored, &obj))
	respID := obj.ID
	upload, ctype := multipartFile(t, "notes.txt", "assistants", []byte("file body"))
	resp, body := do(t, http.MethodPost, e.URL()+"/v1/files", upload, http.Header{"Content-Type": {ctype}})
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	fileID := jsonField(t, body, "id")
	assert.Regexp(t, `^file-emu[0-9a-f]{24}$`, fileID)

	type check func(t *testing.T, body []byte)
	jsonEq := func(want string) check {
		return func(t *testing.T, body []byte) { assert.JSONEq(t, want, string(body)) }
	}
	field := func(key, want string) check {
		return func(t *testing.T, body []byte) { assert.Equal(t, want, jsonField(t, body, key)) }
	}
	errCode := func(code string) check {
		return func(t *testing.T, body []byte) {
			assert.Equal(t, code, jsonField(t, jsonRaw(t, body, "error"), "code"), "%s", body)
		}
	}
	tests := []struct {
		name   string
		method string
		path   string
		body   string
		status int
		route  string
		check  check
	}{
		{name: "list models", method: http.MethodGet, path: "/v1/models", status: 200, route: RouteModelsList, check: func(t *testing.T, body []byte) {
			var v struct {
				Object string `json:"object"`
				Data   []struct {
					ID     string `json:"id"`
					Object string `json:"object"`
				} `json:"data"`
			}
			require.NoError(t, json.Unmarshal(body, &v))
			assert.Equal(t, "list", v.Object)
			require.Len(t, v.Data, len(DefaultModels))
			assert.Equal(t, "gpt-5.5", v.Data[0].ID)
			assert.Equal(t, "model", v.Data[0].Object)
		}},
		{name: "retrieve model", method: http.MethodGet, path: "/v1/models/gpt-5.5", status: 200, route: RouteModelsRetrieve, check: field("id", "gpt-5.5")},
		{name: "unknown model", method: http.MethodGet, path: "/v1/models/gpt-0", status: 404, route: RouteModelsRetrieve, check: errCode(CodeModelNotFound)},
		{name: "compact", method: http.MethodPost, path: "/v1/responses/compact", status: 200, route: RouteResponsesCompact,
			body: `{"model":"gpt-5.5","input":[{"role":"user","content":"a"},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"b"}]}]}`,
			check: func(t *testing.T, body []byte) {
				var v struct {
					Object string `json:"object"`
					Output []struct {
						Type             string `json:"type"`
						Role             string `json:"role"`
						EncryptedContent string `json:"encrypted_content"`
					} `json:"output"`
				}
				require.NoError(t, json.Unmarshal(body, &v))
				assert.Equal(t, "response.compaction", v.Object)
				require.Len(t, v.Output, 2, "the user messages, then one compaction item")
				assert.Equal(t, "user", v.Output[0].Role)
				assert.Equal(t, "compaction", v.Output[1].Type)
				assert.NotEmpty(t, v.Output[1].EncryptedContent)
			}},
		{name: "compact without model", method: http.MethodPost, path: "/v1/responses/compact", body: `{"input":[]}`, status: 400, route: RouteResponsesCompact, check: errCode(CodeMissingRequiredParameter)},
		{name: "compact with malformed JSON", method: http.MethodPost, path: "/v1/responses/compact", body: `{"model":`, status: 400, route: RouteResponsesCompact, check: errCode(CodeInvalidJSON)},
		{name: "input tokens", method: http.MethodPost, path: "/v1/responses/input_tokens", body: `{"model":"gpt-5.5","input":"count these tokens"}`,
			status: 200, route: RouteResponsesInputTokens, check: jsonEq(`{"object":"response.input_tokens","input_tokens":6}`)},
		{name: "retrieve response", method: http.MethodGet, path: "/v1/responses/" + respID, status: 200, route: RouteResponsesRetrieve,
			check: func(t *testing.T, body []byte) {
				assert.JSONEq(t, string(stored), string(body), "the object the create answered")
			}},
		{name: "unknown response", method: http.MethodGet, path: "/v1/responses/resp_nope", status: 404, route: RouteResponsesRetrieve,
			check: jsonEq(`{"error":{"type":"invalid_request_error","code":null,"message":"Response with id 'resp_nope' not found.","param":null}}`)},
		{name: "input items", method: http.MethodGet, path: "/v1/responses/" + respID + "/input_items?order=asc&limit=1", status: 200, route: RouteResponsesInputItems,
			check: jsonEq(`{"object":"list","data":[{"id":"msg_1","type":"message","role":"user"}],"first_id":"msg_1","last_id":"msg_1","has_more":true}`)},
		{name: "input items newest first", method: http.MethodGet, path: "/v1/responses/" + respID + "/input_items", status: 200, route: RouteResponsesInputItems,
			check: func(t *testing.T, body []byte) {
				assert.Equal(t, "msg_1", jsonField(t, body, "last_id"))
			}},
		{name: "cancel a foreground response", method: http.MethodPost, path: "/v1/responses/" + respID + "/cancel", status: 400, route: RouteResponsesCancel},
		{name: "chat completion", method: http.MethodPost, path: "/v1/chat/completions", body: `{"model":"gpt-5.5","messages":[{"role":"user","content":"hi"}]}`,
			status: 200, route: RouteChatCompletions, check: func(t *testing.T, body []byte) {
				var v struct {
					ID      string `json:"id"`
					Object  string `json:"object"`
					Choices []struct {
						Message struct {
							Content string `json:"content"`
						} `json:"message"`
						FinishReason string `json:"finish_reason"`
					} `json:"choices"`
				}
				require.NoError(t, json.Unmarshal(body, &v))
				assert.Equal(t, "chat.completion", v.Object)
				assert.Regexp(t, `^chatcmpl-emu`, v.ID)
				require.Len(t, v.Choices, 1)
				assert.Equal(t, "hello there", v.Choices[0].Message.Content)
				assert.Equal(t, "stop", v.Choices[0].FinishReason)
			}},
		{name: "chat completion without messages", method: http.MethodPost, path: "/v1/chat/completions", body: `{"model":"gpt-5.5"}`, status: 400, route: RouteChatCompletions, check: errCode(CodeMissingRequiredParameter)},
		{name: "embeddings", method: http.MethodPost, path: "/v1/embeddings", body: `{"model":"text-embedding-3-small","input":["a","b"]}`,
			status: 200, route: RouteEmbeddings, check: func(t *testing.T, body []byte) {
				var v struct {
					Data []struct {
						Index     int       `json:"index"`
						Embedding []float64 `json:"embedding"`
					} `json:"data"`
				}
				require.NoError(t, json.Unmarshal(body, &v))
				require.Len(t, v.Data, 2)
				assert.Len(t, v.Data[1].Embedding, embeddingDims)
				assert.Equal(t, 1, v.Data[1].Index)
				assert.NotEqual(t, v.Data[0].Embedding, v.Data[1].Embedding)
			}},
		{name: "embeddings in base64", method: http.MethodPost, path: "/v1/embeddings", body: `{"model":"text-embedding-3-small","input":"a","encoding_format":"base64"}`,
			status: 200, route: RouteEmbeddings, check: func(t *testing.T, body []byte) {
				var v struct {
					Data []struct {
						Embedding string `json:"embedding"`
					} `json:"data"`
				}
				require.NoError(t, json.Unmarshal(body, &v))
				require.Len(t, v.Data, 1)
				assert.Len(t, v.Data[0].Embedding, 44, "8 float32 in base64")
			}},
		{name: "list files", method: http.MethodGet, path: "/v1/files?purpose=assistants", status: 200, route: RouteFilesList, check: field("first_id", fileID)},
		{name: "retrieve file", method: http.MethodGet, path: "/v1/files/" + fileID, status: 200, route: RouteFilesRetrieve, check: field("filename", "notes.txt")},
		{name: "file content", method: http.MethodGet, path: "/v1/files/" + fileID + "/content", status: 200, route: RouteFilesContent,
			check: func(t *testing.T, body []byte) { assert.Equal(t, "file body", string(body)) }},
		{name: "unknown file", method: http.MethodGet, path: "/v1/files/file-nope", status: 404, route: RouteFilesRetrieve},
		{name: "unknown path", method: http.MethodGet, path: "/v1/assistants?limit=2", status: 404, route: RouteNotFound,
			check: jsonEq(`{"error":{"type":"invalid_request_error","code":null,"message":"Invalid URL (GET /v1/assistants)","param":null}}`)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var reqBody []byte
			if tc.body != "" {
				reqBody = []byte(tc.body)
			}
			h := http.Header{"X-Trace-Id": {"trace-1"}, "X-Forwarded-For": {"10.0.0.1"}}
			for k, v := range jsonHeader {
				h[k] = v
			}
			resp, body := do(t, tc.method, e.URL()+tc.path, reqBody, h)
			assert.Equal(t, tc.status, resp.StatusCode, "%s", body)
			assert.Equal(t, tc.route, resp.Header.Get(RouteHeader))
			assert.Equal(t, "trace-1", resp.Header.Get(EchoHeaderPrefix+"X-Trace-Id"))
			assert.Empty(t, resp.Header.Get(EchoHeaderPrefix+"X-Forwarded-For"), "what a proxy adds is not echoed")
			if tc.route != RouteFilesContent {
				assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			}
			if tc.check != nil {
				tc.check(t, body)
			}
			again, body2 := do(t, tc.method, e.URL()+tc.path, reqBody, h)
			assert.Equal(t, string(body), string(body2), "the same request gets the same bytes")
			again.Header.Del("Date")
			resp.Header.Del("Date")
			assert.Equal(t, resp.Header, again.Header)

			recs := e.HTTPRequests()
			select {
			case <-recs[len(recs)-1].Done():
			case <-time.After(testTimeout):
				t.Fatal("the request's Done never closed")
			}
			// The client can have the whole body before the handler returns.
			recs = e.HTTPRequests()
			rec := recs[len(recs)-1]
			path, query, _ := strings.Cut(tc.path, "?")
			assert.Equal(t, tc.method, rec.Method)
			assert.Equal(t, path, rec.Path)
			assert.Equal(t, query, rec.Query)
			assert.Equal(t, "trace-1", rec.Header.Get("X-Trace-Id"))
			assert.Equal(t, tc.body, string(rec.Body))
			assert.Equal(t, tc.status, rec.Status)
			assert.Equal(t, tc.route, rec.Route)
			assert.False(t, rec.Cancelled)
		})
	}
}

func TestDeleteEndpoints(t *testing.T) {
	e := StartTest(t)
	_, stored := post(t, e, req(map[string]any{"type": nil, "store": true}, user("x")), nil)
	id := jsonField(t, stored, "id")
	resp, body := do(t, http.MethodDelete, e.URL()+"/v1/responses/"+id, nil, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	assert.JSONEq(t, `{"id":"`+id+`","object":"response","deleted":true}`, string(body))
	resp, _ = do(t, http.MethodGet, e.URL()+"/v1/responses/"+id, nil, nil)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	res := dial(t, e, nil).create(req(map[string]any{"store": true, "previous_response_id": id}, user("y")))
	assert.Equal(t, "Previous response with id '"+id+"' not found.", res.errMessage(t), "a deleted response no longer chains")

	upload, ctype := multipartFile(t, "a.jsonl", "batch", []byte("{}\n"))
	_, body = do(t, http.MethodPost, e.URL()+"/v1/files", upload, http.Header{"Content-Type": {ctype}})
	fileID := jsonField(t, body, "id")
	resp, body = do(t, http.MethodDelete, e.URL()+"/v1/files/"+fileID, nil, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	assert.JSONEq(t, `{"id":"`+fileID+`","object":"file","deleted":true}`, string(body))
	_, body = do(t, http.MethodGet, e.URL()+"/v1/files", nil, nil)
	assert.JSONEq(t, `{"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}`, string(body))

	resp, body = do(t, http.MethodPost, e.URL()+"/v1/files", []byte("not multipart"), http.Header{"Content-Type": {"text/plain"}})
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "%s", body)
}

// TestChatCompletionStream reads a streamed chat completion as it arrives:
// each chunk is flushed on its own, so the first arrives well before the
// end.
func TestChatCompletionStream(t *testing.T) {
	const interval = 30 * time.Millisecond
	e := StartTest(t, WithChatText("abcd"), WithTextDeltas(4), WithChunkInterval(interval))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	body := `{"model":"gpt-5.5","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, e.URL()+"/v1/chat/completions", strings.NewReader(body))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(r)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	sc := bufio.NewScanner(resp.Body)
	var data []string
	var arrived []time.Time
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		require.True(t, strings.HasPrefix(line, "data: "), "%q", line)
		data = append(data, strings.TrimPrefix(line, "data: "))
		arrived = append(arrived, time.Now())
	}
	require.NoError(t, sc.Err())
	// role, 4 text pieces, finish, usage, [DONE]
	require.Len(t, data, 8)
	assert.Equal(t, "[DONE]", data[7])
	assert.GreaterOrEqual(t, arrived[7].Sub(arrived[0]), 6*interval, "chunks arrive one by one")
	var text strings.Builder
	for i, d := range data[:7] {
		var v struct {
			Object  string `json:"object"`
			Choices []struct {
				Delta struct {
					Role    string `json:"role"`
					Content string `json:"content"`
				} `json:"delta"`
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Usage *struct {
				TotalTokens int `json:"total_tokens"`
			} `json:"usage"`
		}
		require.NoError(t, json.Unmarshal([]byte(d), &v), d)
		assert.Equal(t, "chat.completion.chunk", v.Object)
		switch i {
		case 0:
			assert.Equal(t, "assistant", v.Choices[0].Delta.Role)
		case 5:
			assert.Equal(t, "stop", *v.Choices[0].FinishReason)
		case 6:
			assert.Empty(t, v.Choices)
			require.NotNil(t, v.Usage)
			assert.Positive(t, v.Usage.TotalTokens)
		default:
			text.WriteString(v.Choices[0].Delta.Content)
		}
	}
	assert.Equal(t, "abcd", text.String())
}

// TestClientCancelObserved leaves streams early: the emulator sees the
// cancellation, counts it and marks the record.
func TestClientCancelObserved(t *testing.T) {
	tests := []struct {
		name  string
		path  string
		body  string
		setup func(*Emulator)
	}{
		{name: "chat completion", path: "/v1/chat/completions",
			body: `{"model":"gpt-5.5","stream":true,"messages":[{"role":"user","content":"hi"}]}`},
		{name: "responses SSE", path: "/v1/responses",
			body: `{"model":"gpt-5.5","stream":true,"store":false,"input":"hi"}`,
			setup: func(e *Emulator) {
				e.SetFaults(Faults{All: CreateFault{EventInterval: 50 * time.Millisecond}})
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := StartTest(t, WithChatText(strings.Repeat("x", 40)), WithTextDeltas(40), WithChunkInterval(50*time.Millisecond))
			if tc.setup != nil {
				tc.setup(e)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r, err := http.NewRequestWithContext(ctx, http.MethodPost, e.URL()+tc.path, strings.NewReader(tc.body))
			require.NoError(t, err)
			resp, err := http.DefaultClient.Do(r)
			require.NoError(t, err)
			line, err := bufio.NewReader(resp.Body).ReadString('\n')
			require.NoError(t, err)
			assert.NotEmpty(t, line)
			cancel()
			resp.Body.Close()

			wctx, wcancel := context.WithTimeout(context.Background(), testTimeout)
			defer wcancel()
			require.NoError(t, e.Wait(wctx, func(s Stats) bool { return s.ClientCancels == 1 }))
			recs := e.HTTPRequests()
			require.Len(t, recs, 1)
			<-recs[0].Done()
			assert.True(t, e.HTTPRequests()[0].Cancelled)
		})
	}
}
