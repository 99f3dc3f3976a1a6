package emulator

import (
	"encoding/json"
	"slices"
)

// Limits of one WebSocket connection, as the API enforces them.
const (
	// MaxInFlight is how many responses one connection streams at once;
	// further creates wait for a slot instead of being refused.
	MaxInFlight = 16
	// MaxLanes is how many distinct named lanes (stream_id values) one
	// connection may use; the default lane does not count.
	MaxLanes = 32

	maxStreamIDLen = 256
	// endedMemory bounds how many ended response ids a connection remembers
	// to tell "already completed" from "not found" in control replies.
	endedMemory = 4096
)

// parseLane validates a raw stream_id: 1-256 characters of letters, digits,
// '_', '-' and '.'. echo is the value to put on an invalid_stream_id frame,
// nil when the field is not a JSON string.
func parseLane(raw json.RawMessage) (name string, echo *string, ok bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", nil, false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", nil, false
	}
	return s, &s, validLane(s)
}

func validLane(s string) bool {
	if s == "" || len(s) > maxStreamIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-', c == '.':
		default:
			return false
		}
	}
	return true
}

// lane is one stream_id of a connection; name "" is the default lane. Its
// fields are guarded by the session mutex.
type lane struct {
	name string
	// queue holds creates waiting for the lane's worker, in arrival order.
	queue   []inbound
	running bool
	// last is the lane's latest response: the only store:false response a
	// create on this lane may chain to (nil after a failure evicted it).
	last *response
	// fresh reports that the lane has produced no response yet, which is
	// what lets its first create fork from another lane's latest response.
	fresh bool
	// steers holds accepted steering for last that waits for its tool
	// output (response.steer.pending); the create that continues last gets
	// it prepended.
	steers []*steer
}

// scope is what a WebSocket create may chain to besides stored responses.
type scope struct {
	lane   string
	cached *response
	// pre is the steering queued for cached.
	pre []*steer
	// fork finds another lane's latest response for a lane that has
	// produced nothing yet; nil otherwise.
	fork func(id string) (r *response, lane string, ok bool)
}

func (sc *scope) laneName() string {
	if sc == nil {
		return ""
	}
	return sc.lane
}

// laneFor returns the lane a create goes to, registering a new one. A
// named lane beyond MaxLanes is refused; nil without error means the
// connection is closing.
func (s *wsSession) laneFor(p *parsedCreate) (*lane, *APIError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, nil
	}
	name := ""
	if p.hasLane {
		name = p.lane
	}
	if ln, ok := s.lanes[name]; ok {
		return ln, nil
	}
	if name != "" {
		if s.named >= MaxLanes {
			return nil, ErrStreamLimit()
		}
		s.named++
		s.e.count.lanes.Add(1)
	}
	ln := &lane{name: name, fresh: true}
	s.lanes[name] = ln
	return ln, nil
}

// enqueue appends a create to its lane and starts the lane's worker when it
// is idle: creates on one lane run in order, lanes run side by side.
func (s *wsSession) enqueue(ln *lane, in inbound) {
	s.mu.Lock()
	ln.queue = append(ln.queue, in)
	start := !ln.running
	ln.running = true
	s.mu.Unlock()
	if start {
		s.wg.Add(1)
		go s.drain(ln)
	}
}

// drain runs the lane's creates one after the other until its queue is
// empty or the connection is done.
func (s *wsSession) drain(ln *lane) {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		if len(ln.queue) == 0 || s.ctx.Err() != nil {
			ln.running = false
			ln.queue = nil
			s.mu.Unlock()
			return
		}
		in := ln.queue[0]
		ln.queue[0] = inbound{}
		ln.queue = ln.queue[1:]
		s.mu.Unlock()
		if !s.create(ln, in) {
			s.mu.Lock()
			ln.running = false
			ln.queue = nil
			s.mu.Unlock()
			return
		}
	}
}

// scope snapshots what a create on ln may chain to.
func (s *wsSession) scope(ln *lane) *scope {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc := &scope{lane: ln.name, cached: ln.last}
	if ln.last != nil {
		sc.pre = slices.Clone(ln.steers)
	}
	if ln.fresh {
		sc.fork = func(id string) (*response, string, bool) {
			s.mu.Lock()
			defer s.mu.Unlock()
			for _, o := range s.lanes {
				if o != ln && o.last != nil && o.last.id == id {
					return o.last, o.name, true
				}
			}
			return nil, "", false
		}
	}
	return sc
}

// holderLocked returns the lane whose latest response is id.
func (s *wsSession) holderLocked(id string) *lane {
	for _, ln := range s.lanes {
		if ln.last != nil && ln.last.id == id {
			return ln
		}
	}
	return nil
}

// noteEndedLocked remembers that response id of lane ended on this
// connection, forgetting the oldest beyond endedMemory.
func (s *wsSession) noteEndedLocked(id, lane string) {
	if _, ok := s.ended[id]; ok {
		return
	}
	s.ended[id] = lane
	s.endedOrder = append(s.endedOrder, id)
	if len(s.endedOrder) > endedMemory {
		delete(s.ended, s.endedOrder[0])
		s.endedOrder = s.endedOrder[1:]
	}
}

// enterFlight counts a response slot taken and keeps the peak for Stats.
func (s *wsSession) enterFlight() {
	s.mu.Lock()
	s.inFlight++
	n := int64(s.inFlight)
	s.mu.Unlock()
	for {
		peak := s.e.count.peak.Load()
		if n <= peak || s.e.count.peak.CompareAndSwap(peak, n) {
			return
		}
	}
}

func (s *wsSession) leaveFlight() {
	s.mu.Lock()
	s.inFlight--
	s.mu.Unlock()
	<-s.slots
}
