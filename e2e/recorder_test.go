package e2e

// A transparent recording proxy between a real client (Codex CLI) and the gateway: it
// keeps every handshake header and client frame, and what the gateway answered to each
// create, so the Codex suite can assert on what Codex really sent and write it to
// testdata/codex for the replay test.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// recConn is one client connection through the recorder.
type recConn struct {
	Index     int               `json:"index"`
	Transport string            `json:"transport"`
	Method    string            `json:"method"`
	Path      string            `json:"path"`
	Headers   map[string]string `json:"headers"`
	// Status is the HTTP status the gateway answered (HTTP requests only).
	Status int `json:"status,omitempty"`
}

// recFrame is one client frame and how the gateway answered it.
type recFrame struct {
	Conn  int             `json:"conn"`
	Type  string          `json:"type"`
	Frame json.RawMessage `json:"frame"`
	// Answer is the type of the frame that ended the turn (response.completed, error…);
	// empty for frames that get no answer (response.processed).
	Answer     string `json:"answer,omitempty"`
	ResponseID string `json:"response_id,omitempty"`
	ErrorCode  string `json:"error_code,omitempty"`
}

type recorder struct {
	t      testing.TB
	target *url.URL // the gateway, http://ADDR
	srv    *httptest.Server

	mu      sync.Mutex
	conns   []*recConn
	frames  []*recFrame
	waiting map[int][]*recFrame // per connection: creates not answered yet
	errors  int                 // error frames the client got
}

// startRecorder serves the proxy on a loopback port in front of the gateway at target.
func startRecorder(t testing.TB, target string) *recorder {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatalf("recorder: %v", err)
	}
	r := &recorder{t: t, target: u, waiting: map[int][]*recFrame{}}
	r.srv = httptest.NewServer(r)
	t.Cleanup(r.srv.Close)
	return r
}

// URL is the recorder's base URL, http://ADDR.
func (r *recorder) URL() string { return r.srv.URL }

// hopHeaders are not forwarded (and not part of what the client "sent" for replays).
var hopHeaders = map[string]bool{
	"Connection": true, "Upgrade": true, "Host": true, "Content-Length": true,
	"Sec-Websocket-Key": true, "Sec-Websocket-Version": true, "Sec-Websocket-Extensions": true,
	"Sec-Websocket-Protocol": true, "Transfer-Encoding": true, "Accept-Encoding": true,
}

func (r *recorder) addConn(transport string, req *http.Request) *recConn {
	h := map[string]string{}
	for k, v := range req.Header {
		h[http.CanonicalHeaderKey(k)] = strings.Join(v, ", ")
	}
	if _, ok := h["Authorization"]; ok {
		h["Authorization"] = "Bearer <FAKE_KEY>"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c := &recConn{Index: len(r.conns) + 1, Transport: transport, Method: req.Method, Path: req.URL.Path, Headers: h}
	r.conns = append(r.conns, c)
	return c
}

func forwardable(in http.Header) http.Header {
	out := http.Header{}
	for k, v := range in {
		if !hopHeaders[http.CanonicalHeaderKey(k)] {
			out[k] = append([]string(nil), v...)
		}
	}
	return out
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
		r.serveWS(w, req)
		return
	}
	c := r.addConn("http", req)
	rec := &statusRecorder{ResponseWriter: w}
	rp := httputil.NewSingleHostReverseProxy(r.target)
	rp.ServeHTTP(rec, req)
	r.mu.Lock()
	c.Status = rec.status
	r.mu.Unlock()
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) serveWS(w http.ResponseWriter, req *http.Request) {
	c := r.addConn("ws", req)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	up, resp, err := websocket.Dial(dctx, "ws://"+r.target.Host+req.URL.Path, &websocket.DialOptions{HTTPHeader: forwardable(req.Header)})
	dcancel()
	if err != nil {
		status := http.StatusBadGateway
		if resp != nil {
			status = resp.StatusCode
		}
		http.Error(w, "recorder: dial gateway: "+err.Error(), status)
		return
	}
	defer up.CloseNow()
	up.SetReadLimit(64 << 20)
	down, err := websocket.Accept(w, req, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return
	}
	defer down.CloseNow()
	down.SetReadLimit(64 << 20)

	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			typ, data, err := up.Read(ctx)
			if err != nil {
				mirrorClose(down, err)
				cancel()
				return
			}
			r.answer(c.Index, data)
			if err := down.Write(ctx, typ, data); err != nil {
				cancel()
				return
			}
		}
	}()
	for {
		typ, data, err := down.Read(ctx)
		if err != nil {
			mirrorClose(up, err)
			cancel()
			break
		}
		if typ == websocket.MessageText {
			r.clientFrame(c.Index, data)
		}
		if err := up.Write(ctx, typ, data); err != nil {
			cancel()
			break
		}
	}
	<-done
}

// mirrorClose ends the other side the way this side ended: with the same close status, or
// abruptly.
func mirrorClose(c *websocket.Conn, err error) {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		_ = c.Close(ce.Code, ce.Reason)
		return
	}
	_ = c.CloseNow()
}

func (r *recorder) clientFrame(conn int, data []byte) {
	var head struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(data, &head)
	f := &recFrame{Conn: conn, Type: head.Type, Frame: json.RawMessage(append([]byte(nil), data...))}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.frames = append(r.frames, f)
	if head.Type == "response.create" {
		r.waiting[conn] = append(r.waiting[conn], f)
	}
}

func (r *recorder) answer(conn int, data []byte) {
	ev, err := ParseEvent(data)
	if err != nil || !IsTerminal(ev.Type) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if ev.Type == "error" {
		r.errors++
	}
	q := r.waiting[conn]
	if len(q) == 0 {
		return
	}
	f := q[0]
	r.waiting[conn] = q[1:]
	f.Answer, f.ResponseID = ev.Type, ev.Response.ID
	if ev.Error != nil {
		f.ErrorCode = ev.Error.Code
	}
}

// snapshot returns copies of what was recorded.
func (r *recorder) snapshot() (conns []recConn, frames []recFrame, errs int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		conns = append(conns, *c)
	}
	for _, f := range r.frames {
		frames = append(frames, *f)
	}
	return conns, frames, r.errors
}

// headerKeys lists a recorded connection's header names, sorted.
func headerKeys(c recConn) []string {
	keys := make([]string, 0, len(c.Headers))
	for k := range c.Headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
