package statestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// ErrRedisURL wraps a readiness or New error that waiting alone does not cure:
// the Redis URL does not fit the server (it names another kind of deployment,
// a replica, or a master the Sentinels do not monitor) or the server refused
// its credentials. The message names the URL form that fits. It takes a new
// URL or a change on the server's side; the store keeps asking, so the latter
// needs no restart.
var ErrRedisURL = errors.New("statestore: the redis URL does not fit the server")

// errUnverified reports an operation skipped because the store has not yet
// learnt what the deployment is (see detect.go).
var errUnverified = errors.New("statestore: redis not reached yet")

// Readiness timing.
const (
	// startProbeWait bounds the question New asks the deployment; an
	// unreachable Redis must not hold up the gateway's start.
	startProbeWait = 2 * time.Second
	// probeMinBackoff and probeMaxBackoff space the questions after that,
	// until one is answered.
	probeMinBackoff = 100 * time.Millisecond
	probeMaxBackoff = 2 * time.Second
	// healthTimeout bounds a health check: generous, because one slow answer
	// must not flip readiness under load.
	healthTimeout = time.Second
	// DefaultHealthEvery is the default period of the health check.
	DefaultHealthEvery = 2 * time.Second
)

// Readiness causes, as logged once per change. The order is the order Ready
// checks them in.
const (
	causeReady        = iota
	causeClosed       // Close was called
	causeConfig       // ErrRedisURL: a mismatch or refused credentials
	causeUnverified   // Redis not reached yet
	causeBreaker      // the circuit breaker is open
	causeUnhealthy    // the last health check failed
	causeSubscription // the invalidation subscription is down
	causeUnlogged     = -1
)

// readiness is what Ready is computed from, besides the breaker (mirrored in
// Tiered.breakerState so that the breaker's callback never waits on this lock).
type readiness struct {
	mu        sync.Mutex
	probeErr  error // why there is no client yet
	healthErr error // the last health check's failure
	subLive   bool  // the invalidation subscription is confirmed
	subEver   bool  // it was confirmed once: until then the store is still starting

	// starting holds the log back while New runs, whose intermediate states
	// (client in place, subscription not yet confirmed) are no news.
	starting bool

	// logMu orders the log lines and the gauge: a state is computed and
	// reported under it, so a later state is never overwritten by an
	// earlier one.
	logMu  sync.Mutex
	logged int
}

// Ready reports whether the store works as configured: nil when it does, else
// an error naming the cause. A local-only store is always ready. With Redis,
// the store is not ready until the deployment has answered what it is and the
// client that fits it is in place, while the circuit breaker is open, while the
// last health check (every WithHealthCheck period) failed, and while the
// invalidation subscription is down. An error wrapping ErrRedisURL is a
// configuration error (the URL does not fit the server, or the credentials are
// refused); one wrapping ErrDegraded is an outage during which turns go on from
// the local tier; ErrClosed follows Close.
//
// Each change of the cause is logged once and the gauge chainmend_store_ready
// (1 ready, 0 not) follows it. Ready is cheap enough for every probe.
func (s *Tiered) Ready() error {
	_, err := s.readiness()
	return err
}

// readiness returns Ready's cause and answer.
func (s *Tiered) readiness() (int, error) {
	if s.closed.Load() {
		return causeClosed, ErrClosed
	}
	if s.target == nil {
		return causeReady, nil
	}
	r := &s.ready
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.conn.Load() == nil {
		if errors.Is(r.probeErr, ErrRedisURL) {
			return causeConfig, r.probeErr
		}
		cause := r.probeErr
		if cause == nil {
			cause = errors.New("not asked yet")
		}
		return causeUnverified, fmt.Errorf("%w: redis not reached yet: %w", ErrDegraded, cause)
	}
	if errors.Is(r.healthErr, ErrRedisURL) {
		return causeConfig, r.healthErr
	}
	if !r.subEver {
		return causeUnverified, fmt.Errorf("%w: redis reached, invalidation subscription not confirmed yet", ErrDegraded)
	}
	if s.breakerState.Load() != breakerClosed {
		return causeBreaker, fmt.Errorf("%w: circuit breaker open after repeated redis failures", ErrDegraded)
	}
	if r.healthErr != nil {
		return causeUnhealthy, fmt.Errorf("%w: health check: %w", ErrDegraded, r.healthErr)
	}
	if !r.subLive {
		return causeSubscription, fmt.Errorf("%w: invalidation subscription down: other instances' writes would not reach this one's local copies", ErrDegraded)
	}
	return causeReady, nil
}

// refreshReady reports the current readiness on the gauge and, when its cause
// changed, in one log line.
func (s *Tiered) refreshReady() {
	r := &s.ready
	r.logMu.Lock()
	defer r.logMu.Unlock()
	cause, err := s.readiness()
	if err == nil {
		s.metrics.ready.Set(1)
	} else {
		s.metrics.ready.Set(0)
	}
	r.mu.Lock()
	starting := r.starting
	r.mu.Unlock()
	// A local-only store is always ready: its log says so once, in New.
	if cause == r.logged || starting || s.target == nil {
		return
	}
	r.logged = cause
	if err == nil {
		s.log.Info("state store ready", "backend", s.Backend())
		return
	}
	switch cause {
	case causeClosed:
		s.log.Info("state store closed")
	case causeConfig:
		s.log.Error("state store not ready", "cause", err.Error())
	default:
		s.log.Warn("state store not ready: turns go on from the local tier", "cause", err.Error())
	}
}

// started ends New's quiet period and logs the state New leaves the store in.
func (s *Tiered) started() {
	s.ready.mu.Lock()
	s.ready.starting = false
	s.ready.mu.Unlock()
	s.refreshReady()
}

// setProbeErr records why the deployment has not been verified (nil once it is).
func (s *Tiered) setProbeErr(err error) {
	s.ready.mu.Lock()
	s.ready.probeErr = err
	s.ready.mu.Unlock()
	s.refreshReady()
}

// setHealth records the outcome of the last health check.
func (s *Tiered) setHealth(err error) {
	s.ready.mu.Lock()
	s.ready.healthErr = err
	s.ready.mu.Unlock()
	s.refreshReady()
}

// setSubLive records whether the invalidation subscription is confirmed.
func (s *Tiered) setSubLive(live bool) {
	s.ready.mu.Lock()
	s.ready.subLive = live
	s.ready.subEver = s.ready.subEver || live
	s.ready.mu.Unlock()
	s.refreshReady()
}

// install puts the client a verdict chose in place: from now on operations
// reach Redis.
func (s *Tiered) install(v verdict) {
	for _, h := range s.cfg.redisHooks {
		v.conn.rdb.AddHook(h)
	}
	s.conn.Store(v.conn)
	close(s.verified)
	if v.note != "" {
		level := slog.LevelInfo
		if v.warn {
			level = slog.LevelWarn
		}
		s.log.Log(context.Background(), level, v.note)
	}
	s.setProbeErr(nil)
}

// monitor asks the deployment what it is until it answers (when New could not
// reach it), then checks its health every period, which also keeps readiness
// current when no turn runs: an open breaker is probed through the write-back
// (its first operation is the breaker's probe), so an idle store that no
// traffic reaches recovers too.
func (s *Tiered) monitor(ctx context.Context) {
	defer close(s.monDone)
	backoff := probeMinBackoff
	for s.conn.Load() == nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		pctx, cancel := context.WithTimeout(ctx, startProbeWait)
		v := verify(pctx, s.target)
		cancel()
		if ctx.Err() != nil {
			if v.conn != nil {
				_ = v.conn.close()
			}
			return
		}
		if v.conn != nil {
			s.install(v)
			// What was committed meanwhile stayed local: write it back.
			s.kickWriteback()
			break
		}
		s.setProbeErr(v.err)
		backoff = min(2*backoff, probeMaxBackoff)
	}
	tick := time.NewTicker(s.cfg.healthEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.health(ctx)
		if s.breakerState.Load() != breakerClosed {
			s.kickWriteback()
		}
	}
}

// health checks that Redis answers (PING through the store's own client); for a
// standalone server, that it is still a master: a master demoted to a replica
// answers reads and refuses every write, which the breaker alone would not
// notice while reads succeed; and for Sentinel, where the master is. PING and
// INFO are the commands the load tool leaves out of its counts, and the
// Sentinels' answers are not the data nodes' load, so health checks do not skew
// them.
func (s *Tiered) health(ctx context.Context) {
	c := s.conn.Load()
	hctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	err := c.rdb.Ping(hctx).Err()
	if len(c.sentinels) > 0 {
		if addr, serr := c.masterAddr(hctx, s.target.failover.MasterName); serr == nil {
			if c.master != "" && addr != c.master {
				// go-redis moves commands to the new master, but not a
				// subscription: it stays on the old master, which keeps
				// its role (and misses every announcement) until the
				// Sentinels convert it, seconds later. Subscribe afresh; the
				// restored subscription flushes the local tier, since
				// announcements may have been lost meanwhile.
				s.log.Warn("sentinel failover: the redis master moved; subscribing to invalidations again", "from", c.master, "to", addr)
				s.resubscribe()
			}
			c.master = addr
		}
	}
	if err == nil && c.probe != nil {
		ni, ierr := infoOf(hctx, c.probe, "replication")
		switch {
		case ierr == nil && ni.role == "slave":
			err = fmt.Errorf("%w: %s is now a read-only replica of %s: point the URL at the master, or at its Sentinels with redis+sentinel://",
				ErrRedisURL, c.probe.Options().Addr, ni.master)
		case ierr != nil && unhealthy(ierr):
			err = ierr
		}
	}
	if ctx.Err() != nil {
		return // closing: says nothing about Redis
	}
	if err != nil && !errors.Is(err, ErrRedisURL) {
		s.metrics.redisErrors[opHealth].Inc()
	}
	s.setHealth(err)
}

// resubscribe ends the invalidation subscription; the subscription loop
// subscribes again at once, and flushes the local tier when it is back.
func (s *Tiered) resubscribe() {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if s.sub != nil {
		_ = s.sub.Close()
	}
}
