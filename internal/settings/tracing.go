package settings

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"strings"

	"go.opentelemetry.io/otel"

	"chainmend/gateway"
)

// Tracing holds the OpenTelemetry settings: off by default, on with --otel, --otel-endpoint,
// or the standard OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
// environment, and off again, whatever else says on, with the standard OTEL_SDK_DISABLED=true
// or OTEL_TRACES_EXPORTER=none.
type Tracing struct {
	// Otel exports a span per turn over OTLP/HTTP. Parse sets it when tracing is on by any
	// of the ways above, and clears it when the environment turns tracing off.
	Otel bool
	// OtelEndpoint is the collector's OTLP/HTTP URL (a URL without a path gets /v1/traces);
	// empty: the standard environment's, else http://localhost:4318/v1/traces.
	OtelEndpoint string

	// hook is the tracing NewGateway built, for ShutdownTracing.
	hook *gateway.Tracing
}

// tracingFlags defines the tracing flags.
func (tr *Tracing) tracingFlags(fs *flag.FlagSet) {
	fs.BoolVar(&tr.Otel, "otel", tr.Otel, "export a span per turn over OTLP/HTTP (also on when OTEL_EXPORTER_OTLP_ENDPOINT or "+
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set; OTEL_SDK_DISABLED=true turns it off); the exporter reads the standard OTEL_* variables")
	fs.StringVar(&tr.OtelEndpoint, "otel-endpoint", tr.OtelEndpoint, "OTLP/HTTP collector URL, e.g. http://collector:4318 (turns --otel on; "+
		"empty: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318)")
}

// resolveTracing decides whether tracing is on once every layer of the settings is read,
// from them and the standard environment, and refuses an environment that asks for an
// export this gateway does not make: a start that silently drops every span would look like
// tracing that works.
func (tr *Tracing) resolveTracing(getenv func(string) string) error {
	if tr.OtelEndpoint != "" || getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" {
		tr.Otel = true
	}
	exporter := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER"))
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") || exporter == "none" {
		tr.Otel = false
	}
	if !tr.Otel {
		return nil
	}
	if exporter != "" && exporter != "otlp" {
		return fmt.Errorf("OTEL_TRACES_EXPORTER=%s: the gateway exports traces over otlp only (or none)", exporter)
	}
	// The per-signal variable wins over the general one, as in the exporter.
	key := "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	protocol := getenv(key)
	if protocol == "" {
		key = "OTEL_EXPORTER_OTLP_PROTOCOL"
		protocol = getenv(key)
	}
	switch protocol {
	case "", "http/protobuf", "http/json":
	default:
		return fmt.Errorf("%s=%s: the gateway exports OTLP over HTTP (http/protobuf or http/json, port 4318), not %s", key, protocol, protocol)
	}
	return nil
}

// openTracing builds the tracing hook when tracing is on and returns the gateway options
// that install it; off, it returns none, so the gateway has no hook and tracing costs nothing.
func (tr *Tracing) openTracing(log *slog.Logger) ([]gateway.Option, error) {
	if !tr.Otel {
		return nil, nil
	}
	var opts []gateway.TracingOption
	if tr.OtelEndpoint != "" {
		opts = append(opts, gateway.WithOTLPEndpoint(tr.OtelEndpoint))
	}
	hook, err := gateway.NewTracing(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	// Export failures (a collector down) reach the process log, not stderr's bare lines; the
	// exporter's errors name the collector, never its headers.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("trace export failed", "err", err) }))
	log.Info("tracing on: a span per turn over OTLP/HTTP", "endpoint", endpointForLog(tr.OtelEndpoint))
	tr.hook = hook
	return []gateway.Option{gateway.WithTurnHook(hook)}, nil
}

// endpointForLog names the collector without what a URL may hold of a credential.
func endpointForLog(endpoint string) string {
	if endpoint == "" {
		return "from the OTEL_EXPORTER_OTLP_* environment"
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "(invalid)"
	}
	return u.Scheme + "://" + u.Host + u.Path
}

// ShutdownTracing exports the spans still queued and stops the exporter; without tracing it
// does nothing. Call it after the gateway has closed, so that the last turns' spans are sent.
func (tr *Tracing) ShutdownTracing(ctx context.Context) error {
	if tr.hook == nil {
		return nil
	}
	return tr.hook.Shutdown(ctx)
}
