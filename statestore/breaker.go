package statestore

import (
	"sync"
	"time"
)

// breaker is a consecutive-failure circuit breaker. Closed, it lets every
// operation through; after threshold consecutive failures it opens and
// rejects operations, so a dead Redis costs a turn nothing instead of a
// timeout; after cooldown it lets a single probe through (half-open), whose
// result closes or re-opens it.
type breaker struct {
	threshold int
	cooldown  time.Duration
	onChange  func(from, to int)

	mu       sync.Mutex
	state    int
	fails    int
	openedAt time.Time
}

func newBreaker(threshold int, cooldown time.Duration, onChange func(from, to int)) *breaker {
	return &breaker{threshold: threshold, cooldown: cooldown, onChange: onChange}
}

// allow reports whether an operation may run. probe is true for the single
// operation admitted in the half-open state.
func (b *breaker) allow() (ok, probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case breakerClosed:
		return true, false
	case breakerOpen:
		if time.Since(b.openedAt) < b.cooldown {
			return false, false
		}
		b.setLocked(breakerHalfOpen)
		return true, true
	default: // half-open: the probe is in flight
		return false, false
	}
}

// success records a healthy answer from Redis.
func (b *breaker) success() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fails = 0
	if b.state != breakerClosed {
		b.setLocked(breakerClosed)
	}
}

// failure records a failed operation.
func (b *breaker) failure(probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fails++
	switch {
	case b.state == breakerHalfOpen && probe:
		b.openedAt = time.Now()
		b.setLocked(breakerOpen)
	case b.state == breakerClosed && b.fails >= b.threshold:
		b.openedAt = time.Now()
		b.setLocked(breakerOpen)
	}
}

// abandon releases a probe slot whose operation ended without telling
// anything about Redis (the caller's context was cancelled).
func (b *breaker) abandon(probe bool) {
	if !probe {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == breakerHalfOpen {
		// Back to open with the cooldown already elapsed: the next
		// operation probes again.
		b.openedAt = time.Now().Add(-b.cooldown)
		b.setLocked(breakerOpen)
	}
}

func (b *breaker) current() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

func (b *breaker) setLocked(to int) {
	from := b.state
	b.state = to
	if b.onChange != nil && from != to {
		b.onChange(from, to)
	}
}
