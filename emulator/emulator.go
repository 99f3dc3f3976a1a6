package emulator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	transportWS   = "ws"
	transportHTTP = "http"
)

// Defaults of the options.
const (
	DefaultConnectionLimit      = 60 * time.Minute
	DefaultTextDeltas           = 8
	DefaultEncryptedContentSize = 512
	DefaultMaxFrameBytes        = 32 << 20
	DefaultStoreCapacity        = 10000
	DefaultChatText             = "ok"
	defaultStartupListenAddr    = "127.0.0.1:0"
)

// DefaultModels is what GET /v1/models lists unless WithModels says otherwise.
var DefaultModels = []string{"gpt-5.5", "gpt-5.5-mini", "text-embedding-3-small"}

type config struct {
	script      Script
	connLimit   time.Duration
	textDeltas  int
	encSize     int
	maxFrame    int64
	storeCap    int
	record      bool
	apiKey      string
	compression bool
	faults      Faults
	logger      *slog.Logger
	interrupt   InterruptReading
	models      []string
	chatText    string
	chunkEvery  time.Duration
}

// Option configures an Emulator.
type Option func(*config)

// WithScript sets the script that answers creates; the default answers
// every turn with the text "ok".
func WithScript(s Script) Option { return func(c *config) { c.script = s } }

// WithConnectionLimit sets the age at which a WebSocket connection receives
// websocket_connection_limit_reached and is closed; 0 disables the cap.
func WithConnectionLimit(d time.Duration) Option { return func(c *config) { c.connLimit = d } }

// WithTextDeltas sets how many response.output_text.delta events a message is
// split into (at most one per rune).
func WithTextDeltas(n int) Option { return func(c *config) { c.textDeltas = n } }

// WithEncryptedContentSize sets the length of generated encrypted_content.
func WithEncryptedContentSize(n int) Option { return func(c *config) { c.encSize = n } }

// WithMaxFrameBytes sets the largest accepted frame or body; a larger
// WebSocket frame closes the connection with 1009.
func WithMaxFrameBytes(n int64) Option { return func(c *config) { c.maxFrame = n } }

// WithStoreCapacity bounds how many store:true responses are kept; the
// oldest are forgotten first.
func WithStoreCapacity(n int) Option { return func(c *config) { c.storeCap = n } }

// WithRecording turns recording of connections, frames and creates on or off.
// Load tests turn it off so memory stays flat; counters keep working.
func WithRecording(on bool) Option { return func(c *config) { c.record = on } }

// WithAPIKey makes the emulator demand "Authorization: Bearer key" on every
// handshake and POST, answering 401 otherwise.
func WithAPIKey(key string) Option { return func(c *config) { c.apiKey = key } }

// WithCompression negotiates permessage-deflate when the client offers it,
// as Codex does.
func WithCompression(on bool) Option { return func(c *config) { c.compression = on } }

// WithFaults sets the initial fault configuration.
func WithFaults(f Faults) Option { return func(c *config) { c.faults = f } }

// WithLogger sets where the emulator logs connection events; the default
// discards them.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// InterruptReading selects how a response.interrupt ends a response. Which
// reading the real API follows is unverified, so tests can run against each.
// The zero value is the default reading.
type InterruptReading struct {
	// Cancel ends the response with response.cancelled (status "cancelled")
	// instead of response.incomplete with incomplete_details.reason
	// "interrupted".
	Cancel bool
	// DiscardCalls drops the calls the response had already emitted from its
	// output, so nothing is owed for them and answering them is an orphan
	// output. By default they stay in the output and pending: the next create
	// must answer them.
	DiscardCalls bool
}

// WithInterrupt selects the interrupt reading.
func WithInterrupt(r InterruptReading) Option { return func(c *config) { c.interrupt = r } }

// WithModels sets the model ids GET /v1/models lists.
func WithModels(ids ...string) Option { return func(c *config) { c.models = ids } }

// WithChatText sets the assistant text POST /v1/chat/completions answers.
func WithChatText(text string) Option { return func(c *config) { c.chatText = text } }

// WithChunkInterval sets the pause between the chunks of a streamed chat
// completion, so a test can watch chunks arrive (and cancel) before the end.
func WithChunkInterval(d time.Duration) Option { return func(c *config) { c.chunkEvery = d } }

// Emulator is the Responses API stand-in. It is an http.Handler; Start also
// serves it on a local port. All methods are safe for concurrent use.
type Emulator struct {
	cfg   config
	count counters

	createSeq, respSeq, itemSeq, callSeq, encSeq, connSeq atomic.Int64
	steerSeq, httpSeq                                     atomic.Int64
	// epoch stamps the deterministic answers of the other endpoints, so the
	// same request gets the same bytes for the emulator's whole life.
	epoch int64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex
	closed      bool
	faults      Faults
	script      Script
	conns       []*Conn
	creates     []*Create
	responses   map[string]*response
	stored      map[string]*response
	storedOrder []string
	storedItems map[string]Item
	live        map[*Conn]func()
	controls    []*Control
	httpRecs    []*HTTPRecord
	files       map[string]*file
	fileOrder   []string

	srv       *http.Server
	serveDone chan struct{}
	baseURL   string
}

// New returns an emulator; call Start to serve it, or mount it as a handler.
func New(opts ...Option) *Emulator {
	cfg := config{
		script:     Reply("ok"),
		connLimit:  DefaultConnectionLimit,
		textDeltas: DefaultTextDeltas,
		encSize:    DefaultEncryptedContentSize,
		maxFrame:   DefaultMaxFrameBytes,
		storeCap:   DefaultStoreCapacity,
		record:     true,
		models:     DefaultModels,
		chatText:   DefaultChatText,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.script == nil {
		cfg.script = Reply("ok")
	}
	if cfg.logger == nil {
		cfg.logger = slog.New(slog.DiscardHandler)
	}
	if cfg.encSize < 16 {
		cfg.encSize = 16
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Emulator{
		cfg:         cfg,
		ctx:         ctx,
		cancel:      cancel,
		faults:      cfg.faults.clone(),
		script:      cfg.script,
		responses:   make(map[string]*response),
		stored:      make(map[string]*response),
		storedItems: make(map[string]Item),
		live:        make(map[*Conn]func()),
		files:       make(map[string]*file),
		epoch:       time.Now().Unix(),
	}
}

// SetScript replaces the script for creates that arrive from now on.
func (e *Emulator) SetScript(s Script) {
	if s == nil {
		s = Reply("ok")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.script = s
}

func (e *Emulator) currentScript() Script {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.script
}

// Start serves the emulator on a free loopback port.
func (e *Emulator) Start() error { return e.Listen(defaultStartupListenAddr) }

// Listen serves the emulator on addr until Close.
func (e *Emulator) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("emulator listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: e, ReadHeaderTimeout: 10 * time.Second}
	e.mu.Lock()
	if e.closed || e.srv != nil {
		e.mu.Unlock()
		ln.Close()
		return errors.New("emulator already started or closed")
	}
	e.srv = srv
	e.serveDone = make(chan struct{})
	e.baseURL = "http://" + ln.Addr().String()
	done := e.serveDone
	e.mu.Unlock()
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return nil
}

// TB is the part of testing.TB StartTest needs; it avoids importing testing
// into non-test code.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// StartTest starts an emulator for a test and closes it when the test ends.
func StartTest(t TB, opts ...Option) *Emulator {
	t.Helper()
	e := New(opts...)
	if err := e.Start(); err != nil {
		t.Fatalf("start emulator: %v", err)
	}
	t.Cleanup(e.Close)
	return e
}

// URL returns the base URL (http://host:port) after Start.
func (e *Emulator) URL() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.baseURL
}

// HTTPURL returns the POST endpoint, http://host:port/v1/responses.
func (e *Emulator) HTTPURL() string { return e.URL() + "/v1/responses" }

// WebSocketURL returns the WebSocket endpoint, ws://host:port/v1/responses.
func (e *Emulator) WebSocketURL() string {
	return "ws" + strings.TrimPrefix(e.URL(), "http") + "/v1/responses"
}

// Close stops serving, ends every open connection (including those of a
// server the emulator is mounted in) and waits for its goroutines.
func (e *Emulator) Close() {
	e.mu.Lock()
	e.closed = true
	srv, serveDone := e.srv, e.serveDone
	closers := make([]func(), 0, len(e.live))
	for _, fn := range e.live {
		closers = append(closers, fn)
	}
	e.mu.Unlock()
	e.cancel()
	for _, fn := range closers {
		fn()
	}
	if srv != nil {
		_ = srv.Close()
		<-serveDone
	}
	e.wg.Wait()
}

// ResetConnections drops every open connection abruptly, as a network fault.
func (e *Emulator) ResetConnections() {
	e.mu.Lock()
	closers := make([]func(), 0, len(e.live))
	for _, fn := range e.live {
		closers = append(closers, fn)
	}
	e.mu.Unlock()
	e.count.drops.Add(int64(len(closers)))
	for _, fn := range closers {
		fn()
	}
}

// enter registers a handler goroutine unless the emulator is closed, so Close
// never waits on a WaitGroup that is still growing.
func (e *Emulator) enter() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.wg.Add(1)
	return true
}

// track lets Close and ResetConnections end a live connection.
func (e *Emulator) track(c *Conn, closer func()) {
	e.mu.Lock()
	e.live[c] = closer
	e.mu.Unlock()
}

func (e *Emulator) untrack(c *Conn) {
	e.mu.Lock()
	delete(e.live, c)
	e.mu.Unlock()
}

func isUpgrade(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

func writeAPIError(w http.ResponseWriter, err *APIError) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(err.status())
	_, _ = w.Write(err.HTTPBody())
}

// exchange is one create on its way through validation and generation.
type exchange struct {
	rec      *Create
	p        *parsedCreate
	prev     *response
	ctx      []Item
	fault    CreateFault
	err      *APIError
	injected bool
	header   http.Header
	// steers is the accepted steering this exchange carries: queued for the
	// chained response, or, for a successor, its whole input.
	steers []*steer
	// closing holds the connection-level faults in force when the create
	// arrived, so a test that changes them after reading a terminal event
	// does not race the response it just read.
	closing Faults
}

// begin validates a create against the emulator's state. sc (nil over HTTP)
// holds what the create's lane may chain to: its latest response, and for a
// lane that has produced nothing yet, the latest responses of the other
// lanes (a fork). Stored responses chain from anywhere.
func (e *Emulator) begin(conn *Conn, transport string, frame []byte, p *parsedCreate, perr *APIError, sc *scope) *exchange {
	seq := int(e.createSeq.Add(1))
	e.count.creates.Add(1)
	fault, closing := e.faultsFor(seq)
	x := &exchange{
		rec:     &Create{Seq: seq, Conn: conn.seq, Transport: transport, Frame: frame, Outcome: OutcomePending, Lane: sc.laneName()},
		p:       p,
		fault:   fault,
		closing: closing,
		header:  conn.header,
	}
	err := perr
	if err == nil {
		err = checkTop(p, transport)
	}
	if err == nil && p.prevID != "" {
		switch {
		case sc != nil && sc.cached != nil && sc.cached.id == p.prevID:
			x.prev = sc.cached
			x.steers = sc.pre
		default:
			if sc != nil && sc.fork != nil {
				if r, from, ok := sc.fork(p.prevID); ok {
					x.prev = r
					x.rec.Fork, x.rec.ForkLane = true, from
				}
			}
			if x.prev == nil {
				x.prev = e.lookupStored(p.prevID)
			}
			if x.prev == nil {
				err = ErrPreviousResponseNotFound(p.prevID)
			}
		}
	}
	if err == nil {
		err = resolveInput(p, e.lookupItem)
	}
	if err == nil {
		if x.prev != nil {
			pre := steerItems(x.steers)
			x.ctx = make([]Item, 0, len(x.prev.context)+len(pre)+len(p.input))
			x.ctx = append(x.ctx, x.prev.context...)
			x.ctx = append(x.ctx, pre...)
			x.ctx = append(x.ctx, p.input...)
		} else {
			x.ctx = p.input
		}
		err = checkContext(x.ctx)
	}
	if p != nil {
		x.rec.Model = p.wire.Model
		x.rec.PreviousResponseID = p.prevID
		x.rec.Store = p.store
		x.rec.Generate = p.generate
		x.rec.Input = p.input
		x.rec.Context = x.ctx
		x.rec.Steers = steerIDs(x.steers)
	}
	x.settleError(err)
	e.addCreate(x.rec)
	return x
}

// faultsFor returns the fault of create seq and the connection-level close
// faults, read together when the create arrives.
func (e *Emulator) faultsFor(seq int) (CreateFault, Faults) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f := e.faults
	return f.forCreate(seq), Faults{
		CloseAfterResponses: f.CloseAfterResponses,
		CloseAfterCompleted: f.CloseAfterCompleted,
		CloseMode:           f.CloseMode,
	}
}

// settleError records the validation error, unless a fault overrides it.
func (x *exchange) settleError(err *APIError) {
	x.err = err
	if x.fault.Error != nil {
		x.err = x.fault.Error
		x.injected = true
	}
	if x.err != nil {
		x.rec.Outcome = OutcomeError
		x.rec.Error = x.err
		x.rec.Injected = x.injected
	}
}

// refuse records a create that never reached a lane (invalid stream_id, lane
// limit); lane is the stream_id it named, when it was a string.
func (e *Emulator) refuse(conn *Conn, frame []byte, p *parsedCreate, lane *string, err *APIError) {
	seq := int(e.createSeq.Add(1))
	e.count.creates.Add(1)
	rec := &Create{Seq: seq, Conn: conn.seq, Transport: transportWS, Frame: frame, Outcome: OutcomeError, Error: err}
	if lane != nil {
		rec.Lane = *lane
	}
	if p != nil {
		rec.Model = p.wire.Model
		rec.PreviousResponseID = p.prevID
		rec.Store = p.store
		rec.Generate = p.generate
		rec.Input = p.input
	}
	e.addCreate(rec)
}

// beginSuccessor prepares the response the server starts after a steer: the
// steered request's settings, chained to r, with the steering as input. It
// takes a create sequence number, so faults can target it.
func (e *Emulator) beginSuccessor(conn *Conn, parent *exchange, r *response, steers []*steer, lane string) *exchange {
	seq := int(e.createSeq.Add(1))
	e.count.creates.Add(1)
	e.count.successors.Add(1)
	fault, closing := e.faultsFor(seq)
	p := *parent.p
	p.prevID = r.id
	p.generate = true
	p.input = steerItems(steers)
	frame := steerFrame(r.id, steers)
	x := &exchange{
		rec: &Create{
			Seq: seq, Conn: conn.seq, Transport: transportWS, Frame: frame, Outcome: OutcomePending,
			Lane: lane, Successor: true, Model: p.wire.Model, PreviousResponseID: r.id, Store: p.store,
			Generate: true, Input: p.input, Steers: steerIDs(steers),
		},
		p:       &p,
		prev:    r,
		fault:   fault,
		closing: closing,
		header:  parent.header,
		steers:  steers,
	}
	x.ctx = make([]Item, 0, len(r.context)+len(p.input))
	x.ctx = append(x.ctx, r.context...)
	x.ctx = append(x.ctx, p.input...)
	x.rec.Context = x.ctx
	x.settleError(checkContext(x.ctx))
	e.addCreate(x.rec)
	return x
}

// chainsTo reports whether the create referenced id, so a failure can evict it.
func (x *exchange) chainsTo(r *response) bool {
	return r != nil && x.p != nil && x.p.prevID == r.id
}

// runHooks connect a response to its WebSocket lane; run takes nil over HTTP.
type runHooks struct {
	// open registers the response before its first event and returns the
	// flight control frames act on.
	open func(r *response, t Turn, st *streamer) *flight
	// commit runs with the emulator's bookkeeping right before the terminal
	// event.
	commit func(r *response)
}

// run asks the script for a turn and streams the response. It returns the
// script's error answer, or a stream error (errDropped for a fault).
func (e *Emulator) run(ctx context.Context, x *exchange, out sink, h *runHooks) (*response, *APIError, error) {
	var turn Turn
	if x.p.generate {
		turn = e.callScript(x)
		if turn.Error != nil {
			return nil, turn.Error, nil
		}
	} else {
		e.count.warmups.Add(1)
	}
	r, items := e.newResponse(x, turn)
	if r.warmup {
		r.status = StatusCompleted
	}
	s := &streamer{ctx: ctx, sink: out, fault: x.fault, lane: x.rec.Lane}
	var f *flight
	if h != nil && h.open != nil {
		f = h.open(r, turn, s)
	}
	err := x.stream(s, r, items, f, e.cfg.interrupt, func() {
		e.count.responses.Add(1)
		if r.status == StatusCompleted {
			e.count.completed.Add(1)
		}
		e.remember(r, x.p.input)
		e.finish(x, r.status, r, nil)
		if h != nil && h.commit != nil {
			h.commit(r)
		}
	})
	return r, nil, err
}

// callScript shields the server from a panicking script: the create gets a
// server_error and the test sees the panic in the log instead of a crash.
func (e *Emulator) callScript(x *exchange) (t Turn) {
	defer func() {
		if v := recover(); v != nil {
			e.cfg.logger.Error("emulator script panicked", "create", x.rec.Seq, "panic", v)
			t = Turn{Error: ErrServer()}
		}
	}()
	req := &Request{
		Conn:               x.rec.Conn,
		Create:             x.rec.Seq,
		Transport:          x.rec.Transport,
		Model:              x.p.wire.Model,
		PreviousResponseID: x.p.prevID,
		Store:              x.p.store,
		Generate:           x.p.generate,
		Input:              x.p.input,
		Context:            x.ctx,
		Frame:              x.rec.Frame,
		Header:             x.header,
		Lane:               x.rec.Lane,
		Successor:          x.rec.Successor,
	}
	return e.currentScript().Turn(req)
}

// remember keeps a response for accessors and, when stored, for chaining
// from any connection and for item_reference lookups.
func (e *Emulator) remember(r *response, input []Item) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cfg.record {
		e.responses[r.id] = r
	}
	if !r.store || r.status == StatusFailed || e.cfg.storeCap <= 0 {
		return
	}
	e.stored[r.id] = r
	e.storedOrder = append(e.storedOrder, r.id)
	for _, it := range slices.Concat(input, r.items) {
		if it.ID != "" && it.Type != TypeItemReference {
			e.storedItems[it.ID] = it
			r.storedIDs = append(r.storedIDs, it.ID)
		}
	}
	for len(e.storedOrder) > e.cfg.storeCap {
		old := e.stored[e.storedOrder[0]]
		e.storedOrder = e.storedOrder[1:]
		delete(e.stored, old.id)
		for _, id := range old.storedIDs {
			delete(e.storedItems, id)
		}
	}
}

func (e *Emulator) lookupStored(id string) *response {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stored[id]
}

func (e *Emulator) lookupItem(id string) (Item, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	it, ok := e.storedItems[id]
	return it, ok
}

func (e *Emulator) finish(x *exchange, outcome string, r *response, err *APIError) {
	e.updateCreate(x.rec, func(c *Create) {
		c.Outcome = outcome
		if r != nil {
			c.ResponseID = r.id
		}
		if err != nil {
			c.Error = err
		}
	})
}

// ResponseInfo describes a response the emulator produced.
type ResponseInfo struct {
	ID     string
	Conn   int
	Create int
	// Lane is the stream_id the response ran on ("" for the default lane).
	Lane   string
	Status string
	// IncompleteReason is incomplete_details.reason of an incomplete
	// response: "steered", "interrupted" or "max_output_tokens".
	IncompleteReason string
	Store            bool
	Warmup           bool
	// Successor reports a response the server started after a steer.
	Successor          bool
	PreviousResponseID string
	// PendingCalls are the call ids of the output that the response's own
	// context does not answer: what a continuation must send outputs for.
	// Calls answered by response.inject are not pending.
	PendingCalls []string
	// Output holds the output items as sent in the terminal event.
	Output []json.RawMessage
	// Items holds their headers; Context what a continuation chains onto.
	Items   []Item
	Context []Item
}

// Response returns a response by id (only while recording is on).
func (e *Emulator) Response(id string) (ResponseInfo, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.responses[id]
	if !ok {
		return ResponseInfo{}, false
	}
	info := ResponseInfo{
		ID: r.id, Conn: r.conn, Create: r.createSeq, Lane: r.lane, Status: r.status, IncompleteReason: r.reason,
		Store: r.store, Warmup: r.warmup, Successor: r.successor, PreviousResponseID: r.prevID,
		Items: r.items, Context: r.context,
	}
	for _, c := range owedCalls(r) {
		info.PendingCalls = append(info.PendingCalls, c.CallID)
	}
	for _, o := range r.output {
		info.Output = append(info.Output, json.RawMessage(o))
	}
	return info, true
}

// Wait polls until cond holds for the counters or ctx ends, for tests that
// must not race the emulator's goroutines.
func (e *Emulator) Wait(ctx context.Context, cond func(Stats) bool) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for !cond(e.Stats()) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("emulator wait: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}
