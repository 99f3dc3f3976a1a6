package gateway

import (
	"slices"
	"sync"

	"chainmend/engine"
	"chainmend/responses"
)

// maxItemKeys bounds what a lane remembers of the previous turn's context.
const maxItemKeys = 20000

// laneState is the turn state a client connection holds for one lane: what it remembers
// between turns, and what its upstream connection holds for the lane. It outranks the store:
// it is what this very connection saw. Everything a turn reads or writes of its connection
// is here, so a connection with several lanes keeps one of these per lane; an HTTP request is
// a connection of one turn on one lane.
type laneState struct {
	// name is the lane's stream_id; "" is the default lane.
	name string
	// mu guards anchorKnown, anchor, prev, cached and cachedOn against the connection's other
	// lanes, which read them to fork from this lane (forkView) or to forget it; the lane's
	// own worker writes them under mu (the set methods) and reads them without it.
	mu sync.Mutex
	// anchorKnown is set once this connection learnt the lane's anchor (a turn ended, or a
	// rule set or cleared it); until then the store answers.
	anchorKnown bool
	anchor      string
	// prev is the previous turn's payload on this lane.
	prev *engine.Previous
	// turns counts the lane's turns on this connection.
	turns int
	// cached is what upstream holds for the lane: the response a store:false create can
	// chain to. It is only true of the connection cachedOn; any other connection holds
	// nothing for the lane.
	cached   string
	cachedOn *upstreamConn
	// adopted is set once the lane's conversation was found by a response id (issue 17):
	// storeSession and storeLane then name its state instead of the headers' session and
	// the lane's own name.
	adopted                 bool
	storeSession, storeLane string
}

// setAnchor records the lane's anchor.
func (l *laneState) setAnchor(a string) {
	l.mu.Lock()
	l.anchorKnown, l.anchor = true, a
	l.mu.Unlock()
}

// setCached records what the upstream connection on holds for the lane.
func (l *laneState) setCached(responseID string, on *upstreamConn) {
	l.mu.Lock()
	l.cached, l.cachedOn = responseID, on
	l.mu.Unlock()
}

// adopt takes over what a fork takes from src (forkView): its anchor, previous payload and
// upstream cache, in one step, so that no other lane sees a half-forked lane.
func (l *laneState) adopt(src *laneState) {
	l.mu.Lock()
	l.anchorKnown, l.anchor, l.prev = true, src.anchor, src.prev
	l.cached, l.cachedOn = src.cached, src.cachedOn
	l.mu.Unlock()
}

// knowsAnchor reports, from another lane's goroutine, whether the lane learnt its anchor.
func (l *laneState) knowsAnchor() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.anchorKnown
}

// forkView returns, from another lane's goroutine, what a fork takes from the lane when the
// lane's anchor is prev (nil otherwise).
func (l *laneState) forkView(prev string) *laneState {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.anchorKnown || l.anchor != prev {
		return nil
	}
	return &laneState{name: l.name, anchorKnown: true, anchor: l.anchor, prev: l.prev, cached: l.cached, cachedOn: l.cachedOn}
}

// cachedBy returns what the upstream connection up holds for the lane.
func (l *laneState) cachedBy(up *upstreamConn) string {
	if up == nil || l.cachedOn != up {
		return ""
	}
	return l.cached
}

// remember records what this turn leaves for the next one on the lane: the payload's non-input
// fields and the keys of its full logical input (the chain's context, this input, and the
// response's output items). These are facts; what they mean is for the rules.
func (l *laneState) remember(sent *responses.Request, out []responses.Item) {
	p := &engine.Previous{FieldDigests: sent.FieldDigests()}
	if sent.PreviousResponseID() != "" && l.prev != nil {
		// The chain's keys grow in place: the previous Previous keeps its own length and is
		// only read, so extending its array is safe, and a long chain is not copied on every
		// turn (that was O(chain length) per turn, up to maxItemKeys strings).
		p.ItemKeys = l.prev.ItemKeys
	}
	for i := range sent.Items() {
		p.ItemKeys = append(p.ItemKeys, sent.Items()[i].Key())
	}
	for i := range out {
		p.ItemKeys = append(p.ItemKeys, out[i].Key())
	}
	if len(p.ItemKeys) > maxItemKeys {
		p.ItemKeys = slices.Clone(p.ItemKeys[len(p.ItemKeys)-maxItemKeys:])
	}
	l.mu.Lock()
	l.prev = p
	l.mu.Unlock()
}
