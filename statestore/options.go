package statestore

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Defaults of the options.
const (
	DefaultTTL             = time.Hour
	DefaultLocalEntries    = 100_000
	DefaultLocalBytes      = 256 << 20
	DefaultHotTTL          = 30 * time.Second
	DefaultOpTimeout       = 50 * time.Millisecond
	DefaultReplayCap       = 4 << 20
	DefaultBreakerFailures = 5
	DefaultBreakerCooldown = time.Second
	DefaultTenantShare     = 0.25
)

// Option configures New.
type Option func(*config)

type config struct {
	redisURL        string
	redisHooks      []redis.Hook
	ttl             [numKinds]time.Duration
	convTTLSet      bool // KindConversation's TTL was set; else it follows KindAnchor's
	localEntries    int
	localBytes      int
	tenantShare     float64
	hotTTL          time.Duration
	opTimeout       time.Duration
	replayCap       int
	breakerFailures int
	breakerCooldown time.Duration
	registerer      prometheus.Registerer
	logger          *slog.Logger
	instanceID      string
	channel         string
	healthEvery     time.Duration
}

func defaultConfig() config {
	c := config{
		localEntries:    DefaultLocalEntries,
		localBytes:      DefaultLocalBytes,
		tenantShare:     DefaultTenantShare,
		hotTTL:          DefaultHotTTL,
		opTimeout:       DefaultOpTimeout,
		replayCap:       DefaultReplayCap,
		breakerFailures: DefaultBreakerFailures,
		breakerCooldown: DefaultBreakerCooldown,
		channel:         "cm:inval",
		healthEvery:     DefaultHealthEvery,
	}
	for k := range c.ttl {
		c.ttl[k] = DefaultTTL
	}
	return c
}

// WithRedisHook adds a go-redis hook to the store's Redis client, for instrumentation (the
// load tool counts the store's round trips with one).
func WithRedisHook(h redis.Hook) Option {
	return func(c *config) { c.redisHooks = append(c.redisHooks, h) }
}

// WithRedisURL enables the Redis tier. Accepted forms:
//
//	redis://[user:pass@]host:port[/db][?options]   one node; the server decides
//	                                               (rediss:// for TLS, unix:///path)
//	redis://host:port?addr=host:port&addr=…        Cluster (go-redis's ParseClusterURL form)
//	redis+cluster://host:port[?addr=host:port…]    Cluster, explicitly (rediss+cluster://)
//	host:port,host:port,…                          Cluster: a comma-separated node list, of
//	redis://h1:p1,redis://h2:p2,…                  addresses or URLs with the same scheme,
//	redis://[user:pass@]h1:p1,h2:p2/0?options      credentials and options, or one URL with
//	                                               several hosts
//	redis://host:port?master_name=NAME[&addr=…]    Sentinel (the nodes are the Sentinels)
//	redis+sentinel://host:port[,…]?master_name=NAME  Sentinel, explicitly (rediss+sentinel://)
//
// Options are go-redis URL options (pool_size, dial_timeout…). An empty URL
// keeps the store local-only.
//
// Before it sends a command the store asks the server what it is (INFO:
// redis_mode, role, a Sentinel's masters). A one-node URL that reaches a
// Cluster node gets the cluster client; any other mismatch (a Sentinel or a
// replica behind a one-node URL, a standalone server behind a cluster URL, a
// master name the Sentinels do not monitor) makes New fail with an error
// wrapping ErrRedisURL that names the form to write. A deployment that cannot
// be reached is asked again in the background (see Ready).
func WithRedisURL(url string) Option { return func(c *config) { c.redisURL = url } }

// WithHealthCheck sets the period of the background health check of a Redis
// store (PING, and for a standalone server that it is still a master), which
// keeps Ready current when no turn runs. Default 2 s.
func WithHealthCheck(every time.Duration) Option {
	return func(c *config) {
		if every > 0 {
			c.healthEvery = every
		}
	}
}

// WithTTL sets the time to live of one kind of state, in Redis and for local
// copies the store wrote itself. Default 1 h. KindConversation follows
// KindAnchor unless set: a response is worth finding as long as its session's
// anchor lives.
func WithTTL(kind Kind, d time.Duration) Option {
	return func(c *config) {
		if kind < numKinds && d > 0 {
			c.ttl[kind] = d
			c.convTTLSet = c.convTTLSet || kind == KindConversation
		}
	}
}

// WithLocalEntries bounds the number of entries in the local tier.
func WithLocalEntries(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.localEntries = n
		}
	}
}

// WithLocalBytes bounds the approximate memory of the local tier in bytes
// (default 256 MiB). A value larger than half of it, or than one tenant's share
// (WithTenantShare), is not kept locally.
func WithLocalBytes(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.localBytes = n
		}
	}
}

// WithTenantShare sets one tenant's share of the local tier's bounds, as a
// fraction of its bytes and of its entries (default 0.25; 1 turns shares off).
// A tenant may use the whole tier while it is not full; once it is, the tenants
// over their share give up their own oldest entries first, so that no tenant
// can flush every other tenant's state by writing a lot (issue 11). Evictions
// are counted by reason in chainmend_store_local_evictions_total.
func WithTenantShare(fraction float64) Option {
	return func(c *config) {
		if fraction > 0 && fraction <= 1 {
			c.tenantShare = fraction
		}
	}
}

// WithHotTTL sets how long a copy read from Redis stays in the local tier.
// Invalidation messages normally drop stale copies at once; the short life
// bounds staleness when a message is lost.
func WithHotTTL(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.hotTTL = d
		}
	}
}

// WithOpTimeout sets the deadline of one Redis operation (default 50 ms).
// A failed operation is retried at most once.
func WithOpTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.opTimeout = d
		}
	}
}

// WithReplayCap sets the byte cap of a replay transcript (default 4 MiB).
// Over the cap the oldest whole units are trimmed until the transcript is
// back under three quarters of it, so trimming does not run on every turn.
func WithReplayCap(bytes int) Option {
	return func(c *config) {
		if bytes > 0 {
			c.replayCap = bytes
		}
	}
}

// WithBreaker sets the circuit breaker: it opens after failures consecutive
// Redis failures and lets one probe through after cooldown.
func WithBreaker(failures int, cooldown time.Duration) Option {
	return func(c *config) {
		if failures > 0 {
			c.breakerFailures = failures
		}
		if cooldown > 0 {
			c.breakerCooldown = cooldown
		}
	}
}

// WithRegisterer registers the store's metrics (namespace chainmend_store_)
// on r. Without it the metrics are kept but not exported.
func WithRegisterer(r prometheus.Registerer) Option { return func(c *config) { c.registerer = r } }

// WithLogger sets the logger for state changes (breaker, subscription).
// The default is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithInstanceID names this instance in invalidation messages so it can
// ignore its own. The default is random.
func WithInstanceID(id string) Option { return func(c *config) { c.instanceID = id } }

// WithChannel sets the invalidation pub/sub channel (default "cm:inval").
// Instances that share state must use the same channel.
func WithChannel(name string) Option {
	return func(c *config) {
		if name != "" {
			c.channel = name
		}
	}
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
