// Package settings is the process-level configuration shared by cmd/gateway and the load
// tool's gateway child: the command line, environment and YAML file parsed into one value,
// and the wiring that turns it into a running gateway (state store, server, reloader with
// its reload gate). It lives outside gateway/ so that the gateway package is configured
// only through gateway.Config and options, and never learns about flags, files or fixture
// harnesses.
package settings

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"chainmend/gateway"
	"chainmend/statestore"
)

// Settings are the command line of cmd/gateway: the gateway's Config plus process-level
// options.
type Settings struct {
	gateway.Config
	// ConfigFile is the YAML file the settings were read from, if any.
	ConfigFile string
	// LogLevel and LogFormat configure the process logger (gateway.NewLogger).
	LogLevel  string
	LogFormat string
	// ReloadGate is a fixture directory a new policy set must pass before it is activated;
	// empty: compile only. It is a process option, not a gateway one, because the fixture
	// harness that runs it must never be part of the gateway package.
	ReloadGate string
	// StoreLocalBytes bounds the local tier's memory; StoreTenantShare is one tenant's share
	// of it (issue 11: no tenant can flush every other tenant's state).
	StoreLocalBytes  int
	StoreTenantShare float64
	// Tracing is the OpenTelemetry export (tracing.go).
	Tracing
	// DecisionLog is the decision log (decisionlog.go).
	DecisionLog
}

// Parse reads the settings from, in rising precedence: defaults, a YAML file (--config or
// GATEWAY_CONFIG), the environment (GATEWAY_LISTEN, GATEWAY_UPSTREAM, …: the flag name
// upper-cased, dashes as underscores), and flags. Usage and flag errors go to stderr.
func Parse(args []string, getenv func(string) string, stderr io.Writer) (*Settings, error) {
	st := &Settings{Config: gateway.DefaultConfig(), LogLevel: "info", LogFormat: "text", StoreLocalBytes: 256 << 20, StoreTenantShare: 0.25}
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &st.Config
	fs.StringVar(&st.ConfigFile, "config", "", "YAML configuration file (keys as the flags, with underscores)")
	fs.StringVar(&c.Listen, "listen", c.Listen, "address to serve on")
	fs.StringVar(&c.MetricsListen, "metrics-listen", c.MetricsListen, "serve /metrics on this address instead of --listen (empty: on --listen)")
	fs.StringVar(&c.Upstream, "upstream", c.Upstream, "Responses API base URL")
	fs.StringVar(&c.Policies, "policies", c.Policies, "policy directory")
	fs.StringVar(&c.Redis, "redis", c.Redis, "Redis URL: redis://[user:pass@]H:P[/db] (one node; a Cluster node is detected; rediss:// for TLS), "+
		"a Cluster as redis+cluster://H:P, redis://H:P?addr=H:P&addr=… or H:P,H:P,…, Sentinels as redis+sentinel://H:P[,H:P]?master_name=NAME; "+
		"a URL that does not fit the server is refused at start; empty: embedded local store")
	fs.StringVar(&c.Mode, "mode", c.Mode, "repair or strict (default follows the build: -tags debug is strict)")
	fs.Int64Var(&c.MaxFrameBytes, "max-frame-bytes", c.MaxFrameBytes, "largest client frame; larger ones close the connection with 1009")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", c.DialTimeout, "upstream handshake timeout")
	fs.DurationVar(&c.FirstEventTimeout, "first-event-timeout", c.FirstEventTimeout, "wait for a turn's first upstream event")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "longest gap between two upstream events")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", c.WriteTimeout, "longest write to a client")
	fs.DurationVar(&c.UpstreamMaxAge, "upstream-max-age", c.UpstreamMaxAge, "rotate upstream connections older than this (the upstream caps them at 60m)")
	fs.BoolVar(&c.Recovery, "recovery", c.Recovery, "recover upstream rejections (on_upstream_error)")
	fs.DurationVar(&c.PendingTTL, "pending-ttl", c.PendingTTL, "TTL of pending calls")
	fs.DurationVar(&c.AnchorTTL, "anchor-ttl", c.AnchorTTL, "TTL of session anchors")
	fs.DurationVar(&c.ReplayTTL, "replay-ttl", c.ReplayTTL, "TTL of replay transcripts")
	fs.IntVar(&c.ReplayCapBytes, "replay-cap-bytes", c.ReplayCapBytes, "byte cap of one replay transcript")
	fs.DurationVar(&c.StoreTimeout, "store-timeout", c.StoreTimeout, "per-operation Redis deadline")
	fs.IntVar(&c.MaxConnections, "max-connections", c.MaxConnections, "open client connections, in total")
	fs.IntVar(&c.MaxTenantConnections, "max-tenant-connections", c.MaxTenantConnections, "open client connections per tenant (credential)")
	fs.IntVar(&c.MaxSourceConnections, "max-source-connections", c.MaxSourceConnections, "open client connections per client address (0: no cap; behind a proxy raise it or set 0)")
	fs.IntVar(&c.MaxQueuedFrames, "max-queued-frames", c.MaxQueuedFrames, "creates of one connection that may wait for their lanes")
	fs.Int64Var(&c.MaxQueuedBytes, "max-queued-bytes", c.MaxQueuedBytes, "bytes of those waiting creates (at least --max-frame-bytes)")
	fs.Int64Var(&c.MaxQueuedBytesTotal, "max-queued-bytes-total", c.MaxQueuedBytesTotal, "bytes of waiting creates across all connections (at least --max-queued-bytes)")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", c.ShutdownGrace, "how long in-flight turns may finish after SIGTERM")
	fs.StringVar(&st.ReloadGate, "reload-gate", st.ReloadGate, "fixture directory a new policy set must pass before it is activated (empty: compile only)")
	fs.DurationVar(&c.ReloadPoll, "reload-poll", c.ReloadPoll, "checksum poll of the policy directory, a safety net under file events")
	fs.Func("session-headers", fmt.Sprintf("comma-separated headers that name a client's session, read in order; then prompt_cache_key, then the connection; last, a chained create whose session has no anchor is matched by its previous_response_id within its tenant (default %q; \"none\" reads no header)", strings.Join(gateway.DefaultSessionHeaders, ",")),
		func(v string) error {
			c.SessionHeaders = splitHeaders(v)
			return nil
		})
	fs.Func("tenant-headers", fmt.Sprintf("comma-separated headers that select a credential or billing scope; a request's tenant hashes all it carries, and one with none shares no state beyond its connection (default %q)", strings.Join(gateway.DefaultTenantHeaders, ",")),
		func(v string) error {
			c.TenantHeaders = splitHeaders(v)
			return nil
		})
	fs.DurationVar(&c.BodyReadTimeout, "body-read-timeout", c.BodyReadTimeout, "longest read of one HTTP request body")
	fs.Int64Var(&c.MaxBodyBytesInFlight, "max-body-bytes-in-flight", c.MaxBodyBytesInFlight, "bytes of HTTP request bodies the gateway holds at once (at least --max-frame-bytes)")
	fs.DurationVar(&c.ClientIdleTimeout, "client-idle-timeout", c.ClientIdleTimeout, "close client connections idle this long (WebSocket with nothing in flight, HTTP keep-alive)")
	fs.IntVar(&st.StoreLocalBytes, "store-local-bytes", st.StoreLocalBytes, "memory bound of the local state tier in bytes")
	fs.Float64Var(&st.StoreTenantShare, "store-tenant-share", st.StoreTenantShare, "one tenant's share of the local tier once it is full (0 < f ≤ 1; 1: no shares)")
	fs.StringVar(&st.LogLevel, "log-level", st.LogLevel, "debug, info, warn or error")
	fs.StringVar(&st.LogFormat, "log-format", st.LogFormat, "text or json")
	st.tracingFlags(fs)
	st.decisionLogFlags(fs)

	// The config file is read first so that environment and flags override it.
	file := getenv("GATEWAY_CONFIG")
	for i, a := range args {
		switch {
		case a == "--config" || a == "-config":
			if i+1 < len(args) {
				file = args[i+1]
			}
		case strings.HasPrefix(a, "--config="), strings.HasPrefix(a, "-config="):
			file = a[strings.IndexByte(a, '=')+1:]
		}
	}
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if err := applyYAML(fs, data); err != nil {
			return nil, fmt.Errorf("config %s: %w", file, err)
		}
	}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" {
			return
		}
		key := "GATEWAY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(key); v != "" {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s: %w", key, err)
			}
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if err := st.resolveTracing(getenv); err != nil {
		return nil, err
	}
	return st, nil
}

// applyYAML sets flags from a YAML mapping whose keys are the flag names with underscores,
// so that the file, the environment and the command line can never disagree on a name.
func applyYAML(fs *flag.FlagSet, data []byte) error {
	var m map[string]yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&m); err != nil {
		return err
	}
	for k, n := range m {
		name := strings.ReplaceAll(k, "_", "-")
		f := fs.Lookup(name)
		if f == nil || name == "config" {
			return fmt.Errorf("line %d: unknown key %q", n.Line, k)
		}
		if n.Kind != yaml.ScalarNode {
			return fmt.Errorf("line %d: %s must be a scalar", n.Line, k)
		}
		if err := f.Value.Set(n.Value); err != nil {
			return fmt.Errorf("line %d: %s: %w", n.Line, k, err)
		}
	}
	return nil
}

// openStore builds the state store the settings describe (Redis when a URL is given, else
// the embedded local store), with its metrics on reg; extra options come last so that a
// caller can add hooks without restating the settings.
func (st *Settings) openStore(log *slog.Logger, reg prometheus.Registerer, extra ...statestore.Option) (*statestore.Tiered, error) {
	opts := []statestore.Option{
		statestore.WithRedisURL(st.Redis),
		statestore.WithRegisterer(reg),
		statestore.WithLogger(log),
		statestore.WithOpTimeout(st.StoreTimeout),
		statestore.WithTTL(statestore.KindPending, st.PendingTTL),
		statestore.WithTTL(statestore.KindAnchor, st.AnchorTTL),
		statestore.WithTTL(statestore.KindReplay, st.ReplayTTL),
		statestore.WithReplayCap(st.ReplayCapBytes),
		statestore.WithLocalBytes(st.StoreLocalBytes),
		statestore.WithTenantShare(st.StoreTenantShare),
	}
	store, err := statestore.New(append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("state store: %w", err)
	}
	return store, nil
}

// NewGateway builds the gateway the settings describe: the state store (extra store
// options come last), the server with its metrics on reg, and the reloader, gated by the
// fixtures of ReloadGate when it is set. No policy set is active yet: the caller's first
// Reload activates one, through the same gate and metrics as every later reload. Closing
// the server closes the store; ShutdownTracing, after it, flushes the spans when tracing is on,
// and CloseDecisionLog writes the last decision records when the decision log is on.
func (st *Settings) NewGateway(log *slog.Logger, reg *prometheus.Registry, extra ...statestore.Option) (*gateway.Server, *gateway.Reloader, error) {
	store, err := st.openStore(log, reg, extra...)
	if err != nil {
		return nil, nil, err
	}
	hooks, err := st.openTracing(log)
	if err != nil {
		_ = store.Close()
		return nil, nil, err
	}
	decisions, err := st.openDecisionLog(log, reg)
	if err != nil {
		_ = store.Close()
		_ = st.ShutdownTracing(context.Background())
		return nil, nil, err
	}
	hooks = append(hooks, decisions...)
	srv, err := gateway.New(st.Config, append([]gateway.Option{gateway.WithStore(store), gateway.WithLogger(log), gateway.WithRegistry(reg)}, hooks...)...)
	if err != nil {
		_ = store.Close()
		_ = st.ShutdownTracing(context.Background())
		_ = st.CloseDecisionLog()
		return nil, nil, err
	}
	var opts []gateway.ReloaderOption
	if st.ReloadGate != "" {
		opts = append(opts, gateway.WithReloadGate(FixtureGate(st.ReloadGate)))
	}
	return srv, gateway.NewReloader(srv, opts...), nil
}

// splitHeaders reads a comma-separated header list; "none" (or an empty value) is the empty
// list, which reads no header at all.
func splitHeaders(v string) []string {
	out := []string{}
	if strings.TrimSpace(v) == "none" {
		return out
	}
	for _, h := range strings.Split(v, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}
