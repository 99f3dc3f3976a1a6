package statestore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
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

// target is a parsed Redis URL: the deployment it names and the options of the
// clients that reach it. Nothing in it is connected yet; which client the store
// uses is decided when the server has said what it is (see verify).
type target struct {
	// backend is what the URL names: backendStandalone, backendCluster or
	// backendSentinel.
	backend string
	// implied is true when the URL names one node and nothing else, so the
	// server decides: a Cluster node behind it gets the cluster client.
	implied bool
	// addrs are the nodes the URL names (for Sentinel, the Sentinels).
	addrs []string
	// tls and secret say how suggestions are written: rediss, and whether
	// the URL carried credentials the suggestion leaves out.
	tls    bool
	secret bool

	single   *redis.Options
	cluster  *redis.ClusterOptions
	failover *redis.FailoverOptions
	// clusterErr says why a one-node URL cannot be reached as a Cluster
	// (a database other than 0, a unix socket, an option a cluster client
	// does not take); nil when cluster is set for it.
	clusterErr error
}

// parseTarget reads a Redis URL in any form WithRedisURL accepts. Errors never
// contain the URL, which may hold a password.
func parseTarget(raw string) (*target, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, errors.New("statestore: empty redis URL")
	}
	base, addrs, err := splitNodes(raw)
	if err != nil {
		return nil, err
	}
	scheme, mode, _ := strings.Cut(base.Scheme, "+")
	switch scheme {
	case "redis", "rediss":
	case "unix":
		if mode != "" || len(addrs) > 1 {
			return nil, errors.New("statestore: a unix:// redis URL names one standalone server")
		}
	default:
		return nil, fmt.Errorf("statestore: unknown redis URL scheme %q (want redis://, rediss://, "+
			"redis+cluster://, redis+sentinel:// or unix://)", base.Scheme)
	}
	q := base.Query()
	t := &target{tls: scheme == "rediss", secret: base.User != nil || q.Has("password") || q.Has("username")}
	switch {
	case mode == "sentinel" || (mode == "" && q.Has("master_name")):
		t.backend = backendSentinel
	case mode == "cluster" || (mode == "" && (q.Has("addr") || len(addrs) > 1)):
		t.backend = backendCluster
	case mode == "":
		t.backend, t.implied = backendStandalone, true
	default:
		return nil, fmt.Errorf("statestore: unknown redis URL scheme %q (want redis+cluster:// or redis+sentinel://)", base.Scheme)
	}
	// go-redis parses only its own schemes and one host; hand it the URL
	// without our "+cluster"/"+sentinel" suffix, the first node in the
	// authority and the others as addr= parameters, as its cluster and
	// failover URL forms have them.
	u := *base
	u.Scheme = scheme
	if len(addrs) > 0 {
		u.Host = addrs[0]
		for _, a := range addrs[1:] {
			q.Add("addr", a)
		}
		u.RawQuery = q.Encode()
	}
	for _, a := range q["addr"] {
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	t.addrs = addrs
	switch t.backend {
	case backendSentinel:
		o, err := redis.ParseFailoverURL(u.String())
		if err != nil {
			return nil, fmt.Errorf("statestore: invalid redis sentinel URL: %w", err)
		}
		if o.MasterName == "" {
			return nil, errors.New("statestore: a sentinel URL needs master_name")
		}
		t.failover = o
	case backendCluster:
		if err := clusterPath(&u); err != nil {
			return nil, err
		}
		o, err := redis.ParseClusterURL(u.String())
		if err != nil {
			return nil, fmt.Errorf("statestore: invalid redis cluster URL: %w", err)
		}
		t.cluster = o
	default:
		o, err := redis.ParseURL(u.String())
		if err != nil {
			return nil, fmt.Errorf("statestore: invalid redis URL: %w", err)
		}
		t.single = o
		if scheme == "unix" {
			t.addrs = []string{o.Addr}
			t.clusterErr = errors.New("a Redis Cluster is reached over TCP")
			break
		}
		// The same URL, read as a cluster URL, for the case where the node
		// turns out to be one.
		if t.clusterErr = clusterPath(&u); t.clusterErr == nil {
			if o, err := redis.ParseClusterURL(u.String()); err == nil {
				t.cluster = o
			} else {
				t.clusterErr = fmt.Errorf("a cluster client does not take its options: %w", err)
			}
		}
	}
	return t, nil
}

// clusterPath drops a database path from a cluster URL; a Redis Cluster has
// only database 0, so any other is an error rather than silently ignored.
func clusterPath(u *url.URL) error {
	switch strings.Trim(u.Path, "/") {
	case "", "0":
		u.Path, u.RawPath = "", ""
	default:
		return errors.New("statestore: a Redis Cluster has only database 0: drop the /DB path from the URL")
	}
	q := u.Query()
	switch db := q.Get("db"); {
	case !q.Has("db"):
	case db == "0" || db == "":
		// go-redis's cluster URL parser knows no db option at all.
		q.Del("db")
		u.RawQuery = q.Encode()
	default:
		return errors.New("statestore: a Redis Cluster has only database 0: drop db= from the URL")
	}
	return nil
}

// splitNodes separates the nodes of a URL from the rest (scheme, credentials,
// database, options). It reads one URL, a URL with several hosts
// (redis://u:p@h1:1,h2:2/0?opts), and a comma-separated list whose first
// element may be a URL and whose others are node addresses or URLs with the same
// scheme, credentials and options. addrs is empty for a unix socket. A comma
// elsewhere (in a password, an option) is left to the URL parser.
func splitNodes(raw string) (*url.URL, []string, error) {
	parts := strings.Split(raw, ",")
	if len(parts) > 1 && listElements(parts[1:]) {
		base, err := parseOne(parts[0])
		if err != nil {
			return nil, nil, err
		}
		addrs := []string{hostPort(base)}
		for _, p := range parts[1:] {
			p = strings.TrimSpace(p)
			if !strings.Contains(p, "://") {
				addrs = append(addrs, withPort(p))
				continue
			}
			u, err := parseOne(p)
			if err != nil {
				return nil, nil, err
			}
			if u.Scheme != base.Scheme || u.User.String() != base.User.String() || u.Path != base.Path || u.RawQuery != base.RawQuery {
				return nil, nil, errors.New("statestore: the URLs of a redis node list must share scheme, credentials, database and options")
			}
			addrs = append(addrs, hostPort(u))
		}
		return base, addrs, nil
	}
	u, err := parseOne(raw)
	if err != nil {
		return nil, nil, err
	}
	if u.Scheme == "unix" {
		return u, nil, nil
	}
	if !strings.Contains(u.Host, ",") {
		return u, []string{hostPort(u)}, nil
	}
	var addrs []string
	for _, h := range strings.Split(u.Host, ",") {
		h = strings.TrimSpace(h)
		if !isHostPort(h, false) {
			return nil, nil, errors.New("statestore: invalid node address in a redis URL with several hosts")
		}
		addrs = append(addrs, withPort(h))
	}
	return u, addrs, nil
}

// listElements reports whether every element after the first of a split URL is
// a node (an address or a URL), which makes the string a list rather than one
// URL with a comma in it.
func listElements(parts []string) bool {
	for _, p := range parts {
		p = strings.TrimSpace(p)
		// A node address needs its port here: "redis://h:1?name=a,b" is
		// one URL, not a list ending in a node "b".
		if !strings.Contains(p, "://") && !isHostPort(p, true) {
			return false
		}
	}
	return true
}

// isHostPort reports whether s is host:port, or a bare host unless needPort,
// and nothing more.
func isHostPort(s string, needPort bool) bool {
	if s == "" || strings.ContainsAny(s, "@/?#=&") {
		return false
	}
	if h, p, err := net.SplitHostPort(s); err == nil {
		_, perr := strconv.ParseUint(p, 10, 16)
		return h != "" && perr == nil
	}
	if needPort {
		return false
	}
	return !strings.Contains(s, ":") || (strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]"))
}

// parseOne parses one URL; a bare host:port is a redis:// URL.
func parseOne(raw string) (*url.URL, error) {
	raw = strings.TrimSpace(raw)
	if !strings.Contains(raw, "://") {
		if !isHostPort(raw, false) {
			return nil, errors.New("statestore: invalid redis URL: want scheme://host:port or host:port")
		}
		raw = "redis://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the whole URL, password included
		}
		return nil, fmt.Errorf("statestore: invalid redis URL: %w", err)
	}
	return u, nil
}

// hostPort returns a URL's host:port with go-redis's defaults.
func hostPort(u *url.URL) string {
	h, p := u.Hostname(), u.Port()
	if h == "" {
		h = "localhost"
	}
	if p == "" {
		p = "6379"
	}
	return net.JoinHostPort(h, p)
}

// withPort adds the default port to a node address without one.
func withPort(a string) string {
	if _, _, err := net.SplitHostPort(a); err == nil {
		return a
	}
	return net.JoinHostPort(strings.Trim(a, "[]"), "6379")
}

// newStandalone builds the store's client for one server.
func newStandalone(o *redis.Options) *redis.Client {
	o = cloneOptions(o)
	o.ContextTimeoutEnabled = true
	o.MaxRetries = -1 // the store retries itself, at most once
	o.DialerRetries = orInt(o.DialerRetries, 1)
	o.DialTimeout = orDur(o.DialTimeout, socketTimeout)
	o.ReadTimeout = orDur(o.ReadTimeout, socketTimeout)
	o.WriteTimeout = orDur(o.WriteTimeout, socketTimeout)
	o.DisableIdentity = true
	o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return redis.NewClient(o)
}

// newCluster builds the store's client for a Redis Cluster.
func newCluster(o *redis.ClusterOptions) *redis.ClusterClient {
	c := *o
	o = &c
	o.ContextTimeoutEnabled = true
	o.MaxRetries = -1
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
	return redis.NewClusterClient(o)
}

// newFailover builds the store's client for a master found through Sentinels.
func newFailover(o *redis.FailoverOptions) *redis.Client {
	c := *o
	o = &c
	o.ContextTimeoutEnabled = true
	o.MaxRetries = -1
	o.DialerRetries = orInt(o.DialerRetries, 1)
	o.DialTimeout = orDur(o.DialTimeout, socketTimeout)
	o.ReadTimeout = orDur(o.ReadTimeout, socketTimeout)
	o.WriteTimeout = orDur(o.WriteTimeout, socketTimeout)
	o.DisableIdentity = true
	return redis.NewFailoverClient(o)
}

// cloneOptions copies go-redis options, which a client takes ownership of.
func cloneOptions(o *redis.Options) *redis.Options {
	c := *o
	return &c
}

// orInt returns v, or def when v is unset.
func orInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// orDur returns v, or def when v is unset.
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
	if s.conn.Load() == nil {
		// No client fits yet: a guess could half-write a commit (MOVED)
		// or write to the wrong server.
		s.metrics.redisSkipped[o].Inc()
		return errUnverified
	}
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
