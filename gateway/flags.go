package gateway

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"chainmend/statestore"
)

// Settings are the command line of cmd/gateway: the Config plus process-level options.
type Settings struct {
	Config
	ConfigFile string
	LogLevel   string
	LogFormat  string
}

// ParseSettings reads the configuration from, in rising precedence: defaults, a YAML file
// (--config or GATEWAY_CONFIG), the environment (GATEWAY_LISTEN, GATEWAY_UPSTREAM, …: the
// flag name upper-cased, dashes as underscores), and flags.
func ParseSettings(args []string, getenv func(string) string, stderr io.Writer) (*Settings, error) {
	st := &Settings{Config: DefaultConfig(), LogLevel: "info", LogFormat: "text"}
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &st.Config
	fs.StringVar(&st.ConfigFile, "config", "", "YAML configuration file (keys as the flags, with underscores)")
	fs.StringVar(&c.Listen, "listen", c.Listen, "address to serve on")
	fs.StringVar(&c.Upstream, "upstream", c.Upstream, "Responses API base URL")
	fs.StringVar(&c.Policies, "policies", c.Policies, "policy directory")
	fs.StringVar(&c.Redis, "redis", c.Redis, "Redis URL (redis://, rediss://, redis-sentinel or cluster); empty: embedded local store")
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
	fs.IntVar(&c.MaxQueuedFrames, "max-queued-frames", c.MaxQueuedFrames, "frames a client may queue while its turn is in flight")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", c.ShutdownGrace, "how long in-flight turns may finish after SIGTERM")
	fs.StringVar(&c.ReloadGate, "reload-gate", c.ReloadGate, "fixture directory a new policy set must pass before it is activated (empty: compile only)")
	fs.DurationVar(&c.ReloadPoll, "reload-poll", c.ReloadPoll, "checksum poll of the policy directory, a safety net under file events")
	fs.StringVar(&st.LogLevel, "log-level", st.LogLevel, "debug, info, warn or error")
	fs.StringVar(&st.LogFormat, "log-format", st.LogFormat, "text or json")

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
	return st, nil
}

// applyYAML sets flags from a YAML mapping whose keys are the flag names with underscores.
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

// OpenStore builds the state store the settings describe (Redis when a URL is given, else
// the embedded local store), with its metrics on reg; extra options come last.
func (st *Settings) OpenStore(log *slog.Logger, reg prometheus.Registerer, extra ...statestore.Option) (*statestore.Tiered, error) {
	opts := []statestore.Option{
		statestore.WithRedisURL(st.Redis),
		statestore.WithRegisterer(reg),
		statestore.WithLogger(log),
		statestore.WithOpTimeout(st.StoreTimeout),
		statestore.WithTTL(statestore.KindPending, st.PendingTTL),
		statestore.WithTTL(statestore.KindAnchor, st.AnchorTTL),
		statestore.WithTTL(statestore.KindReplay, st.ReplayTTL),
		statestore.WithReplayCap(st.ReplayCapBytes),
	}
	store, err := statestore.New(append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("state store: %w", err)
	}
	return store, nil
}
