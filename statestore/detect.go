package statestore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Detection. A Redis URL says what the operator believes the deployment is; the
// store asks the server (INFO: redis_mode, role, a Sentinel's masters) before it
// sends a single command, because the wrong client does not fail loudly: a
// standalone client on a Cluster node gets MOVED for most keys, writes half of
// each commit and serves every other instance stale state. So:
//
//   - a URL naming one node (redis://H:P) gets the client the node asks for: a
//     standalone master the plain client, a Cluster node the cluster client;
//   - a URL naming a Cluster (redis+cluster://, addr=, several nodes) must find
//     a Cluster node, and a Sentinel URL a Sentinel that monitors the master;
//   - anything else (a Sentinel or a replica behind redis://, a standalone
//     server behind a cluster URL, an unknown master name) is a mismatch,
//     reported with the URL form that fits, never worked around.

// conn is the client the store uses once the deployment has said what it is.
type conn struct {
	rdb     redis.UniversalClient
	backend string
	sharded bool // sharded pub/sub (Cluster)
	// probe is a client of its own, without the caller's hooks, for the role
	// check of a standalone master (health); nil for the other backends.
	probe *redis.Client
	// sentinels ask the Sentinels where the master is (health); only for
	// the Sentinel backend.
	sentinels []*redis.SentinelClient
	// master is where the Sentinels last said the master is; only the
	// health check reads and writes it.
	master string
}

// close closes every client of the connection.
func (c *conn) close() error {
	if c.probe != nil {
		_ = c.probe.Close()
	}
	for _, sc := range c.sentinels {
		_ = sc.Close()
	}
	return c.rdb.Close()
}

// masterAddr asks the Sentinels, in order, where the master is.
func (c *conn) masterAddr(ctx context.Context, name string) (string, error) {
	var last error
	for _, sc := range c.sentinels {
		hp, err := sc.GetMasterAddrByName(ctx, name).Result()
		if err == nil && len(hp) == 2 {
			return net.JoinHostPort(hp[0], hp[1]), nil
		}
		if err == nil {
			err = fmt.Errorf("unexpected reply %q", hp)
		}
		last = err
	}
	return "", last
}

// verdict is what asking the deployment told.
type verdict struct {
	// conn is the client to use; nil when there is none (yet).
	conn *conn
	// err says why there is no client: an outage (try again), refused
	// credentials, or a mismatch (both wrap ErrRedisURL).
	err error
	// refuse reports that err is a mismatch between the URL and the server:
	// New fails on it rather than start with the wrong client.
	refuse bool
	// note says how the client was chosen when the URL did not say it all;
	// warn when that is a guess the operator should hear about.
	note string
	warn bool
}

// nodeInfo is what a server says about itself in INFO.
type nodeInfo struct {
	// mode is redis_mode: "standalone", "cluster" or "sentinel"; "" when the
	// server does not say.
	mode string
	// role is "master" or "slave".
	role string
	// master is a replica's master, host:port.
	master string
	// masters are the master names a Sentinel monitors.
	masters []string
}

// parseInfo reads the fields nodeInfo needs from an INFO reply.
func parseInfo(info string) nodeInfo {
	var ni nodeInfo
	var mhost, mport string
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch {
		case k == "redis_mode":
			ni.mode = v
		case k == "cluster_enabled" && v == "1":
			ni.mode = "cluster" // servers too old to report redis_mode
		case k == "role":
			ni.role = v
		case k == "master_host":
			mhost = v
		case k == "master_port":
			mport = v
		case strings.HasPrefix(k, "master") && strings.HasPrefix(v, "name="):
			// A Sentinel: master0:name=mymaster,status=ok,address=…
			name, _, _ := strings.Cut(strings.TrimPrefix(v, "name="), ",")
			ni.masters = append(ni.masters, name)
		}
	}
	if mhost != "" {
		ni.master = net.JoinHostPort(mhost, mport)
	}
	return ni
}

// probeOptions are the options of a short-lived client that asks one node
// about itself: the URL's credentials and TLS, database 0 (a Cluster node
// refuses SELECT), one connection, no retries and no hooks.
func probeOptions(network, addr, user, pass string, t *target, protocol int) *redis.Options {
	o := &redis.Options{
		Network:               network,
		Addr:                  addr,
		Username:              user,
		Password:              pass,
		Protocol:              protocol,
		PoolSize:              1,
		MaxRetries:            -1,
		DialerRetries:         1,
		DialTimeout:           socketTimeout,
		ReadTimeout:           socketTimeout,
		WriteTimeout:          socketTimeout,
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	}
	switch t.backend {
	case backendStandalone:
		o.TLSConfig = t.single.TLSConfig
	case backendCluster:
		o.TLSConfig = t.cluster.TLSConfig
	case backendSentinel:
		o.TLSConfig = t.failover.TLSConfig
	}
	return o
}

// seedOptions returns the probe options for every node the URL names.
func (t *target) seedOptions() []*redis.Options {
	var out []*redis.Options
	switch t.backend {
	case backendStandalone:
		o := t.single
		out = append(out, probeOptions(o.Network, o.Addr, o.Username, o.Password, t, o.Protocol))
	case backendCluster:
		o := t.cluster
		for _, a := range o.Addrs {
			out = append(out, probeOptions("tcp", a, o.Username, o.Password, t, o.Protocol))
		}
	case backendSentinel:
		o := t.failover
		for _, a := range o.SentinelAddrs {
			out = append(out, probeOptions("tcp", a, o.SentinelUsername, o.SentinelPassword, t, o.Protocol))
		}
	}
	return out
}

// infoOf asks a node for INFO (the default sections, or the given one).
func infoOf(ctx context.Context, c *redis.Client, section ...string) (nodeInfo, error) {
	info, err := c.Info(ctx, section...).Result()
	if err != nil {
		return nodeInfo{}, err
	}
	return parseInfo(info), nil
}

// probeNode asks one node what it is.
func probeNode(ctx context.Context, o *redis.Options) (nodeInfo, error) {
	c := redis.NewClient(o)
	defer c.Close()
	return infoOf(ctx, c)
}

// credentialsRefused reports an answer that refuses the URL's credentials.
func credentialsRefused(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	msg := rerr.Error()
	return strings.HasPrefix(msg, "WRONGPASS") || strings.HasPrefix(msg, "NOAUTH") ||
		(strings.HasPrefix(msg, "ERR") && strings.Contains(msg, "AUTH"))
}

// verify asks the deployment t names what it is and returns the client that
// fits it. It tries the URL's nodes in order until one answers; the first
// answer decides.
func verify(ctx context.Context, t *target) verdict {
	var last error
	for _, o := range t.seedOptions() {
		ni, err := probeNode(ctx, o)
		switch {
		case err == nil:
			return t.decide(o.Addr, ni)
		case credentialsRefused(err):
			return verdict{err: fmt.Errorf("%w: %s refused the credentials: %w", ErrRedisURL, o.Addr, err)}
		case unhealthy(err):
			last = fmt.Errorf("%s: %w", o.Addr, err)
			continue
		default:
			// The server answered, but not INFO (renamed, or denied by an
			// ACL): the URL's form is all there is to go on.
			v := t.trust()
			v.note = fmt.Sprintf("cannot ask redis at %s what it is (%v); trusting the URL's form", o.Addr, err)
			v.warn = true
			return v
		}
	}
	return verdict{err: last}
}

// trust returns the client the URL's form names, without asking the server.
func (t *target) trust() verdict {
	switch t.backend {
	case backendCluster:
		return verdict{conn: &conn{rdb: newCluster(t.cluster), backend: backendCluster, sharded: true}}
	case backendSentinel:
		c := &conn{rdb: newFailover(t.failover), backend: backendSentinel}
		for _, o := range t.seedOptions() {
			c.sentinels = append(c.sentinels, redis.NewSentinelClient(o))
		}
		return verdict{conn: c}
	default:
		return verdict{conn: &conn{rdb: newStandalone(t.single), backend: backendStandalone,
			probe: redis.NewClient(probeOptions(t.single.Network, t.single.Addr, t.single.Username, t.single.Password, t, t.single.Protocol))}}
	}
}

// decide returns the verdict on what node addr said about itself.
func (t *target) decide(addr string, ni nodeInfo) verdict {
	mismatch := func(format string, a ...any) verdict {
		return verdict{err: fmt.Errorf("%w: "+format+t.keep(), append([]any{ErrRedisURL}, a...)...), refuse: true}
	}
	switch t.backend {
	case backendStandalone:
		switch ni.mode {
		case "cluster":
			if t.clusterErr != nil {
				return mismatch("%s is a Redis Cluster node, and %v: write %s", addr, t.clusterErr, t.suggest(backendCluster, addr, ""))
			}
			v := verdict{conn: &conn{rdb: newCluster(t.cluster), backend: backendCluster, sharded: true}}
			v.note = fmt.Sprintf("redis URL names %s, a Redis Cluster node: using the cluster client with it as the seed (%s says so explicitly)",
				addr, t.suggest(backendCluster, addr, ""))
			return v
		case "sentinel":
			return mismatch("%s is a Redis Sentinel, not a data node: write %s", addr, t.suggest(backendSentinel, addr, sentinelName(ni.masters)))
		}
		if ni.role == "slave" {
			return mismatch("%s is a read-only replica of %s: point the URL at the master (%s), or at its Sentinels with %s",
				addr, ni.master, t.suggest(backendStandalone, ni.master, ""), t.suggest(backendSentinel, "SENTINEL_HOST:26379", "NAME"))
		}
		return t.trust()
	case backendCluster:
		switch ni.mode {
		case "cluster":
			return t.trust()
		case "sentinel":
			return mismatch("%s is a Redis Sentinel, but the URL names a Redis Cluster (redis+cluster://, addr= or several nodes): write %s",
				addr, t.suggest(backendSentinel, addr, sentinelName(ni.masters)))
		}
		return mismatch("%s is a standalone server (cluster support disabled), but the URL names a Redis Cluster "+
			"(redis+cluster://, addr= or several nodes): for one server write %s, for Sentinels add master_name=NAME",
			addr, t.suggest(backendStandalone, addr, ""))
	default: // backendSentinel
		switch ni.mode {
		case "sentinel":
		case "cluster":
			return mismatch("%s is a Redis Cluster node, not a Sentinel: write %s", addr, t.suggest(backendCluster, addr, ""))
		default:
			return mismatch("%s is a standalone server, not a Sentinel: for the server itself write %s", addr, t.suggest(backendStandalone, addr, ""))
		}
		if !slices.Contains(ni.masters, t.failover.MasterName) {
			monitors := "none"
			if len(ni.masters) > 0 {
				monitors = strings.Join(ni.masters, ", ")
			}
			return mismatch("the Sentinel at %s monitors no master named %q (it monitors: %s)", addr, t.failover.MasterName, monitors)
		}
		return t.trust()
	}
}

// sentinelName is the master name a suggestion names: the Sentinel's only
// master, or a placeholder.
func sentinelName(masters []string) string {
	if len(masters) == 1 {
		return masters[0]
	}
	return "NAME"
}

// suggest writes the URL form of backend for addr, without credentials or
// options (keep says that the operator adds theirs back).
func (t *target) suggest(backend, addr, master string) string {
	scheme := "redis"
	if t.tls {
		scheme = "rediss"
	}
	switch backend {
	case backendCluster:
		return scheme + "+cluster://" + addr
	case backendSentinel:
		return scheme + "+sentinel://" + addr + "?master_name=" + master
	default:
		return scheme + "://" + addr
	}
}

// keep reminds that a suggested URL leaves out the credentials of the original.
func (t *target) keep() string {
	if t.secret {
		return " (with your credentials)"
	}
	return ""
}

// display names the deployment in logs: its nodes, never its credentials.
func (t *target) display() string {
	return strings.Join(t.addrs, ",")
}
