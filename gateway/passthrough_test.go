package gateway

// Tests of the pass-through (issue 13 item 5, SPEC §10 "The rest of the API"): real sockets
// on both sides of the gateway, every request compared with the same request sent direct.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
)

// ptTimeout bounds every wait of these tests, so that a stream the gateway holds back fails
// the test instead of hanging it.
const ptTimeout = 5 * time.Second

// ptHopHeaders are hop-by-hop headers the tests send; none may reach the other side.
// X-Hop-Secret is hop-by-hop because Connection names it.
var ptHopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Authorization", "X-Hop-Secret"}

// ptEchoPrefix starts the emulator's echo of a request header in its answer
// (emulator.EchoHeaderPrefix).
const ptEchoPrefix = "X-Emulator-Echo-"

// ptGateway serves a gateway whose upstream base is base, with its own registry.
func ptGateway(t *testing.T, base string, opts ...Option) (*Server, string) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Upstream = base
	cfg.Policies = "../policies"
	opts = append([]Option{WithRegistry(prometheus.NewRegistry()), WithLogger(slog.New(slog.DiscardHandler))}, opts...)
	srv, err := New(cfg, opts...)
	require.NoError(t, err)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		_ = srv.Close()
	})
	return srv, hs.URL
}

// ptSeen is a request as the upstream received it (Path escaped as it was sent).
type ptSeen struct {
	Method, Path, RawQuery, Host string
	Header                       http.Header
	Body                         []byte
}

// ptRecorder records the requests that carry an X-Test-Id header, in the order they arrive,
// before next answers them.
type ptRecorder struct {
	next http.Handler
	mu   sync.Mutex
	seen map[string][]ptSeen
}

func (p *ptRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if id := r.Header.Get("X-Test-Id"); id != "" {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		p.mu.Lock()
		p.seen[id] = append(p.seen[id], ptSeen{Method: r.Method, Path: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery,
			Host: r.Host, Header: r.Header.Clone(), Body: body})
		p.mu.Unlock()
	}
	p.next.ServeHTTP(w, r)
}

// get returns the i-th request recorded with id.
func (p *ptRecorder) get(id string, i int) (ptSeen, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i >= len(p.seen[id]) {
		return ptSeen{}, false
	}
	return p.seen[id][i], true
}

// ptServe serves h behind a recorder and returns the server's root URL.
func ptServe(t *testing.T, h http.Handler) (*ptRecorder, string) {
	t.Helper()
	rec := &ptRecorder{next: h, seen: map[string][]ptSeen{}}
	hs := httptest.NewServer(rec)
	t.Cleanup(hs.Close)
	return rec, hs.URL
}

// ptAPI is a small stand-in for the endpoints of SPEC §10 with deterministic answers. Every
// answer carries a custom header and a hop-by-hop one.
func ptAPI() http.Handler {
	mux := http.NewServeMux()
	decorate := func(w http.ResponseWriter, contentType string) {
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("X-Upstream-Custom", "custom-answer")
		w.Header().Set("Connection", "X-Resp-Hop")
		w.Header().Set("X-Resp-Hop", "1")
	}
	answer := func(w http.ResponseWriter, status int, body string) {
		decorate(w, "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
	notFound := func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusNotFound, fmt.Sprintf(`{"error":{"message":"Invalid URL (%s %s)","type":"invalid_request_error","param":null,"code":null}}`, r.Method, r.URL.Path))
	}
	response := func(id, status string) string {
		return fmt.Sprintf(`{"id":%q,"object":"response","created_at":1,"status":%q,"model":"gpt-test","output":[]}`, id, status)
	}
	mux.HandleFunc("/", notFound)
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, _ *http.Request) {
		answer(w, http.StatusOK, `{"object":"list","data":[{"id":"gpt-test","object":"model","created":1,"owned_by":"chainmend"}]}`)
	})
	mux.HandleFunc("GET /v1/models/{model}", func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusOK, fmt.Sprintf(`{"id":%q,"object":"model","created":1,"owned_by":"chainmend"}`, r.PathValue("model")))
	})
	mux.HandleFunc("POST /v1/responses/compact", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		answer(w, http.StatusOK, fmt.Sprintf(`{"id":"cmp_1","object":"response.compaction","output":[{"type":"compaction","encrypted_content":"enc_%d"}]}`, len(body)))
	})
	mux.HandleFunc("POST /v1/responses/input_tokens", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		answer(w, http.StatusOK, fmt.Sprintf(`{"object":"response.input_tokens","input_tokens":%d}`, len(body)/4))
	})
	mux.HandleFunc("GET /v1/responses/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "resp_123" {
			notFound(w, r)
			return
		}
		answer(w, http.StatusOK, response("resp_123", "completed"))
	})
	mux.HandleFunc("DELETE /v1/responses/{id}", func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusOK, fmt.Sprintf(`{"id":%q,"object":"response","deleted":true}`, r.PathValue("id")))
	})
	mux.HandleFunc("POST /v1/responses/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		answer(w, http.StatusOK, response(r.PathValue("id"), "cancelled"))
	})
	mux.HandleFunc("GET /v1/responses/{id}/input_items", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		answer(w, http.StatusOK, fmt.Sprintf(`{"object":"list","data":[],"limit":%q,"order":%q,"has_more":false}`, q.Get("limit"), q.Get("order")))
	})
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !bytes.Contains(body, []byte(`"stream":true`)) {
			answer(w, http.StatusOK, `{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}`)
			return
		}
		decorate(w, "text/event-stream")
		for _, c := range []string{"o", "k"} {
			fmt.Fprintf(w, "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":%q}}]}\n\n", c)
			http.NewResponseController(w).Flush()
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	})
	mux.HandleFunc("POST /v1/embeddings", func(w http.ResponseWriter, _ *http.Request) {
		answer(w, http.StatusOK, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,0.25]}],"model":"emb-test"}`)
	})
	mux.HandleFunc("GET /v1/files", func(w http.ResponseWriter, _ *http.Request) {
		answer(w, http.StatusOK, `{"object":"list","data":[{"id":"file-1","object":"file","bytes":5,"filename":"a.jsonl","purpose":"batch"}]}`)
	})
	mux.HandleFunc("POST /v1/files", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		answer(w, http.StatusOK, fmt.Sprintf(`{"id":"file-2","object":"file","bytes":%d,"purpose":"batch"}`, len(body)))
	})
	mux.HandleFunc("GET /v1/files/{id}/content", func(w http.ResponseWriter, _ *http.Request) {
		decorate(w, "application/octet-stream")
		_, _ = io.WriteString(w, "{\"a\":1}\n")
	})
	return mux
}

// ptCase is one request of the endpoint table.
type ptCase struct {
	name, method string
	// path carries the query; {id} stands for a response the upstream holds.
	path, body, contentType string
	route                   string
	// status is the answer of ptAPI; the emulator's is only compared with the direct one.
	status int
}

// ptCases are the endpoints of SPEC §10, a path that does not exist, and GET on the create
// path (not a create, so passed through).
var ptCases = []ptCase{
	{name: "models", method: "GET", path: "/v1/models", route: routeModels, status: 200},
	{name: "model", method: "GET", path: "/v1/models/gpt-test", route: routeModels, status: 200},
	{name: "compact", method: "POST", path: "/v1/responses/compact", route: routeResponsesCompact, status: 200,
		body: `{"model":"gpt-test","input":[{"role":"user","content":"hi"}]}`, contentType: "application/json"},
	{name: "retrieve", method: "GET", path: "/v1/responses/{id}?include[]=reasoning.encrypted_content&stream=false", route: routeResponsesGet, status: 200},
	{name: "retrieve unknown", method: "GET", path: "/v1/responses/resp_missing", route: routeResponsesGet, status: 404},
	{name: "input items", method: "GET", path: "/v1/responses/{id}/input_items?limit=2&order=asc&after=msg_1", route: routeResponsesInputItems, status: 200},
	{name: "input tokens", method: "POST", path: "/v1/responses/input_tokens", route: routeResponsesInputTokens, status: 200,
		body: `{"model":"gpt-test","input":"count these tokens"}`, contentType: "application/json"},
	{name: "cancel", method: "POST", path: "/v1/responses/resp_bg/cancel", route: routeResponsesCancel, status: 200},
	{name: "delete", method: "DELETE", path: "/v1/responses/resp_old", route: routeResponsesDelete, status: 200},
	{name: "chat", method: "POST", path: "/v1/chat/completions", route: routeChatCompletions, status: 200,
		body: `{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}`, contentType: "application/json"},
	{name: "chat stream", method: "POST", path: "/v1/chat/completions", route: routeChatCompletions, status: 200,
		body: `{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"hi"}]}`, contentType: "application/json"},
	{name: "embeddings", method: "POST", path: "/v1/embeddings", route: routeEmbeddings, status: 200,
		body: `{"model":"emb-test","input":"hi"}`, contentType: "application/json"},
	{name: "files list", method: "GET", path: "/v1/files?purpose=batch", route: routeFiles, status: 200},
	{name: "file upload", method: "POST", path: "/v1/files", route: routeFiles, status: 200,
		body:        "--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n{\"a\":1}\n\r\n--b--\r\n",
		contentType: "multipart/form-data; boundary=b"},
	{name: "file content", method: "GET", path: "/v1/files/file-1/content", route: routeFiles, status: 200},
	{name: "unknown path", method: "GET", path: "/v1/no/such/endpoint?x=1;y=2&z", route: routeOther, status: 404},
	{name: "GET on the create path", method: "GET", path: "/v1/responses", route: routeOther, status: 404},
}

// ptResult is an answer as a client received it.
type ptResult struct {
	status int
	header http.Header
	body   []byte
}

// ptDo sends c to base, marked with testID, with end-to-end and hop-by-hop headers.
func ptDo(t *testing.T, base string, c ptCase, id, testID string) ptResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ptTimeout)
	defer cancel()
	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
	}
	req, err := http.NewRequestWithContext(ctx, c.method, base+strings.ReplaceAll(c.path, "{id}", id), body)
	require.NoError(t, err)
	if c.contentType != "" {
		req.Header.Set("Content-Type", c.contentType)
	}
	req.Header.Set("Authorization", "Bearer sk-test")
	req.Header.Set("OpenAI-Beta", "responses=v1")
	req.Header.Set("X-Custom-Request", "custom-1")
	req.Header.Set("X-Forwarded-For", "203.0.113.7")
	req.Header.Set("X-Test-Id", testID)
	req.Header.Set("Connection", "X-Hop-Secret")
	req.Header.Set("X-Hop-Secret", "hop")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return ptResult{status: resp.StatusCode, header: resp.Header, body: data}
}

// without returns a copy of h without the named headers.
func without(h http.Header, names ...string) http.Header {
	out := h.Clone()
	for _, n := range names {
		out.Del(n)
	}
	return out
}

// TestPassthroughMatchesDirect sends each endpoint of SPEC §10 direct to the upstream and
// through the gateway and requires the same answer (status, headers, body, streamed or
// not) and the same request upstream (method, path, query, headers, body), less the
// hop-by-hop headers; each request is counted under its route class and status.
func TestPassthroughMatchesDirect(t *testing.T) {
	upstreams := []struct {
		name  string
		start func(t *testing.T) (rec *ptRecorder, root, id string)
		// standIn: ptAPI, whose own answers the table states too.
		standIn bool
	}{
		{name: "stand-in", standIn: true, start: func(t *testing.T) (*ptRecorder, string, string) {
			rec, root := ptServe(t, ptAPI())
			return rec, root, "resp_123"
		}},
		{name: "emulator", start: func(t *testing.T) (*ptRecorder, string, string) {
			emu := emulator.New()
			t.Cleanup(emu.Close)
			rec, root := ptServe(t, emu)
			return rec, root, ptStoredResponse(t, root)
		}},
	}
	for _, up := range upstreams {
		t.Run(up.name, func(t *testing.T) {
			rec, root, id := up.start(t)
			srv, gw := ptGateway(t, root+"/v1")
			for _, c := range ptCases {
				t.Run(c.name, func(t *testing.T) {
					// The same request, X-Test-Id included: the upstream records the two in turn.
					direct := ptDo(t, root, c, id, c.name)
					before := testutil.ToFloat64(srv.metrics.passRequests.WithLabelValues(c.route, strconv.Itoa(direct.status)))
					via := ptDo(t, gw, c, id, c.name)

					if up.standIn {
						assert.Equal(t, c.status, direct.status, "the stand-in's own answer")
					}
					assert.Equal(t, direct.status, via.status, "status")
					// Both upstreams answer the same request with the same bytes (the emulator's
					// answers are deterministic, issue 13 item 6), streamed ones included.
					assert.Equal(t, string(direct.body), string(via.body), "body")
					volatile := append([]string{"Date", "X-Resp-Hop"}, ptHopHeaders...)
					for _, h := range ptHopHeaders {
						// The emulator echoes request headers; the hop-by-hop ones only reach it direct.
						volatile = append(volatile, ptEchoPrefix+h)
						assert.Empty(t, via.header.Values(ptEchoPrefix+h), "the emulator saw hop-by-hop header %s", h)
					}
					assert.Equal(t, without(direct.header, volatile...), without(via.header, volatile...), "response headers")
					if up.standIn {
						assert.NotEmpty(t, direct.header.Get("X-Upstream-Custom"), "the stand-in sets a custom header")
						assert.NotEmpty(t, direct.header.Get("X-Resp-Hop"), "direct, the hop-by-hop response header arrives")
					}
					assert.Empty(t, via.header.Get("X-Resp-Hop"), "a hop-by-hop response header passed the gateway")

					sd, ok := rec.get(c.name, 0)
					require.True(t, ok, "the direct request reached the upstream")
					sv, ok := rec.get(c.name, 1)
					require.True(t, ok, "the request through the gateway reached the upstream")
					assert.Equal(t, sd.Method, sv.Method, "method")
					assert.Equal(t, sd.Path, sv.Path, "path")
					assert.Equal(t, sd.RawQuery, sv.RawQuery, "query")
					assert.Equal(t, sd.Host, sv.Host, "Host: the upstream's")
					assert.Equal(t, sd.Body, sv.Body, "request body")
					assert.Equal(t, "hop", sd.Header.Get("X-Hop-Secret"), "direct, the hop-by-hop header arrives")
					assert.Equal(t, without(sd.Header, ptHopHeaders...), sv.Header, "request headers: the client's less the hop-by-hop ones")
					for _, h := range ptHopHeaders {
						assert.Empty(t, sv.Header.Values(h), "hop-by-hop header %s passed the gateway", h)
					}

					after := func() float64 {
						return testutil.ToFloat64(srv.metrics.passRequests.WithLabelValues(c.route, strconv.Itoa(via.status)))
					}
					// Counted when the handler returns, which may be just after the client read
					// the last byte.
					require.Eventually(t, func() bool { return after() == before+1 }, ptTimeout, 5*time.Millisecond,
						"passthrough_requests_total{route=%q,code=\"%d\"}", c.route, via.status)
				})
			}
			ptBoundedLabels(t, srv.reg)
		})
	}
}

// ptStoredResponse creates a stored response on the emulator and returns its id.
func ptStoredResponse(t *testing.T, root string) string {
	t.Helper()
	resp, err := http.Post(root+"/v1/responses", "application/json",
		strings.NewReader(`{"model":"gpt-test","store":true,"input":[{"role":"user","content":"hi"}]}`))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var obj struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(body, &obj) == nil && obj.ID != "" {
		return obj.ID
	}
	// A streamed answer: the id of its first response.
	if m := regexp.MustCompile(`"id":"(resp_[^"]+)"`).FindSubmatch(body); m != nil {
		return string(m[1])
	}
	t.Logf("no stored response on the emulator (status %d); reads use an unknown id", resp.StatusCode)
	return "resp_missing"
}

// ptBoundedLabels requires every pass-through series to carry a route class and a status
// code, never a path or an id.
func ptBoundedLabels(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	classes := []string{routeModels, routeResponsesCompact, routeResponsesGet, routeResponsesDelete,
		routeResponsesCancel, routeResponsesInputItems, routeResponsesInputTokens, routeChatCompletions,
		routeEmbeddings, routeFiles, routeOther}
	code := regexp.MustCompile(`^[1-5][0-9][0-9]$`)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	n := 0
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "chainmend_passthrough_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "route":
					n++
					assert.Contains(t, classes, l.GetValue(), "%s: route label", mf.GetName())
				case "code":
					assert.Regexp(t, code, l.GetValue(), "%s: code label", mf.GetName())
				}
			}
		}
	}
	assert.Positive(t, n, "no pass-through series")
}

// TestPassthroughSSEStreams requires each chunk of a streamed chat completion to reach the
// client while the upstream is still streaming: the upstream sends the next chunk only once
// the client has received the previous one through the gateway.
func TestPassthroughSSEStreams(t *testing.T) {
	const chunks = 3
	received := make(chan struct{})
	finished := make(chan struct{})
	_, root := ptServe(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(finished)
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range chunks {
			fmt.Fprintf(w, "data: {\"object\":\"chat.completion.chunk\",\"n\":%d}\n\n", i)
			http.NewResponseController(w).Flush()
			select {
			case <-received:
			case <-r.Context().Done():
				return
			case <-time.After(ptTimeout):
				return
			}
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	}))
	_, gw := ptGateway(t, root+"/v1")

	ctx, cancel := context.WithTimeout(context.Background(), ptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, gw+"/v1/chat/completions",
		strings.NewReader(`{"model":"gpt-test","stream":true,"messages":[]}`))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	rd := bufio.NewReader(resp.Body)
	for i := range chunks {
		ev := ptReadEvent(t, rd)
		assert.Equal(t, fmt.Sprintf("data: {\"object\":\"chat.completion.chunk\",\"n\":%d}\n\n", i), ev)
		select {
		case <-finished:
			t.Fatalf("chunk %d: the upstream had finished before the client got it", i)
		default:
		}
		received <- struct{}{}
	}
	assert.Equal(t, "data: [DONE]\n\n", ptReadEvent(t, rd))
}

// ptReadEvent reads one SSE event, up to and with its blank line.
func ptReadEvent(t *testing.T, rd *bufio.Reader) string {
	t.Helper()
	var ev strings.Builder
	for {
		line, err := rd.ReadString('\n')
		require.NoError(t, err, "read an event (so far %q)", ev.String())
		ev.WriteString(line)
		if line == "\n" {
			return ev.String()
		}
	}
}

// TestPassthroughClientCancel requires a client that leaves, mid-stream or before the
// answer, to cancel the upstream request, and the request to be counted.
func TestPassthroughClientCancel(t *testing.T) {
	for _, tc := range []struct {
		name string
		// headersFirst: the upstream answers and streams a first event before waiting.
		headersFirst bool
		code         string
	}{
		{name: "mid-stream", headersFirst: true, code: "200"},
		{name: "before the answer", code: strconv.Itoa(statusClientGone)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			waiting := make(chan struct{})
			cancelled := make(chan struct{})
			_, root := ptServe(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// A Go server notices its client leaving only once it has read the body.
				_, _ = io.Copy(io.Discard, r.Body)
				if tc.headersFirst {
					w.Header().Set("Content-Type", "text/event-stream")
					_, _ = io.WriteString(w, "data: {\"n\":0}\n\n")
					http.NewResponseController(w).Flush()
				}
				close(waiting)
				select {
				case <-r.Context().Done():
					close(cancelled)
				case <-time.After(ptTimeout):
				}
			}))
			srv, gw := ptGateway(t, root+"/v1")

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, gw+"/v1/chat/completions",
				strings.NewReader(`{"stream":true}`))
			require.NoError(t, err)
			done := make(chan error, 1)
			go func() {
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					_, err = ptReadEventErr(bufio.NewReader(resp.Body))
					if err == nil {
						// The first event arrived: now leave mid-stream.
						cancel()
						_ = resp.Body.Close()
					}
				}
				done <- err
			}()
			ptWait(t, waiting, "the upstream got the request")
			if !tc.headersFirst {
				cancel()
			}
			ptWait(t, cancelled, "the upstream request was cancelled")
			err = <-done
			if tc.headersFirst {
				require.NoError(t, err, "the first event reached the client")
			}
			require.Eventually(t, func() bool {
				return testutil.ToFloat64(srv.metrics.passRequests.WithLabelValues(routeChatCompletions, tc.code)) == 1
			}, ptTimeout, 5*time.Millisecond, "counted with code %s", tc.code)
		})
	}
}

func ptReadEventErr(rd *bufio.Reader) (string, error) {
	var ev strings.Builder
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			return ev.String(), err
		}
		ev.WriteString(line)
		if line == "\n" {
			return ev.String(), nil
		}
	}
}

func ptWait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(ptTimeout):
		t.Fatalf("timed out waiting until %s", what)
	}
}

// TestPassthroughRequestBodyStreamed sends a request body in pieces through an io.Pipe to an
// upstream that echoes each line as it reads it: each piece must reach the upstream, and
// its echo the client, before the next piece is written, so nothing is buffered in either
// direction.
func TestPassthroughRequestBodyStreamed(t *testing.T) {
	_, root := ptServe(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		require.NoError(t, rc.EnableFullDuplex())
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		_ = rc.Flush()
		sc := bufio.NewScanner(r.Body)
		for sc.Scan() {
			fmt.Fprintf(w, "echo:%s\n", sc.Text())
			_ = rc.Flush()
		}
	}))
	srv, gw := ptGateway(t, root+"/v1")

	ctx, cancel := context.WithTimeout(context.Background(), ptTimeout)
	defer cancel()
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, gw+"/v1/files", pr)
	require.NoError(t, err)
	type result struct {
		resp *http.Response
		err  error
	}
	answered := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		answered <- result{resp, err}
	}()
	write := func(s string) {
		t.Helper()
		wrote := make(chan error, 1)
		go func() { _, err := io.WriteString(pw, s); wrote <- err }()
		select {
		case err := <-wrote:
			require.NoError(t, err)
		case <-ctx.Done():
			t.Fatalf("writing %q: nobody read it", s)
		}
	}

	write("part-1\n")
	var res result
	select {
	case res = <-answered:
	case <-ctx.Done():
		t.Fatal("no answer while the request body was still open")
	}
	require.NoError(t, res.err)
	defer res.resp.Body.Close()
	rd := bufio.NewReader(res.resp.Body)
	for i := 1; i <= 3; i++ {
		line, err := rd.ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprintf("echo:part-%d\n", i), line, "the echo of piece %d before piece %d was written", i, i+1)
		if i < 3 {
			write(fmt.Sprintf("part-%d\n", i+1))
		}
	}
	require.NoError(t, pw.Close())
	rest, err := io.ReadAll(rd)
	require.NoError(t, err)
	assert.Empty(t, string(rest))
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(srv.metrics.passRequests.WithLabelValues(routeFiles, "200")) == 1
	}, ptTimeout, 5*time.Millisecond)
}

// TestPassthroughWebSocket relays a WebSocket on a path other than the Responses endpoint.
func TestPassthroughWebSocket(t *testing.T) {
	rec, root := ptServe(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		typ, msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		_ = c.Write(r.Context(), typ, append([]byte("echo:"), msg...))
		_ = c.Close(websocket.StatusNormalClosure, "")
	}))
	srv, gw := ptGateway(t, root+"/v1")

	ctx, cancel := context.WithTimeout(context.Background(), ptTimeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(gw, "http")+"/v1/realtime?model=gpt-test",
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer sk-test"}, "X-Test-Id": {"ws"}}})
	require.NoError(t, err)
	defer c.CloseNow()
	assert.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("hi")))
	_, msg, err := c.Read(ctx)
	require.NoError(t, err)
	assert.Equal(t, "echo:hi", string(msg))
	_, _, err = c.Read(ctx)
	assert.Equal(t, websocket.StatusNormalClosure, websocket.CloseStatus(err), "the upstream's close frame")

	seen, ok := rec.get("ws", 0)
	require.True(t, ok)
	assert.Equal(t, "/v1/realtime", seen.Path)
	assert.Equal(t, "model=gpt-test", seen.RawQuery)
	assert.Equal(t, "Bearer sk-test", seen.Header.Get("Authorization"))
	// The relay ends, and is counted, when both sides have closed.
	_ = c.CloseNow()
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(srv.metrics.passRequests.WithLabelValues(routeOther, "101")) == 1
	}, ptTimeout, 5*time.Millisecond)
}

// TestPassthroughUpstreamFailure answers a request the upstream did not answer with an
// OpenAI-style error: 502 when it cannot be reached, 504 when it does not answer in time
// (the gateway's HTTP client's own timeout, which must apply).
func TestPassthroughUpstreamFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close())
	// Answers nothing until the gateway gives up on the request.
	_, slow := ptServe(t, http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))

	for _, tc := range []struct {
		name, base string
		opts       []Option
		status     int
		code       string
	}{
		{name: "unreachable", base: closed, status: http.StatusBadGateway, code: "upstream_unreachable"},
		{name: "no answer in time", base: slow, status: http.StatusGatewayTimeout, code: "upstream_timeout",
			opts: []Option{WithHTTPClient(&http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 50 * time.Millisecond}})}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, gw := ptGateway(t, tc.base+"/v1", tc.opts...)
			resp, err := http.Get(gw + "/v1/models")
			require.NoError(t, err)
			defer resp.Body.Close()
			assert.Equal(t, tc.status, resp.StatusCode)
			assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			var body struct {
				Error struct {
					Type    string  `json:"type"`
					Code    string  `json:"code"`
					Message string  `json:"message"`
					Param   *string `json:"param"`
				} `json:"error"`
			}
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
			assert.Equal(t, "server_error", body.Error.Type)
			assert.Equal(t, tc.code, body.Error.Code)
			assert.NotEmpty(t, body.Error.Message)
			require.Eventually(t, func() bool {
				return testutil.ToFloat64(srv.metrics.passRequests.WithLabelValues(routeModels, strconv.Itoa(tc.status))) == 1
			}, ptTimeout, 5*time.Millisecond)
		})
	}
}

// TestPassthroughRouting pins which requests the gateway answers itself and where the others
// go upstream, for several upstream bases.
func TestPassthroughRouting(t *testing.T) {
	type call struct {
		method, path string
		header       http.Header
		// upstream is the path the upstream receives, or "" when the gateway answers.
		upstream string
		status   int
	}
	gatewayOwn := []call{
		{method: "GET", path: "/healthz", status: 200},
		{method: "POST", path: "/healthz", status: 405},
		{method: "GET", path: "/metrics", status: 200},
		{method: "PUT", path: "/metrics", status: 405},
		{method: "DELETE", path: "/readyz", status: 405},
		// Creates: no policy set is loaded in these tests, so the gateway refuses them.
		{method: "POST", path: "/v1/responses", status: 503},
		{method: "POST", path: "/responses", status: 503},
	}
	for _, tc := range []struct {
		name, base string
		calls      []call
	}{
		{name: "base /v1", base: "/v1", calls: []call{
			{method: "GET", path: "/v1/models", upstream: "/v1/models", status: 200},
			{method: "GET", path: "/v1/responses", upstream: "/v1/responses", status: 200},
			{method: "DELETE", path: "/responses", upstream: "/v1/responses", status: 200},
			{method: "GET", path: "/v1/responses/", upstream: "/v1/responses/", status: 200},
			// The gateway's root stands for the API root, as /responses does for creates.
			{method: "GET", path: "/models", upstream: "/v1/models", status: 200},
			{method: "POST", path: "/responses/compact", upstream: "/v1/responses/compact", status: 200},
			{method: "GET", path: "/v1/files/file%2F1/content", upstream: "/v1/files/file%2F1/content", status: 200},
		}},
		{name: "bare host", base: "", calls: []call{
			{method: "GET", path: "/v1/models", upstream: "/v1/models", status: 200},
		}},
		{name: "base with a prefix", base: "/openai/v1", calls: []call{
			{method: "GET", path: "/v1/models", upstream: "/openai/v1/models", status: 200},
			{method: "GET", path: "/v1/responses/resp_1/input_items", upstream: "/openai/v1/responses/resp_1/input_items", status: 200},
		}},
		{name: "base naming the endpoint", base: "/custom/responses", calls: []call{
			{method: "GET", path: "/v1/models", upstream: "/custom/models", status: 200},
			{method: "POST", path: "/v1/responses/compact", upstream: "/custom/responses/compact", status: 200},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, root := ptServe(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Seen-Raw-Path", r.URL.EscapedPath())
			}))
			_, gw := ptGateway(t, root+tc.base)
			for i, c := range append(slices.Clone(gatewayOwn), tc.calls...) {
				id := strconv.Itoa(i)
				var body io.Reader
				if c.method == http.MethodPost {
					body = strings.NewReader(`{"model":"gpt-test","input":"hi"}`)
				}
				req, err := http.NewRequest(c.method, gw+c.path, body)
				require.NoError(t, err)
				req.Header.Set("X-Test-Id", id)
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				assert.Equal(t, c.status, resp.StatusCode, "%s %s", c.method, c.path)
				seen, ok := rec.get(id, 0)
				if c.upstream == "" {
					assert.False(t, ok, "%s %s: reached the upstream", c.method, c.path)
					continue
				}
				if assert.True(t, ok, "%s %s: did not reach the upstream", c.method, c.path) {
					assert.Equal(t, c.method, seen.Method)
					assert.Equal(t, c.upstream, seen.Path, "%s %s", c.method, c.path)
				}
			}
		})
	}
}

// TestPassthroughPathMapping pins the mapping from a client path to the upstream URL for the
// upstream bases Endpoints accepts.
func TestPassthroughPathMapping(t *testing.T) {
	for _, tc := range []struct {
		base, path, want string
	}{
		{"https://api.openai.com/v1", "/v1/models", "https://api.openai.com/v1/models"},
		{"https://api.openai.com/v1/", "/v1/models", "https://api.openai.com/v1/models"},
		{"https://api.openai.com", "/v1/models", "https://api.openai.com/v1/models"},
		{"https://api.openai.com/v1/responses", "/v1/responses/resp_1/input_items?limit=2", "https://api.openai.com/v1/responses/resp_1/input_items?limit=2"},
		{"https://api.openai.com/v1", "/models", "https://api.openai.com/v1/models"},
		{"https://api.openai.com/v1", "/responses/compact", "https://api.openai.com/v1/responses/compact"},
		{"https://api.openai.com/v1", "/v1beta/x", "https://api.openai.com/v1/v1beta/x"},
		{"wss://api.openai.com/v1", "/v1/models", "https://api.openai.com/v1/models"},
		{"ws://127.0.0.1:9/v1", "/v1/models", "http://127.0.0.1:9/v1/models"},
		{"https://gw.example/openai/v1", "/v1/chat/completions", "https://gw.example/openai/v1/chat/completions"},
		{"https://gw.example/custom/responses", "/v1/models", "https://gw.example/custom/models"},
		{"https://res.example/openai?api-version=2", "/v1/models?limit=1", "https://res.example/openai/v1/models?api-version=2&limit=1"},
		{"https://api.openai.com/v1", "/v1/files/a%2Fb/content", "https://api.openai.com/v1/files/a%2Fb/content"},
		{"https://api.openai.com/v1", "/%761/models", "https://api.openai.com/v1/models"},
		{"https://api.openai.com/v1", "/v1%2Fmodels", "https://api.openai.com/v1/models"},
	} {
		t.Run(tc.base+" "+tc.path, func(t *testing.T) {
			_, endpoint, err := Endpoints(tc.base)
			require.NoError(t, err)
			root, err := apiRoot(endpoint)
			require.NoError(t, err)
			in := httptest.NewRequest(http.MethodGet, tc.path, nil)
			pr := &httputil.ProxyRequest{In: in, Out: in.Clone(context.Background())}
			rewriteTo(root)(pr)
			assert.Equal(t, tc.want, pr.Out.URL.String())
			assert.Empty(t, pr.Out.Host, "the Host header is the upstream's")
		})
	}
}

// TestPassthroughRouteClass pins the route classes: one per endpoint of SPEC §10, other for
// everything else, with or without /v1.
func TestPassthroughRouteClass(t *testing.T) {
	for _, tc := range []struct {
		method, path, want string
	}{
		{"GET", "/v1/models", routeModels},
		{"GET", "/v1/models/gpt-5", routeModels},
		{"GET", "/models", routeModels},
		{"POST", "/v1/responses/compact", routeResponsesCompact},
		{"GET", "/v1/responses/compact", routeOther},
		{"GET", "/v1/responses/resp_1", routeResponsesGet},
		{"DELETE", "/v1/responses/resp_1", routeResponsesDelete},
		{"POST", "/v1/responses/resp_1", routeOther},
		{"POST", "/v1/responses/resp_1/cancel", routeResponsesCancel},
		{"GET", "/v1/responses/resp_1/cancel", routeOther},
		{"GET", "/v1/responses/resp_1/input_items", routeResponsesInputItems},
		{"POST", "/v1/responses/input_tokens", routeResponsesInputTokens},
		{"POST", "/responses/input_tokens", routeResponsesInputTokens},
		{"GET", "/v1/responses", routeOther},
		{"GET", "/v1/responses/", routeOther},
		{"POST", "/v1/chat/completions", routeChatCompletions},
		{"GET", "/v1/chat/completions/chatcmpl-1/messages", routeChatCompletions},
		{"POST", "/v1/chat", routeOther},
		{"POST", "/v1/embeddings", routeEmbeddings},
		{"POST", "/v1/embeddings/x", routeOther},
		{"GET", "/v1/files", routeFiles},
		{"GET", "/v1/files/file-1/content", routeFiles},
		{"GET", "/v1/realtime", routeOther},
		{"GET", "/", routeOther},
		{"GET", "/v1", routeOther},
		{"GET", "/v1models", routeOther},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			assert.Equal(t, tc.want, routeClass(tc.method, tc.path))
		})
	}
}
