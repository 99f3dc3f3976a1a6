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

func (c *Conn) add(d Direction, typ string, data []byte) *Frame {
	if !c.record {
		return nil
	}
	f := &Frame{Dir: d, Type: typ, Data: data, Time: time.Now()}
	c.mu.Lock()
	c.frames = append(c.frames, f)
	c.mu.Unlock()
	return f
}

func (c *Conn) setType(f *Frame, typ string) {
	if f == nil {
		return
	}
	c.mu.Lock()
	f.Type = typ
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
}

type counters struct {
	connections, open, creates, warmups, responses, completed atomic.Int64
	errors, acks, framesIn, framesOut, stalls, drops, closes  atomic.Int64
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
