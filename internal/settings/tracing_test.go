package settings

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestTracingSwitch: tracing is off unless a flag, the file or the standard environment
// turns it on, and the standard kill switches win over all of them.
func TestTracingSwitch(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, dir, "otel.yaml", "otel_endpoint: http://collector:4318\n")
	for _, tc := range []struct {
		name     string
		args     []string
		env      map[string]string
		on       bool
		endpoint string
	}{
		{name: "off by default"},
		{name: "flag", args: []string{"--otel"}, on: true},
		{name: "gateway environment", env: map[string]string{"GATEWAY_OTEL": "true"}, on: true},
		{name: "standard endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, on: true},
		{name: "standard traces endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, on: true},
		{name: "endpoint flag", args: []string{"--otel-endpoint", "http://collector:4318"}, on: true, endpoint: "http://collector:4318"},
		{name: "endpoint in the file", args: []string{"--config", file}, on: true, endpoint: "http://collector:4318"},
		{name: "an explicit false flag does not override the standard endpoint",
			args: []string{"--otel=false"}, env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, on: true},
		{name: "OTEL_SDK_DISABLED wins", args: []string{"--otel", "--otel-endpoint", "http://c:4318"},
			env: map[string]string{"OTEL_SDK_DISABLED": "true"}, endpoint: "http://c:4318"},
		{name: "OTEL_TRACES_EXPORTER=none wins", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}},
		{name: "HTTP protocols", args: []string{"--otel"}, on: true,
			env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}},
		{name: "the traces protocol wins over the general one", args: []string{"--otel"}, on: true,
			env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}},
		{name: "gRPC asked for while off is none of the gateway's business",
			env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_EXPORTER": "zipkin"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			st, err := Parse(tc.args, func(k string) string { return tc.env[k] }, &stderr)
			require.NoError(t, err, "%s", stderr.String())
			assert.Equal(t, tc.on, st.Otel)
			assert.Equal(t, tc.endpoint, st.OtelEndpoint)
		})
	}
}

// TestTracingRefused: an environment that asks for an export the gateway does not make
// fails the start instead of dropping every span.
func TestTracingRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"gRPC", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL=grpc: "},
		{"gRPC for traces", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc: "},
		{"another exporter", map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]string{"--otel"}, func(k string) string { return tc.env[k] }, &bytes.Buffer{})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// TestTracingWiring: NewGateway installs the tracing hook only when tracing is on, and
// ShutdownTracing flushes it; off, there is nothing to flush and no hook on the turn path.
func TestTracingWiring(t *testing.T) {
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(collector.Close)
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name    string
		args    []string
		hook    bool
		wantErr string
	}{
		{name: "off", hook: false},
		{name: "on", args: []string{"--otel-endpoint", collector.URL}, hook: true},
		{name: "an endpoint the exporter cannot use", args: []string{"--otel-endpoint", "collector:4318"}, wantErr: "tracing: otlp endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := Parse(tc.args, func(string) string { return "" }, &bytes.Buffer{})
			require.NoError(t, err)
			srv, _, err := st.NewGateway(log, prometheus.NewRegistry())
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.NoError(t, srv.Close())
			assert.Equal(t, tc.hook, st.hook != nil)
			require.NoError(t, st.ShutdownTracing(context.Background()))
		})
	}
}
