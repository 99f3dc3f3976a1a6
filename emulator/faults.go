package emulator

import (
	"maps"
	"time"
)

// CloseMode says how the emulator ends a connection it closes on purpose.
type CloseMode int

const (
	// CloseNormal sends a close frame with status 1000 and waits for the reply.
	CloseNormal CloseMode = iota
	// CloseGoingAway sends a close frame with status 1001.
	CloseGoingAway
	// CloseAbrupt drops the TCP connection without a close frame.
	CloseAbrupt
)

// CreateFault is what goes wrong with one response.create. The zero value
// changes nothing.
type CreateFault struct {
	// Error answers the create with this error, whatever the request holds.
	Error *APIError
	// Stall never answers; the connection stays open until the peer or the
	// emulator ends it.
	Stall bool
	// Delay waits this long before the first event (or the error).
	Delay time.Duration
	// EventInterval waits this long between events.
	EventInterval time.Duration
	// DropAfterEvents drops the connection abruptly after this many events of
	// the response have been written (0 disables).
	DropAfterEvents int
	// CloseAfter closes the connection (per Faults.CloseMode) after the
	// terminal event of this response.
	CloseAfter bool
}

func (f CreateFault) merge(o CreateFault) CreateFault {
	if o.Error != nil {
		f.Error = o.Error
	}
	f.Stall = f.Stall || o.Stall
	if o.Delay > 0 {
		f.Delay = o.Delay
	}
	if o.EventInterval > 0 {
		f.EventInterval = o.EventInterval
	}
	if o.DropAfterEvents > 0 {
		f.DropAfterEvents = o.DropAfterEvents
	}
	f.CloseAfter = f.CloseAfter || o.CloseAfter
	return f
}

// Faults is the emulator's fault configuration. Read it with Emulator.Faults
// and change it with Emulator.SetFaults or Emulator.UpdateFaults at any time;
// a create picks up the configuration in force when it arrives, the
// connection-level close faults included (they apply after its response).
type Faults struct {
	// All applies to every create.
	All CreateFault
	// Creates applies to the create with that sequence number (1-based,
	// counted over the whole emulator, WebSocket and HTTP), on top of All.
	Creates map[int]CreateFault
	// CloseAfterResponses closes a WebSocket connection once it has sent this
	// many terminal events (0 disables).
	CloseAfterResponses int
	// CloseAfterCompleted closes a WebSocket connection right after every
	// response.completed.
	CloseAfterCompleted bool
	// CloseMode selects how those closes happen.
	CloseMode CloseMode
}

func (f Faults) clone() Faults {
	f.Creates = maps.Clone(f.Creates)
	return f
}

func (f Faults) forCreate(seq int) CreateFault {
	cf := f.All
	if c, ok := f.Creates[seq]; ok {
		cf = cf.merge(c)
	}
	return cf
}

// Faults returns a copy of the fault configuration.
func (e *Emulator) Faults() Faults {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.faults.clone()
}

// SetFaults replaces the fault configuration.
func (e *Emulator) SetFaults(f Faults) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = f.clone()
}

// UpdateFaults changes the fault configuration under the emulator's lock, so
// concurrent updates do not lose each other's changes.
func (e *Emulator) UpdateFaults(fn func(*Faults)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f := e.faults.clone()
	fn(&f)
	e.faults = f
}

// FailCreate makes the create with sequence number seq fail with err.
func (e *Emulator) FailCreate(seq int, err *APIError) {
	e.setCreateFault(seq, func(cf *CreateFault) { cf.Error = err })
}

// FailNextCreate makes the next create that arrives fail with err and returns
// its sequence number.
func (e *Emulator) FailNextCreate(err *APIError) int {
	seq := int(e.createSeq.Load()) + 1
	e.FailCreate(seq, err)
	return seq
}

// SetCreateFault sets the fault for the create with sequence number seq.
func (e *Emulator) SetCreateFault(seq int, cf CreateFault) {
	e.setCreateFault(seq, func(c *CreateFault) { *c = cf })
}

func (e *Emulator) setCreateFault(seq int, fn func(*CreateFault)) {
	e.UpdateFaults(func(f *Faults) {
		if f.Creates == nil {
			f.Creates = make(map[int]CreateFault)
		}
		cf := f.Creates[seq]
		fn(&cf)
		f.Creates[seq] = cf
	})
}

// ClearFaults removes every fault.
func (e *Emulator) ClearFaults() { e.SetFaults(Faults{}) }
