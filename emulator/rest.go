package emulator

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Route names, in HTTPRecord.Route and the X-Emulator-Route header.
const (
	RouteResponsesCreate      = "responses.create"
	RouteResponsesCompact     = "responses.compact"
	RouteResponsesInputTokens = "responses.input_tokens"
	RouteResponsesRetrieve    = "responses.retrieve"
	RouteResponsesDelete      = "responses.delete"
	RouteResponsesCancel      = "responses.cancel"
	RouteResponsesInputItems  = "responses.input_items"
	RouteModelsList           = "models.list"
	RouteModelsRetrieve       = "models.retrieve"
	RouteChatCompletions      = "chat.completions"
	RouteEmbeddings           = "embeddings"
	RouteFilesList            = "files.list"
	RouteFilesUpload          = "files.upload"
	RouteFilesRetrieve        = "files.retrieve"
	RouteFilesDelete          = "files.delete"
	RouteFilesContent         = "files.content"
	RouteNotFound             = "not_found"
	RouteMethodNotAllowed     = "method_not_allowed"
)

// Headers the emulator sets on every plain HTTP answer. EchoHeaderPrefix
// precedes the name of each custom request header (X-…, minus the
// X-Forwarded-* a proxy adds) copied back, so a pass-through test can
// compare what reached the upstream directly and through a proxy.
const (
	RouteHeader      = "X-Emulator-Route"
	EchoHeaderPrefix = "X-Emulator-Echo-"
)

// HTTPRecord is one plain HTTP request (every endpoint, including POST
// /v1/responses; WebSocket handshakes are Conns).
type HTTPRecord struct {
	Seq    int
	Method string
	Path   string
	// Query is the raw query string.
	Query  string
	Header http.Header
	// Body is the request body as received (nil when it was too large).
	Body  []byte
	Route string
	// Status is the answered status, once the handler returned.
	Status int
	// Cancelled reports that the client went away before the answer was
	// complete, e.g. mid-stream: the cancellation reached the emulator.
	Cancelled bool
	done      chan struct{}
}

// Done is closed once the emulator has finished with the request.
func (h HTTPRecord) Done() <-chan struct{} { return h.done }

// HTTPRequests returns a copy of every plain HTTP request record in arrival
// order (only while recording is on).
func (e *Emulator) HTTPRequests() []HTTPRecord {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]HTTPRecord, len(e.httpRecs))
	for i, h := range e.httpRecs {
		out[i] = *h
	}
	return out
}

// endpoint is one route's handler; a nil handle means the path exists but
// not for the method.
type endpoint struct {
	name   string
	handle func(*call)
	allow  string
}

// call is one plain HTTP request on its way through a handler.
type call struct {
	w    http.ResponseWriter
	r    *http.Request
	body []byte
	arg  string
	rec  *HTTPRecord
}

// resolve maps a request to its endpoint. Any path ending in /responses is
// the create endpoint, so a gateway configured with or without /v1 works;
// the other endpoints are matched after an optional prefix ending in /v1.
func (e *Emulator) resolve(method, path string) (endpoint, bool) {
	if strings.HasSuffix(path, "/responses") {
		ep := endpoint{name: RouteResponsesCreate, allow: "GET, POST"}
		if method == http.MethodPost {
			ep.handle = e.serveHTTP
		}
		return ep, true
	}
	segs := strings.Split(strings.Trim(path, "/"), "/")
	if i := slices.Index(segs, "v1"); i >= 0 {
		segs = segs[i+1:]
	}
	byMethod := func(allow string, m map[string]endpoint) (endpoint, bool) {
		ep, ok := m[method]
		if !ok {
			return endpoint{name: RouteMethodNotAllowed, allow: allow}, true
		}
		ep.allow = allow
		return ep, true
	}
	post := http.MethodPost
	get := http.MethodGet
	del := http.MethodDelete
	switch {
	case len(segs) == 1 && segs[0] == "models":
		return byMethod("GET", map[string]endpoint{get: {name: RouteModelsList, handle: e.listModels}})
	case len(segs) == 2 && segs[0] == "models":
		return byMethod("GET", map[string]endpoint{get: {name: RouteModelsRetrieve, handle: e.getModel}})
	case len(segs) == 2 && segs[0] == "responses" && segs[1] == "compact":
		return byMethod("POST", map[string]endpoint{post: {name: RouteResponsesCompact, handle: e.compact}})
	case len(segs) == 2 && segs[0] == "responses" && segs[1] == "input_tokens":
		return byMethod("POST", map[string]endpoint{post: {name: RouteResponsesInputTokens, handle: e.inputTokens}})
	case len(segs) == 2 && segs[0] == "responses":
		return byMethod("GET, DELETE", map[string]endpoint{
			get: {name: RouteResponsesRetrieve, handle: e.getResponse},
			del: {name: RouteResponsesDelete, handle: e.deleteResponse},
		})
	case len(segs) == 3 && segs[0] == "responses" && segs[2] == "cancel":
		return byMethod("POST", map[string]endpoint{post: {name: RouteResponsesCancel, handle: e.cancelResponse}})
	case len(segs) == 3 && segs[0] == "responses" && segs[2] == "input_items":
		return byMethod("GET", map[string]endpoint{get: {name: RouteResponsesInputItems, handle: e.inputItems}})
	case len(segs) == 2 && segs[0] == "chat" && segs[1] == "completions":
		return byMethod("POST", map[string]endpoint{post: {name: RouteChatCompletions, handle: e.chatCompletions}})
	case len(segs) == 1 && segs[0] == "embeddings":
		return byMethod("POST", map[string]endpoint{post: {name: RouteEmbeddings, handle: e.embeddings}})
	case len(segs) == 1 && segs[0] == "files":
		return byMethod("GET, POST", map[string]endpoint{
			get:  {name: RouteFilesList, handle: e.listFiles},
			post: {name: RouteFilesUpload, handle: e.uploadFile},
		})
	case len(segs) == 2 && segs[0] == "files":
		return byMethod("GET, DELETE", map[string]endpoint{
			get: {name: RouteFilesRetrieve, handle: e.getFile},
			del: {name: RouteFilesDelete, handle: e.deleteFile},
		})
	case len(segs) == 3 && segs[0] == "files" && segs[2] == "content":
		return byMethod("GET", map[string]endpoint{get: {name: RouteFilesContent, handle: e.fileContent}})
	}
	return endpoint{name: RouteNotFound}, false
}

// pathArg returns the id segment of a /responses/{id}… or /files/{id}… or
// /models/{id} path.
func pathArg(path string) string {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	if i := slices.Index(segs, "v1"); i >= 0 {
		segs = segs[i+1:]
	}
	if len(segs) < 2 {
		return ""
	}
	return segs[1]
}

// ServeHTTP serves the Responses API (WebSocket upgrades and POSTs on any
// path ending in /responses) and deterministic answers for the rest of the
// API. A WebSocket upgrade anywhere else is refused: 400 on a known path,
// 404 on an unknown one.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ep, known := e.resolve(r.Method, r.URL.Path)
	if !isUpgrade(r) {
		e.serveCall(w, r, ep, known)
		return
	}
	switch {
	case !known:
		writeAPIError(w, errInvalidURL(r))
		return
	case ep.name != RouteResponsesCreate:
		writeAPIError(w, invalidRequest("", "", "WebSocket connections are only supported on /v1/responses."))
		return
	}
	if !e.authorized(r) {
		writeAPIError(w, errAPIKey())
		return
	}
	if !e.enter() {
		writeAPIError(w, errShuttingDown())
		return
	}
	defer e.wg.Done()
	e.serveWS(w, r)
}

func errInvalidURL(r *http.Request) *APIError {
	return errNotFound("Invalid URL (%s %s)", r.Method, r.URL.Path)
}

func errAPIKey() *APIError {
	return &APIError{Status: http.StatusUnauthorized, Type: TypeInvalidRequest, Code: CodeInvalidAPIKey,
		Message: "Incorrect API key provided."}
}

func errShuttingDown() *APIError {
	return &APIError{Status: http.StatusServiceUnavailable, Type: TypeServerError, Message: "The emulator is shutting down."}
}

func (e *Emulator) authorized(r *http.Request) bool {
	return e.cfg.apiKey == "" || r.Header.Get("Authorization") == "Bearer "+e.cfg.apiKey
}

// statusWriter remembers the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush lets SSE handlers push each event out as it is written.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// serveCall answers one plain HTTP request, recording it: method, path,
// query, headers, body, status and whether the client went away early.
func (e *Emulator) serveCall(w http.ResponseWriter, r *http.Request, ep endpoint, known bool) {
	e.count.httpRequests.Add(1)
	rec := &HTTPRecord{
		Seq:    int(e.httpSeq.Add(1)),
		Method: r.Method,
		Path:   r.URL.Path,
		Query:  r.URL.RawQuery,
		Header: r.Header.Clone(),
		Route:  ep.name,
		done:   make(chan struct{}),
	}
	e.addHTTP(rec)
	sw := &statusWriter{ResponseWriter: w}
	h := sw.Header()
	for k, v := range r.Header {
		if strings.HasPrefix(k, "X-") && !strings.HasPrefix(k, "X-Forwarded-") && k != "X-Real-Ip" {
			h[EchoHeaderPrefix+k] = slices.Clone(v)
		}
	}
	h.Set(RouteHeader, ep.name)
	// The deferred bookkeeping also runs when a fault aborts the handler
	// with http.ErrAbortHandler, which then keeps unwinding.
	defer func() {
		cancelled := r.Context().Err() != nil
		if cancelled {
			e.count.clientCancels.Add(1)
		}
		e.finishHTTP(rec, sw.status, cancelled)
	}()
	switch {
	case !known:
		writeAPIError(sw, errInvalidURL(r))
		return
	case ep.handle == nil:
		sw.Header().Set("Allow", ep.allow)
		msg := fmt.Sprintf("Method %s is not allowed on %s; use %s.", r.Method, r.URL.Path, ep.allow)
		if ep.name == RouteResponsesCreate {
			msg = "Use POST, or GET with a WebSocket upgrade."
		}
		writeAPIError(sw, &APIError{Status: http.StatusMethodNotAllowed, Type: TypeInvalidRequest, Message: msg})
		return
	case !e.authorized(r):
		writeAPIError(sw, errAPIKey())
		return
	}
	if !e.enter() {
		writeAPIError(sw, errShuttingDown())
		return
	}
	defer e.wg.Done()
	body, err := io.ReadAll(http.MaxBytesReader(sw, r.Body, e.cfg.maxFrame))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			e.count.errors.Add(1)
			writeAPIError(sw, &APIError{Status: http.StatusRequestEntityTooLarge, Type: TypeInvalidRequest,
				Message: "The request body is too large."})
		}
		return
	}
	e.updateHTTP(rec, func(h *HTTPRecord) { h.Body = body })
	ep.handle(&call{w: sw, r: r, body: body, arg: pathArg(r.URL.Path), rec: rec})
}

func (e *Emulator) addHTTP(h *HTTPRecord) {
	if !e.cfg.record {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.httpRecs = append(e.httpRecs, h)
}

func (e *Emulator) updateHTTP(h *HTTPRecord, fn func(*HTTPRecord)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	fn(h)
}

func (e *Emulator) finishHTTP(h *HTTPRecord, status int, cancelled bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	h.Status = status
	h.Cancelled = cancelled
	close(h.done)
}

// writeJSON answers 200 with a JSON body.
func writeJSON(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// digest names a request's content, so the same request always gets the
// same ids: a direct and a proxied call can be compared byte for byte.
func digest(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// decodeBody decodes a JSON request body into v with the API's errors.
func decodeBody(body []byte, v any) *APIError {
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return decodeError(err)
		}
		return errInvalidJSON()
	}
	return nil
}

func (e *Emulator) listModels(c *call) {
	o := newObj(64*(len(e.cfg.models)+1)).str("object", "list")
	o.key("data")
	o.b = append(o.b, '[')
	for i, id := range e.cfg.models {
		if i > 0 {
			o.b = append(o.b, ',')
		}
		o.b = append(o.b, e.modelObject(id)...)
	}
	o.b = append(o.b, ']')
	writeJSON(c.w, o.done())
}

func (e *Emulator) modelObject(id string) []byte {
	return newObj(96).str("id", id).str("object", "model").num("created", e.epoch).str("owned_by", "openai").done()
}

func (e *Emulator) getModel(c *call) {
	if !slices.Contains(e.cfg.models, c.arg) {
		err := errNotFound("The model '%s' does not exist or you do not have access to it.", c.arg)
		err.Code = CodeModelNotFound
		writeAPIError(c.w, err)
		return
	}
	writeJSON(c.w, e.modelObject(c.arg))
}

// compact answers POST /v1/responses/compact: the input's user messages
// followed by one compaction item, as the API describes its output.
func (e *Emulator) compact(c *call) {
	var v struct {
		Model              string          `json:"model"`
		Input              json.RawMessage `json:"input"`
		PreviousResponseID string          `json:"previous_response_id"`
	}
	if err := decodeBody(c.body, &v); err != nil {
		writeAPIError(c.w, err)
		return
	}
	if v.Model == "" {
		writeAPIError(c.w, errMissingParam("model"))
		return
	}
	if v.PreviousResponseID != "" && e.lookupStored(v.PreviousResponseID) == nil {
		writeAPIError(c.w, ErrPreviousResponseNotFound(v.PreviousResponseID))
		return
	}
	sum := digest(c.body)
	var users []json.RawMessage
	if len(v.Input) > 0 && v.Input[0] == '"' {
		users = append(users, newObj(len(v.Input)+48).str("type", TypeMessage).str("role", "user").raw("content", v.Input, "").done())
	} else if len(v.Input) > 0 {
		var items []json.RawMessage
		if json.Unmarshal(v.Input, &items) != nil {
			writeAPIError(c.w, invalidRequest(CodeInvalidType, "input", "Invalid type for 'input': expected a string or an array."))
			return
		}
		for _, it := range items {
			var h wireItem
			if json.Unmarshal(it, &h) == nil && h.Role == "user" {
				users = append(users, compactRaw(it))
			}
		}
	}
	enc := "gAAAAB" + base64.StdEncoding.EncodeToString([]byte(sum))
	o := newObj(1024).str("id", "resp_emucmp"+sum[:16]).str("object", "response.compaction").num("created_at", e.epoch)
	o.key("output")
	o.b = append(o.b, '[')
	for _, u := range users {
		o.b = append(o.b, u...)
		o.b = append(o.b, ',')
	}
	o.b = append(o.b, newObj(len(enc)+64).str("id", "cmp_emu"+sum[16:32]).str("type", "compaction").str("encrypted_content", enc).done()...)
	o.b = append(o.b, ']')
	in := int64(len(c.body) / 4)
	out := int64(len(enc) / 4)
	o.raw("usage", usageJSON(in, 0, out, 0), "")
	writeJSON(c.w, o.done())
}

func usageJSON(in, cached, out, reasoning int64) []byte {
	return newObj(192).num("input_tokens", in).
		raw("input_tokens_details", newObj(32).num("cached_tokens", cached).done(), "").
		num("output_tokens", out).
		raw("output_tokens_details", newObj(32).num("reasoning_tokens", reasoning).done(), "").
		num("total_tokens", in+out).done()
}

// inputTokens answers POST /v1/responses/input_tokens with the emulator's
// four-bytes-a-token estimate of the input.
func (e *Emulator) inputTokens(c *call) {
	var v struct {
		Input        json.RawMessage `json:"input"`
		Instructions json.RawMessage `json:"instructions"`
		Tools        json.RawMessage `json:"tools"`
	}
	if err := decodeBody(c.body, &v); err != nil {
		writeAPIError(c.w, err)
		return
	}
	n := int64((len(v.Input)+len(v.Instructions)+len(v.Tools))/4 + 1)
	writeJSON(c.w, newObj(64).str("object", "response.input_tokens").num("input_tokens", n).done())
}

// storedResponse finds a response GET/DELETE/cancel/input_items may name:
// only stored (store:true) ones exist outside their connection.
func (e *Emulator) storedResponse(c *call) *response {
	r := e.lookupStored(c.arg)
	if r == nil {
		writeAPIError(c.w, errNotFound("Response with id '%s' not found.", c.arg))
	}
	return r
}

func (e *Emulator) getResponse(c *call) {
	if r := e.storedResponse(c); r != nil {
		writeJSON(c.w, r.final)
	}
}

func (e *Emulator) deleteResponse(c *call) {
	r := e.storedResponse(c)
	if r == nil {
		return
	}
	e.mu.Lock()
	delete(e.stored, r.id)
	e.storedOrder = slices.DeleteFunc(e.storedOrder, func(id string) bool { return id == r.id })
	e.mu.Unlock()
	writeJSON(c.w, newObj(96).str("id", r.id).str("object", "response").boolean("deleted", true).done())
}

// cancelResponse answers POST /v1/responses/{id}/cancel. Only background
// responses can be cancelled and the emulator makes none (emulator wording).
func (e *Emulator) cancelResponse(c *call) {
	if e.storedResponse(c) == nil {
		return
	}
	writeAPIError(c.w, invalidRequest("", "", "Only responses created with background=true can be cancelled."))
}

// inputItems answers GET /v1/responses/{id}/input_items: the headers of the
// items the response was generated from (chained context included), newest
// first unless order=asc, limit 20 (1-100), after an item id. Items sent
// without an id get one derived from the response and position.
func (e *Emulator) inputItems(c *call) {
	r := e.storedResponse(c)
	if r == nil {
		return
	}
	q := c.r.URL.Query()
	limit := 20
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 100 {
			writeAPIError(c.w, invalidRequest(CodeInvalidValue, "limit", "Invalid 'limit': integer below minimum value or above maximum value (1-100)."))
			return
		}
		limit = n
	}
	order := q.Get("order")
	if order == "" {
		order = "desc"
	}
	if order != "asc" && order != "desc" {
		writeAPIError(c.w, invalidRequest(CodeInvalidValue, "order", "Invalid value: '%s'. Supported values are: 'asc' and 'desc'.", order))
		return
	}
	type row struct {
		id   string
		body []byte
	}
	var rows []row
	for i, it := range r.context[:r.inputLen] {
		id := it.ID
		if id == "" {
			id = fmt.Sprintf("item_%s_%d", strings.TrimPrefix(r.id, "resp_"), i)
		}
		o := newObj(128).str("id", id).str("type", it.Type)
		if it.Role != "" {
			o.str("role", it.Role)
		}
		if it.CallID != "" {
			o.str("call_id", it.CallID)
		}
		if it.Name != "" {
			o.str("name", it.Name)
		}
		rows = append(rows, row{id, o.done()})
	}
	if order == "desc" {
		slices.Reverse(rows)
	}
	if after := q.Get("after"); after != "" {
		i := slices.IndexFunc(rows, func(x row) bool { return x.id == after })
		rows = rows[i+1:]
	}
	more := len(rows) > limit
	if more {
		rows = rows[:limit]
	}
	o := newObj(256*(len(rows)+1)).str("object", "list")
	o.key("data")
	o.b = append(o.b, '[')
	for i, x := range rows {
		if i > 0 {
			o.b = append(o.b, ',')
		}
		o.b = append(o.b, x.body...)
	}
	o.b = append(o.b, ']')
	if len(rows) > 0 {
		o.str("first_id", rows[0].id).str("last_id", rows[len(rows)-1].id)
	} else {
		o.raw("first_id", nil, "null").raw("last_id", nil, "null")
	}
	writeJSON(c.w, o.boolean("has_more", more).done())
}

// chatCompletions answers POST /v1/chat/completions with the configured
// text: one JSON object, or with "stream":true SSE chunks (role, text
// pieces, finish_reason, optional usage) ending in "data: [DONE]", each
// flushed on its own and WithChunkInterval apart.
func (e *Emulator) chatCompletions(c *call) {
	var v struct {
		Model         string            `json:"model"`
		Messages      []json.RawMessage `json:"messages"`
		Stream        bool              `json:"stream"`
		StreamOptions struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
	if err := decodeBody(c.body, &v); err != nil {
		writeAPIError(c.w, err)
		return
	}
	switch {
	case v.Model == "":
		writeAPIError(c.w, errMissingParam("model"))
		return
	case len(v.Messages) == 0:
		writeAPIError(c.w, errMissingParam("messages"))
		return
	}
	id := "chatcmpl-emu" + digest(c.body)[:24]
	text := e.cfg.chatText
	prompt := int64(len(c.body) / 4)
	completion := int64(len(text)/4 + 1)
	usage := newObj(96).num("prompt_tokens", prompt).num("completion_tokens", completion).num("total_tokens", prompt+completion).done()
	head := func(object string) *jw {
		return newObj(256).str("id", id).str("object", object).num("created", e.epoch).str("model", v.Model)
	}
	if !v.Stream {
		msg := newObj(len(text)+64).str("role", "assistant").str("content", text).raw("refusal", nil, "null").done()
		choice := newObj(len(msg)+96).num("index", 0).raw("message", msg, "").raw("logprobs", nil, "null").str("finish_reason", "stop").done()
		writeJSON(c.w, head("chat.completion").raw("choices", append(append([]byte{'['}, choice...), ']'), "").raw("usage", usage, "").done())
		return
	}
	chunk := func(delta []byte, finish string) []byte {
		ch := newObj(len(delta)+96).num("index", 0).raw("delta", delta, "{}").raw("logprobs", nil, "null")
		if finish != "" {
			ch.str("finish_reason", finish)
		} else {
			ch.raw("finish_reason", nil, "null")
		}
		o := head("chat.completion.chunk").raw("choices", append(append([]byte{'['}, ch.done()...), ']'), "")
		if v.StreamOptions.IncludeUsage {
			o.raw("usage", nil, "null")
		}
		return o.done()
	}
	chunks := [][]byte{chunk(newObj(48).str("role", "assistant").str("content", "").done(), "")}
	for _, piece := range splitText(text, e.cfg.textDeltas) {
		chunks = append(chunks, chunk(newObj(len(piece)+32).str("content", piece).done(), ""))
	}
	chunks = append(chunks, chunk(nil, "stop"))
	if v.StreamOptions.IncludeUsage {
		chunks = append(chunks, head("chat.completion.chunk").raw("choices", nil, "[]").raw("usage", usage, "").done())
	}
	chunks = append(chunks, []byte("[DONE]"))

	ctx := c.r.Context()
	h := c.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	c.w.WriteHeader(http.StatusOK)
	flusher, _ := c.w.(http.Flusher)
	for i, data := range chunks {
		if i > 0 && e.cfg.chunkEvery > 0 {
			t := time.NewTimer(e.cfg.chunkEvery)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-e.ctx.Done():
				// The emulator closing ends the stream as a client leaving would.
				t.Stop()
				return
			case <-t.C:
			}
		}
		if ctx.Err() != nil {
			return
		}
		buf := make([]byte, 0, len(data)+8)
		buf = append(buf, "data: "...)
		buf = append(buf, data...)
		buf = append(buf, '\n', '\n')
		if _, err := c.w.Write(buf); err != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}

// embeddingDims is the length of the emulator's embeddings.
const embeddingDims = 8

// embeddings answers POST /v1/embeddings with vectors derived from each
// input, as floats or, with encoding_format "base64", little-endian float32.
func (e *Emulator) embeddings(c *call) {
	var v struct {
		Model          string          `json:"model"`
		Input          json.RawMessage `json:"input"`
		EncodingFormat string          `json:"encoding_format"`
	}
	if err := decodeBody(c.body, &v); err != nil {
		writeAPIError(c.w, err)
		return
	}
	switch {
	case v.Model == "":
		writeAPIError(c.w, errMissingParam("model"))
		return
	case len(v.Input) == 0:
		writeAPIError(c.w, errMissingParam("input"))
		return
	case v.EncodingFormat != "" && v.EncodingFormat != "float" && v.EncodingFormat != "base64":
		writeAPIError(c.w, invalidRequest(CodeInvalidValue, "encoding_format", "Invalid value: '%s'. Supported values are: 'float' and 'base64'.", v.EncodingFormat))
		return
	}
	inputs := []json.RawMessage{v.Input}
	// A list of strings or of token lists is several inputs; a list of
	// numbers is one tokenised input.
	var list []json.RawMessage
	if v.Input[0] == '[' && json.Unmarshal(v.Input, &list) == nil && len(list) > 0 && (list[0][0] == '"' || list[0][0] == '[') {
		inputs = list
	}
	o := newObj(256*len(inputs)+128).str("object", "list")
	o.key("data")
	o.b = append(o.b, '[')
	for i, in := range inputs {
		if i > 0 {
			o.b = append(o.b, ',')
		}
		sum := sha256.Sum256(append([]byte(v.Model+"\x00"), compactRaw(in)...))
		vec := make([]float32, embeddingDims)
		for d := range vec {
			vec[d] = float32(int(sum[d])-128) / 128
		}
		item := newObj(256).str("object", "embedding").num("index", int64(i))
		if v.EncodingFormat == "base64" {
			raw := make([]byte, 4*len(vec))
			for d, f := range vec {
				binary.LittleEndian.PutUint32(raw[4*d:], math.Float32bits(f))
			}
			item.str("embedding", base64.StdEncoding.EncodeToString(raw))
		} else {
			arr := []byte{'['}
			for d, f := range vec {
				if d > 0 {
					arr = append(arr, ',')
				}
				arr = strconv.AppendFloat(arr, float64(f), 'g', -1, 32)
			}
			item.raw("embedding", append(arr, ']'), "")
		}
		o.b = append(o.b, item.done()...)
	}
	o.b = append(o.b, ']')
	tokens := int64(len(v.Input)/4 + 1)
	o.str("model", v.Model).raw("usage", newObj(64).num("prompt_tokens", tokens).num("total_tokens", tokens).done(), "")
	writeJSON(c.w, o.done())
}

// file is one upload kept by the emulator.
type file struct {
	id, name, purpose string
	data              []byte
}

func (e *Emulator) fileObject(f *file) []byte {
	return newObj(256).str("id", f.id).str("object", "file").num("bytes", int64(len(f.data))).
		num("created_at", e.epoch).str("filename", f.name).str("purpose", f.purpose).
		str("status", "processed").raw("expires_at", nil, "null").raw("status_details", nil, "null").done()
}

// uploadFile answers POST /v1/files (multipart: file and purpose). The id
// derives from the content, so the same upload gets the same id.
func (e *Emulator) uploadFile(c *call) {
	_, params, err := mime.ParseMediaType(c.r.Header.Get("Content-Type"))
	if err != nil || params["boundary"] == "" {
		writeAPIError(c.w, invalidRequest("", "", "Expected a multipart/form-data body with 'file' and 'purpose'."))
		return
	}
	form, err := multipart.NewReader(bytes.NewReader(c.body), params["boundary"]).ReadForm(e.cfg.maxFrame)
	if err != nil {
		writeAPIError(c.w, invalidRequest("", "", "Expected a multipart/form-data body with 'file' and 'purpose'."))
		return
	}
	defer func() { _ = form.RemoveAll() }()
	purpose := ""
	if p := form.Value["purpose"]; len(p) > 0 {
		purpose = p[0]
	}
	if purpose == "" {
		writeAPIError(c.w, errMissingParam("purpose"))
		return
	}
	fhs := form.File["file"]
	if len(fhs) == 0 {
		writeAPIError(c.w, errMissingParam("file"))
		return
	}
	fr, err := fhs[0].Open()
	if err != nil {
		writeAPIError(c.w, ErrServer())
		return
	}
	data, err := io.ReadAll(fr)
	_ = fr.Close()
	if err != nil {
		writeAPIError(c.w, ErrServer())
		return
	}
	f := &file{name: fhs[0].Filename, purpose: purpose, data: data}
	f.id = "file-emu" + digest([]byte(f.name), []byte(purpose), data)[:24]
	e.mu.Lock()
	if _, ok := e.files[f.id]; !ok {
		e.fileOrder = append(e.fileOrder, f.id)
	}
	e.files[f.id] = f
	e.mu.Unlock()
	writeJSON(c.w, e.fileObject(f))
}

func (e *Emulator) listFiles(c *call) {
	e.mu.Lock()
	files := make([]*file, 0, len(e.fileOrder))
	for _, id := range e.fileOrder {
		files = append(files, e.files[id])
	}
	e.mu.Unlock()
	if p := c.r.URL.Query().Get("purpose"); p != "" {
		files = slices.DeleteFunc(files, func(f *file) bool { return f.purpose != p })
	}
	o := newObj(256*(len(files)+1)).str("object", "list")
	o.key("data")
	o.b = append(o.b, '[')
	for i, f := range files {
		if i > 0 {
			o.b = append(o.b, ',')
		}
		o.b = append(o.b, e.fileObject(f)...)
	}
	o.b = append(o.b, ']')
	if len(files) > 0 {
		o.str("first_id", files[0].id).str("last_id", files[len(files)-1].id)
	} else {
		o.raw("first_id", nil, "null").raw("last_id", nil, "null")
	}
	writeJSON(c.w, o.boolean("has_more", false).done())
}

func (e *Emulator) lookupFile(c *call) *file {
	e.mu.Lock()
	f := e.files[c.arg]
	e.mu.Unlock()
	if f == nil {
		writeAPIError(c.w, errNotFound("No such File object: %s", c.arg))
	}
	return f
}

func (e *Emulator) getFile(c *call) {
	if f := e.lookupFile(c); f != nil {
		writeJSON(c.w, e.fileObject(f))
	}
}

func (e *Emulator) deleteFile(c *call) {
	f := e.lookupFile(c)
	if f == nil {
		return
	}
	e.mu.Lock()
	delete(e.files, f.id)
	e.fileOrder = slices.DeleteFunc(e.fileOrder, func(id string) bool { return id == f.id })
	e.mu.Unlock()
	writeJSON(c.w, newObj(96).str("id", f.id).str("object", "file").boolean("deleted", true).done())
}

func (e *Emulator) fileContent(c *call) {
	f := e.lookupFile(c)
	if f == nil {
		return
	}
	c.w.Header().Set("Content-Type", "application/octet-stream")
	c.w.WriteHeader(http.StatusOK)
	_, _ = c.w.Write(f.data)
}
