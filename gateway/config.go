package gateway

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"chainmend/engine"
)

// Config is the gateway's configuration. Zero values take the defaults of DefaultConfig.
type Config struct {
	// Listen is the address to serve on.
	Listen string `yaml:"listen"`
	// MetricsListen, when set, serves /metrics on an address of its own and not on Listen.
	MetricsListen string `yaml:"metrics_listen"`
	// Upstream is the Responses API base URL (https://api.openai.com/v1 by default); the
	// WebSocket and HTTP endpoints are derived from it.
	Upstream string `yaml:"upstream"`
	// Policies is the policy directory.
	Policies string `yaml:"policies"`
	// Redis is the Redis URL; empty runs the embedded local store.
	Redis string `yaml:"redis"`
	// Mode is engine.ModeRepair or engine.ModeStrict.
	Mode string `yaml:"mode"`
	// MaxFrameBytes bounds one client frame; a larger one closes the connection with 1009.
	MaxFrameBytes int64 `yaml:"max_frame_bytes"`
	// DialTimeout bounds the upstream handshake.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// FirstEventTimeout bounds the wait for the first upstream event of a turn.
	FirstEventTimeout time.Duration `yaml:"first_event_timeout"`
	// IdleTimeout bounds the gap between two upstream events of a turn.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// WriteTimeout bounds one write to the client; a client that stops reading is cut off.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// UpstreamMaxAge rotates an upstream connection before the upstream's 60-minute cap.
	UpstreamMaxAge time.Duration `yaml:"upstream_max_age"`
	// Recovery enables the on_upstream_error stage's retries.
	Recovery bool `yaml:"recovery"`
	// PendingTTL, AnchorTTL and ReplayTTL are the state TTLs (the chain TTL).
	PendingTTL time.Duration `yaml:"pending_ttl"`
	AnchorTTL  time.Duration `yaml:"anchor_ttl"`
	ReplayTTL  time.Duration `yaml:"replay_ttl"`
	// ReplayCapBytes caps one session's replay transcript.
	ReplayCapBytes int `yaml:"replay_cap_bytes"`
	// StoreTimeout is the per-operation Redis deadline.
	StoreTimeout time.Duration `yaml:"store_timeout"`
	// MaxConnections caps open client WebSocket connections; MaxTenantConnections caps them
	// per tenant (credential), so one tenant cannot starve the others.
	MaxConnections       int `yaml:"max_connections"`
	MaxTenantConnections int `yaml:"max_tenant_connections"`
	// MaxSourceConnections caps them per client address (0: no cap), so that one address
	// with random credentials cannot fill MaxConnections. Behind a proxy every client has the
	// proxy's address: raise it or set 0 there.
	MaxSourceConnections int `yaml:"max_source_connections"`
	// MaxQueuedFrames bounds the creates of a connection that wait for their lane (each lane
	// runs one turn at a time); well above what the upstream takes (16 in flight, 32 lanes),
	// so the gateway never refuses what the upstream would queue.
	MaxQueuedFrames int `yaml:"max_queued_frames"`
	// MaxQueuedBytes bounds the bytes of those creates; at least MaxFrameBytes, so that one
	// frame the gateway accepts can always wait.
	MaxQueuedBytes int64 `yaml:"max_queued_bytes"`
	// MaxQueuedBytesTotal bounds the bytes of waiting creates across all connections, so
	// that many connections against a stalled upstream cannot fill the process.
	MaxQueuedBytesTotal int64 `yaml:"max_queued_bytes_total"`
	// ShutdownGrace is how long in-flight turns may run on after SIGTERM.
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
	// ReloadPoll is the period of the policy directory's checksum poll.
	ReloadPoll time.Duration `yaml:"reload_poll"`
	// SessionHeaders name a client's session, read in order; without any of them the
	// request's prompt_cache_key names it, else the connection.
	SessionHeaders []string `yaml:"session_headers"`
	// TenantHeaders select a credential or a billing scope; a request's tenant is a hash of
	// all of them it carries. A request with none shares no state beyond its connection,
	// unless the operator lists a header that names tenants.
	TenantHeaders []string `yaml:"tenant_headers"`
	// BodyReadTimeout bounds the read of one HTTP request body (nginx's
	// client_body_timeout): a client that trickles its body is cut off.
	BodyReadTimeout time.Duration `yaml:"body_read_timeout"`
	// MaxBodyBytesInFlight bounds the bytes of all HTTP request bodies being read at once;
	// buffers grow as bytes arrive, so this is what the gateway can hold, not what clients
	// announce.
	MaxBodyBytesInFlight int64 `yaml:"max_body_bytes_in_flight"`
	// ClientIdleTimeout closes a client connection that sent nothing and had nothing in
	// flight for this long (WebSocket), and idle HTTP keep-alive connections.
	ClientIdleTimeout time.Duration `yaml:"client_idle_timeout"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Listen:            "127.0.0.1:8787",
		Upstream:          "https://api.openai.com/v1",
		Policies:          "policies",
		Mode:              DefaultMode,
		MaxFrameBytes:     16 << 20,
		DialTimeout:       10 * time.Second,
		FirstEventTimeout: 90 * time.Second,
		IdleTimeout:       5 * time.Minute,
		WriteTimeout:      30 * time.Second,
		UpstreamMaxAge:    55 * time.Minute,
		Recovery:          true,
		PendingTTL:        time.Hour,
		AnchorTTL:         time.Hour,
		ReplayTTL:         time.Hour,
		ReplayCapBytes:    4 << 20,
		StoreTimeout:      50 * time.Millisecond,
		ReloadPoll:        5 * time.Second,
		SessionHeaders:    DefaultSessionHeaders,
		TenantHeaders:     DefaultTenantHeaders,
		BodyReadTimeout:   30 * time.Second,
		ClientIdleTimeout: 10 * time.Minute,

		MaxBodyBytesInFlight: 256 << 20,

		MaxConnections:       10000,
		MaxTenantConnections: 512,
		MaxSourceConnections: 1024,
		MaxQueuedFrames:      256,
		MaxQueuedBytes:       64 << 20,
		MaxQueuedBytesTotal:  1 << 30,
		ShutdownGrace:        20 * time.Second,
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.Mode != engine.ModeRepair && c.Mode != engine.ModeStrict {
		return fmt.Errorf("mode must be %q or %q, not %q", engine.ModeRepair, engine.ModeStrict, c.Mode)
	}
	if _, _, err := Endpoints(c.Upstream); err != nil {
		return err
	}
	if c.MaxFrameBytes <= 0 {
		return fmt.Errorf("max frame bytes must be positive")
	}
	if c.MaxConnections <= 0 || c.MaxTenantConnections <= 0 || c.MaxQueuedFrames <= 0 {
		return fmt.Errorf("connection and queue limits must be positive")
	}
	if c.MaxBodyBytesInFlight < c.MaxFrameBytes {
		return fmt.Errorf("max body bytes in flight (%d) must be at least max frame bytes (%d)", c.MaxBodyBytesInFlight, c.MaxFrameBytes)
	}
	if c.MaxQueuedBytesTotal < c.MaxQueuedBytes {
		return fmt.Errorf("max queued bytes total (%d) must be at least max queued bytes (%d)", c.MaxQueuedBytesTotal, c.MaxQueuedBytes)
	}
	if c.MaxQueuedBytes < c.MaxFrameBytes {
		return fmt.Errorf("max queued bytes (%d) must be at least max frame bytes (%d): one accepted frame must be able to wait", c.MaxQueuedBytes, c.MaxFrameBytes)
	}
	return nil
}

// Endpoints derives the upstream WebSocket and HTTP endpoints from a base URL: a URL that
// ends in /responses is used as is, one that ends in /v1 gets /responses, any other gets
// /v1/responses. ws and wss map to http and https for the HTTP endpoint, and back.
func Endpoints(base string) (wsURL, httpURL string, err error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", "", fmt.Errorf("upstream url: %w", err)
	}
	if u.Host == "" {
		return "", "", fmt.Errorf("upstream url %q has no host", base)
	}
	p := strings.TrimRight(u.Path, "/")
	switch {
	case strings.HasSuffix(p, "/responses"):
	case strings.HasSuffix(p, "/v1"):
		p += "/responses"
	default:
		p += "/v1/responses"
	}
	u.Path = p
	h, w := *u, *u
	switch u.Scheme {
	case "http", "ws":
		h.Scheme, w.Scheme = "http", "ws"
	case "https", "wss":
		h.Scheme, w.Scheme = "https", "wss"
	default:
		return "", "", fmt.Errorf("upstream url %q: scheme must be http, https, ws or wss", base)
	}
	return w.String(), h.String(), nil
}
