package statestore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Backends a Redis URL can select.
const (
	backendLocal      = "local"
	backendStandalone = "standalone"
	backendSentinel   = "sentinel"
	backendCluster    = "cluster"
)

// socketTimeout is a backstop for socket reads and writes; every operation
// carries its own, much shorter, context deadline.
const socketTimeout = time.Second

// newRedisClient builds a client from a URL (see WithRedisURL). Errors never
// contain the URL, which may hold a password.
func newRedisClient(raw string) (redis.UniversalClient, string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the whole URL, password included
		}
		return nil, "", fmt.Errorf("statestore: invalid redis URL: %w", err)
	}
	scheme, mode, _ := strings.Cut(u.Scheme, "+")
	if mode == "" && u.Query().Has("master_name") {
		mode = "sentinel"
	}
	// go-redis parses only its own schemes; hand it the URL without our
	// "+cluster"/"+sentinel" suffix.
	u.Scheme = scheme
	plain := u.String()

	switch mode {
	case "cluster":
		o, err := redis.ParseClusterURL(plain)
		if err != nil {
			return nil, "", fmt.Errorf("statestore: invalid redis cluster URL: %w", err)
		}
		o.ContextTimeoutEnabled = true
		o.MaxRetries = -1 // the store retries itself, at most once
		// Every command the store sends names its key (or shard channel), so
		// slot routing suffices; the policy router would first fetch COMMAND
		// info from a node, a round trip that the 50 ms deadline cannot
		// afford on a fresh client.
		o.DisableRoutingPolicies = true
		o.DialerRetries = orInt(o.DialerRetries, 1)
		o.DialTimeout = orDur(o.DialTimeout, socketTimeout)
		o.ReadTimeout = orDur(o.ReadTimeout, socketTimeout)
		o.WriteTimeout = orDur(o.WriteTimeout, socketTimeout)
		o.DisableIdentity = true
		o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		return redis.NewClusterClient(o), backendCluster, nil
	case "sentinel":
		o, err := redis.ParseFailoverURL(plain)
		if err != nil {
			return nil, "", fmt.Errorf("statestore: invalid redis sentinel URL: %w", err)
		}
		if o.MasterName == "" {
			return nil, "", errors.New("statestore: a sentinel URL needs master_name")
		}
		o.ContextTimeoutEnabled = true
		o.MaxRetries = -1
		o.DialerRetries = orInt(o.DialerRetries, 1)
		o.DialTimeout = orDur(o.DialTimeout, socketTimeout)
		o.ReadTimeout = orDur(o.ReadTimeout, socketTimeout)
		o.WriteTimeout = orDur(o.WriteTimeout, socketTimeout)
		o.DisableIdentity = true
		return redis.NewFailoverClient(o), backendSentinel, nil
	case "":
		o, err := redis.ParseURL(plain)
		if err != nil {
			return nil, "", fmt.Errorf("statestore: invalid redis URL: %w", err)
		}
		o.ContextTimeoutEnabled = true
		o.MaxRetries = -1
		o.DialerRetries = orInt(o.DialerRetries, 1)
		o.DialTimeout = orDur(o.DialTimeout, socketTimeout)
		o.ReadTimeout = orDur(o.ReadTimeout, socketTimeout)
		o.WriteTimeout = orDur(o.WriteTimeout, socketTimeout)
		o.DisableIdentity = true
		o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		return redis.NewClient(o), backendStandalone, nil
	default:
		return nil, "", fmt.Errorf("statestore: unknown redis URL scheme %q", u.Scheme)
	}
}

func orInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func orDur(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

// errBreakerOpen reports an operation skipped by the open circuit breaker.
var errBreakerOpen = errors.New("statestore: redis circuit breaker open")

// do runs fn against Redis with the per-operation deadline, retrying once
// after a failure that may be transient, and feeds the circuit breaker.
// redis.Nil is an answer, not a failure.
func (s *Tiered) do(ctx context.Context, o op, fn func(ctx context.Context) error) error {
	return s.doTimeout(ctx, o, s.cfg.opTimeout, fn)
}

// doTimeout is do with a deadline other than the per-operation one (write-backs).
func (s *Tiered) doTimeout(ctx context.Context, o op, timeout time.Duration, fn func(ctx context.Context) error) error {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		ok, probe := s.breaker.allow()
		if !ok {
			s.metrics.redisSkipped[o].Inc()
			if err == nil {
				err = errBreakerOpen
			}
			return err
		}
		octx, cancel := context.WithTimeout(ctx, timeout)
		err = fn(octx)
		cancel()
		if err == nil || errors.Is(err, redis.Nil) {
			s.breaker.success()
			return err
		}
		if ctx.Err() != nil {
			// The caller gave up; that says nothing about Redis.
			s.breaker.abandon(probe)
			return err
		}
		s.metrics.redisErrors[o].Inc()
		if !unhealthy(err) {
			// Redis answered with an error (a bug or a bad value, not an
			// outage): do not trip the breaker, and a retry would not help.
			s.breaker.success()
			return err
		}
		s.breaker.failure(probe)
	}
	return err
}

// unhealthy reports whether err means Redis is unreachable or not serving,
// as opposed to an error reply about the command itself.
func unhealthy(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return true // network, timeout, pool exhaustion, closed client
	}
	msg := rerr.Error()
	for _, p := range []string{"LOADING", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "READONLY", "BUSY"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}
