package statestore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Subscription timing: a silent connection is pinged after pingEvery and taken
// for lost when nothing (not even the pong) arrives within pongWait of the ping;
// a lost subscription is re-established with a backoff up to maxBackoff.
// pongWait is generous on purpose: a slow Redis (issue 11: 500 ms per command)
// keeps its subscription, and so the local tier, which every restored
// subscription flushes; a dead one is found within pingEvery + pongWait.
const (
	pingEvery   = time.Second
	pongWait    = 3 * time.Second
	minBackoff  = 50 * time.Millisecond
	maxBackoff  = 2 * time.Second
	pingTimeout = 500 * time.Millisecond // to write the ping
)

// subscribeLoop keeps this instance subscribed to the invalidation channel
// until ctx ends. Every (re)subscription after the first flushes the local
// tier: announcements sent while the subscription was down are lost, so any
// copy Redis holds may be stale.
func (s *Tiered) subscribeLoop(ctx context.Context) {
	defer close(s.subDone)
	defer s.setSubLive(false)
	select {
	case <-s.verified: // the subscription needs the client that fits
	case <-ctx.Done():
		return
	}
	subscribedBefore := false
	live := false // logs a loss once per outage, not once per retry
	backoff := minBackoff
	readyOnce := false
	for ctx.Err() == nil {
		ps := s.openSubscription(ctx)
		if ps == nil {
			return
		}
		var pinged time.Time // when the unanswered ping went; zero: none
	receive:
		for {
			msg, err := ps.ReceiveTimeout(ctx, pingEvery)
			if err != nil {
				if ctx.Err() != nil {
					break receive
				}
				if isTimeout(err) {
					switch {
					case pinged.IsZero():
						// The pong arrives as a message, like any other.
						pctx, cancel := context.WithTimeout(ctx, pingTimeout)
						err = ps.Ping(pctx)
						cancel()
						if err == nil {
							pinged = time.Now()
							continue
						}
					case time.Since(pinged) < pongWait:
						continue
					default:
						err = fmt.Errorf("no answer to a ping within %s: %w", pongWait, err)
					}
				}
				s.metrics.redisErrors[opSubscribe].Inc()
				if live {
					s.log.Warn("invalidation subscription lost; will flush the local tier when it is back", "err", err)
					s.setSubLive(false)
				}
				live = false
				break receive
			}
			pinged = time.Time{} // anything received proves the connection alive
			switch m := msg.(type) {
			case *redis.Subscription:
				if m.Kind != "subscribe" && m.Kind != "ssubscribe" {
					// The server dropped us (for example the channel's
					// slot moved): subscribe afresh.
					s.log.Warn("invalidation subscription ended by the server", "kind", m.Kind)
					live = false
					s.setSubLive(false)
					break receive
				}
				if subscribedBefore {
					n := s.local.flush()
					s.metrics.flushes.Inc()
					s.log.Info("invalidation subscription restored; local tier flushed", "dropped", n)
					s.kickWriteback()
				}
				subscribedBefore, live = true, true
				s.setSubLive(true)
				backoff = minBackoff
				if !readyOnce {
					readyOnce = true
					close(s.subReady)
				}
			case *redis.Message:
				s.invalidate(m.Payload)
			}
		}
		s.setSubscription(nil)
		_ = ps.Close()
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// openSubscription starts a (sharded on Cluster) subscription. The
// confirmation arrives through Receive.
func (s *Tiered) openSubscription(ctx context.Context) *redis.PubSub {
	var ps *redis.PubSub
	if s.sharded() {
		ps = s.client().SSubscribe(ctx, s.cfg.channel)
	} else {
		ps = s.client().Subscribe(ctx, s.cfg.channel)
	}
	if !s.setSubscription(ps) {
		_ = ps.Close()
		return nil
	}
	return ps
}

// setSubscription records the live subscription for Close; it refuses a new
// one once the store is closing.
func (s *Tiered) setSubscription(ps *redis.PubSub) bool {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if ps != nil && s.closed.Load() {
		return false
	}
	s.sub = ps
	return true
}

// invalidate drops the local copies another instance announced as changed.
func (s *Tiered) invalidate(payload string) {
	from, keys, err := decodeInvalidation(payload)
	if err != nil {
		s.metrics.redisErrors[opSubscribe].Inc()
		s.log.Debug("malformed invalidation message ignored")
	}
	if from == s.cfg.instanceID {
		return // our own write: the local tier already has it
	}
	n, ok := s.heard.Load(from)
	if !ok {
		n, _ = s.heard.LoadOrStore(strings.Clone(from), new(atomic.Int64))
	}
	n.(*atomic.Int64).Add(1)
	contested := false
	for _, k := range keys {
		if s.local.invalidate(k) {
			contested = true
		}
	}
	if contested {
		s.kickWriteback()
	}
	s.metrics.invalReceived.Add(float64(len(keys)))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
