package emulator

import (
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Direction tells whether the emulator received or sent a frame.
type Direction int

const (
	// Received is a frame from the client (for HTTP, the request body).
	Received Direction = iota
	// Sent is a frame to the client (for HTTP, one SSE event or the body).
	Sent
)

// String returns "in" or "out".
func (d Direction) String() string {
	if d == Received {
		return "in"
	}
	return "out"
}

// Frame is one recorded frame.
type Frame struct {
	Dir Direction
	// Type is the frame's "type" (the SSE event name over HTTP) once known;
	// an unparseable frame keeps it empty.
	Type string
	// Lane is the stream_id the frame carries ("" on the default lane):
	// the lane of a create or steer received, the lane of every event sent on
	// a named lane.
	Lane string
	// Data is the frame as on the wire, shared with the recording: do not
	// modify it.
	Data []byte
	Time time.Time
}

// Conn records one client connection: a WebSocket, or one HTTP request.
type Conn struct {
	seq       int
	transport string
	header    http.Header
	opened    time.Time
	record    bool
	done      chan struct{}

	mu       sync.Mutex
	frames   []*Frame
	closed   bool
	dropFn   func()
	closeErr string
}

// Seq returns the connection's sequence number (1-based, emulator-wide, in
// order of arrival; a failed handshake leaves a gap).
func (c *Conn) Seq() int { return c.seq }

// Transport returns "ws" or "http".
func (c *Conn) Transport() string { return c.transport }

// Header returns the handshake (or POST) request headers.
func (c *Conn) Header() http.Header { return c.header }

// Opened returns when the connection was accepted.
func (c *Conn) Opened() time.Time { return c.opened }

// Frames returns every recorded frame in wire order.
func (c *Conn) Frames() []Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Frame, len(c.frames))
	for i, f := range c.frames {
		out[i] = *f
	}
	return out
}

// Received returns the frames the client sent.
func (c *Conn) Received() []Frame { return c.filter(Received) }

// Sent returns the frames the emulator sent.
func (c *Conn) Sent() []Frame { return c.filter(Sent) }

// SentTypes returns the types of the sent frames, for compact assertions.
func (c *Conn) SentTypes() []string {
	var out []string
	for _, f := range c.Sent() {
		out = append(out, f.Type)
	}
	return out
}

// SentOn returns the frames sent on one lane ("" for the default lane), in
// wire order.
func (c *Conn) SentOn(lane string) []Frame {
	var out []Frame
	for _, f := range c.Sent() {
		if f.Lane == lane {
			out = append(out, f)
		}
	}
	return out
}

// SentTypesOn returns the types of the frames sent on one lane.
func (c *Conn) SentTypesOn(lane string) []string {
	var out []string
	for _, f := range c.SentOn(lane) {
		out = append(out, f.Type)
	}
	return out
}

func (c *Conn) filter(d Direction) []Frame {
	var out []Frame
	for _, f := range c.Frames() {
		if f.Dir == d {
			out = append(out, f)
		}
	}
	return out
}

// Closed reports whether the connection has ended.
func (c *Conn) Closed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// CloseReason describes why the connection ended, once it has.
func (c *Conn) CloseReason() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Drop resets the connection now, without a close frame, as a network
// failure would. It does nothing once the connection has ended.
func (c *Conn) Drop() {
	c.mu.Lock()
	fn := c.dropFn
	c.mu.Unlock()
	if fn != nil {
		fn()
	}
}

func (c *Conn) add(d Direction, typ, lane string, data []byte) *Frame {
	if !c.record {
		return nil
	}
	f := &Frame{Dir: d, Type: typ, Lane: lane, Data: data, Time: time.Now()}
	c.mu.Lock()
	c.frames = append(c.frames, f)
	c.mu.Unlock()
	return f
}

func (c *Conn) setType(f *Frame, typ, lane string) {
	if f == nil {
		return
	}
	c.mu.Lock()
	f.Type = typ
	f.Lane = lane
	c.mu.Unlock()
}

func (c *Conn) setDrop(fn func()) {
	c.mu.Lock()
	c.dropFn = fn
	c.mu.Unlock()
}

func (c *Conn) finish(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	c.closeErr = reason
	c.dropFn = nil
	close(c.done)
}

// Outcomes of a create, in Create.Outcome.
const (
	OutcomePending    = "pending"
	OutcomeCompleted  = StatusCompleted
	OutcomeIncomplete = StatusIncomplete
	OutcomeFailed     = StatusFailed
	OutcomeCancelled  = StatusCancelled
	OutcomeError      = "error"
	OutcomeStalled    = "stalled"
	OutcomeDropped    = "dropped"
)

// Create records one response.create (or POST) and what became of it.
type Create struct {
	// Seq is the create's sequence number (1-based, emulator-wide); Conn the
	// sequence number of its connection.
	Seq       int
	Conn      int
	Transport string
	Frame     []byte
	// Lane is the stream_id the create named ("" for the default lane; for a
	// refused create, the invalid value when it was a string).
	Lane string
	// Fork reports a create on a lane with no response yet that chained to
	// the latest response of lane ForkLane.
	Fork     bool
	ForkLane string
	// Successor reports a response the server started after a steer; it
	// is recorded as a create with Frame assembled from the steers.
	Successor bool
	// Steers are the ids of the accepted steering this create carries: what
	// response.steer.pending queued for the chained response (prepended to
	// Context), or a successor's whole input.
	Steers []string

	Model              string
	PreviousResponseID string
	Store              bool
	Generate           bool
	// Input holds the new items; Context the effective context as validated
	// (chained context, its output, then Input). Context is nil when the
	// request failed before it could be built.
	Input   []Item
	Context []Item

	// ResponseID is the answered response, empty if there was none.
	ResponseID string
	// Outcome is one of the Outcome constants.
	Outcome string
	// Error is the error answered, if any; Injected tells whether a fault
	// rather than validation produced it.
	Error    *APIError
	Injected bool
}

// InputRaw decodes the raw new input items of the create.
func (c Create) InputRaw() ([]json.RawMessage, error) { return rawInput(c.Frame) }

// Stats counts what the emulator has seen and done.
type Stats struct {
	Connections     int64
	OpenConnections int64
	Creates         int64
	Warmups         int64
	Responses       int64
	Completed       int64
	Errors          int64
	Acks            int64
	FramesIn        int64
	FramesOut       int64
	Stalls          int64
	Drops           int64
	FaultCloses     int64
	// Lanes counts named lanes opened; PeakInFlight is the most responses
	// one connection had in flight at once.
	Lanes        int64
	PeakInFlight int64
	// Steers, Injects and Interrupts count the control frames received;
	// Successors the responses started by steers.
	Steers     int64
	Injects    int64
	Interrupts int64
	Successors int64
	// HTTPRequests counts plain HTTP requests (every endpoint, including
	// POST /v1/responses); ClientCancels those whose client went away before
	// the answer was complete.
	HTTPRequests  int64
	ClientCancels int64
}

type counters struct {
	connections, open, creates, warmups, responses, completed atomic.Int64
	errors, acks, framesIn, framesOut, stalls, drops, closes  atomic.Int64
	lanes, peak, steers, injects, interrupts, successors      atomic.Int64
	httpRequests, clientCancels                               atomic.Int64
}

// Stats returns a snapshot of the counters.
func (e *Emulator) Stats() Stats {
	c := &e.count
	return Stats{
		Connections:     c.connections.Load(),
		OpenConnections: c.open.Load(),
		Creates:         c.creates.Load(),
		Warmups:         c.warmups.Load(),
		Responses:       c.responses.Load(),
		Completed:       c.completed.Load(),
		Errors:          c.errors.Load(),
		Acks:            c.acks.Load(),
		FramesIn:        c.framesIn.Load(),
		FramesOut:       c.framesOut.Load(),
		Stalls:          c.stalls.Load(),
		Drops:           c.drops.Load(),
		FaultCloses:     c.closes.Load(),
		Lanes:           c.lanes.Load(),
		PeakInFlight:    c.peak.Load(),
		Steers:          c.steers.Load(),
		Injects:         c.injects.Load(),
		Interrupts:      c.interrupts.Load(),
		Successors:      c.successors.Load(),
		HTTPRequests:    c.httpRequests.Load(),
		ClientCancels:   c.clientCancels.Load(),
	}
}

// Conn returns the connection with sequence number seq (1-based), or nil.
func (e *Emulator) Conn(seq int) *Conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	// Connections are appended as their seq is taken, but two may race
	// between the two steps, so search instead of indexing.
	for _, c := range e.conns {
		if c.seq == seq {
			return c
		}
	}
	return nil
}

// Conns returns every connection in arrival order.
func (e *Emulator) Conns() []*Conn {
	e.mu.Lock()
	out := slices.Clone(e.conns)
	e.mu.Unlock()
	slices.SortFunc(out, func(a, b *Conn) int { return a.seq - b.seq })
	return out
}

// Creates returns a copy of every create record in arrival order.
func (e *Emulator) Creates() []Create {
	e.mu.Lock()
	out := make([]Create, len(e.creates))
	for i, c := range e.creates {
		out[i] = *c
	}
	e.mu.Unlock()
	slices.SortFunc(out, func(a, b Create) int { return a.Seq - b.Seq })
	return out
}

// CreateBySeq returns the create with sequence number seq.
func (e *Emulator) CreateBySeq(seq int) (Create, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.creates {
		if c.Seq == seq {
			return *c, true
		}
	}
	return Create{}, false
}

// newConn records a connection whose sequence number was taken with
// nextConnSeq when the request arrived, so numbers follow arrival order even
// when handshakes finish out of order.
func (e *Emulator) newConn(seq int, transport string, h http.Header) *Conn {
	c := &Conn{
		transport: transport,
		header:    h.Clone(),
		opened:    time.Now(),
		record:    e.cfg.record,
		done:      make(chan struct{}),
	}
	e.count.connections.Add(1)
	e.count.open.Add(1)
	c.seq = seq
	if e.cfg.record {
		e.mu.Lock()
		e.conns = append(e.conns, c)
		e.mu.Unlock()
	}
	return c
}

func (e *Emulator) nextConnSeq() int { return int(e.connSeq.Add(1)) }

func (e *Emulator) endConn(c *Conn, reason string) {
	e.count.open.Add(-1)
	c.finish(reason)
}

// addCreate stores the record; later updates go through updateCreate so that
// readers never see a half-written record.
func (e *Emulator) addCreate(c *Create) {
	if !e.cfg.record {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.creates = append(e.creates, c)
}

func (e *Emulator) updateCreate(c *Create, fn func(*Create)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	fn(c)
}

// Control records one response.steer, response.inject or response.interrupt
// frame and what the emulator made of it.
type Control struct {
	Conn int
	// Type is the frame type.
	Type string
	// ResponseID is the response the frame named (previous_response_id of a
	// steer).
	ResponseID string
	// Lane is the lane of the named response, once known.
	Lane string
	// Outcome is, for a steer, "accepted", "pending", "steered" (a successor
	// started), "applied" (a continuation carried the pending steering) or
	// "failed"; for an inject, "created", "failed" or "error"
	// (error frame); for an interrupt, "interrupted", "ignored" (the response
	// had just ended) or "error".
	Outcome string
	// SteerID is the id issued to an accepted steer; Code the error code of
	// a failure.
	SteerID string
	Code    string
	Frame   []byte
}

// Controls returns a copy of every control record in arrival order.
func (e *Emulator) Controls() []Control {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Control, len(e.controls))
	for i, c := range e.controls {
		out[i] = *c
	}
	return out
}

// addControl stores a control record (when recording) and returns it for
// later updates; the record is private to the caller until then.
func (e *Emulator) addControl(c *Control) *Control {
	if !e.cfg.record {
		return c
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.controls = append(e.controls, c)
	return c
}

func (e *Emulator) updateControl(c *Control, fn func(*Control)) {
	if c == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	fn(c)
}

func (e *Emulator) updateControls(steers []*steer, outcome string) {
	for _, st := range steers {
		e.updateControl(st.rec, func(c *Control) { c.Outcome = outcome })
	}
}
