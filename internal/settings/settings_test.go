package settings

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
	"chainmend/gateway"
)

// writeFile writes body to dir/name and returns the path.
func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
	return p
}

// TestParse: defaults, then the YAML file, then the environment, then flags; every layer
// reaches the gateway's Config and the process options alike.
func TestParse(t *testing.T) {
	dir := t.TempDir()
	file := func(name, body string) string { return writeFile(t, dir, name, body) }
	full := file("full.yaml", "policies: /etc/p\nmode: strict\nreload_gate: /etc/fixtures\nreload_poll: 1h\nlog_level: debug\n")
	for _, tc := range []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, st *Settings)
	}{
		{
			name: "defaults",
			check: func(t *testing.T, st *Settings) {
				assert.Equal(t, gateway.DefaultConfig(), st.Config)
				assert.Equal(t, "info", st.LogLevel)
				assert.Equal(t, "text", st.LogFormat)
				assert.Empty(t, st.ReloadGate, "no gate unless asked: compile only")
			},
		},
		{
			name: "file",
			args: []string{"--config", full},
			check: func(t *testing.T, st *Settings) {
				assert.Equal(t, full, st.ConfigFile)
				assert.Equal(t, "/etc/p", st.Policies)
				assert.Equal(t, engine.ModeStrict, st.Mode)
				assert.Equal(t, "/etc/fixtures", st.ReloadGate)
				assert.Equal(t, time.Hour, st.ReloadPoll)
				assert.Equal(t, "debug", st.LogLevel)
			},
		},
		{
			name: "file from the environment, with = syntax elsewhere",
			args: []string{"--reload-gate=/flag/fixtures"},
			env:  map[string]string{"GATEWAY_CONFIG": full},
			check: func(t *testing.T, st *Settings) {
				assert.Equal(t, "/etc/p", st.Policies)
				assert.Equal(t, "/flag/fixtures", st.ReloadGate)
			},
		},
		{
			name: "session headers",
			args: []string{"--session-headers", " x-thread , session-id"},
			check: func(t *testing.T, st *Settings) {
				assert.Equal(t, []string{"x-thread", "session-id"}, st.SessionHeaders)
			},
		},
		{
			name: "no session header",
			env:  map[string]string{"GATEWAY_SESSION_HEADERS": "none"},
			check: func(t *testing.T, st *Settings) {
				assert.NotNil(t, st.SessionHeaders)
				assert.Empty(t, st.SessionHeaders, "prompt_cache_key, then the connection")
			},
		},
		{
			name: "environment over file",
			args: []string{"-config=" + full},
			env:  map[string]string{"GATEWAY_MODE": engine.ModeRepair, "GATEWAY_RELOAD_GATE": "/env/fixtures", "GATEWAY_MAX_FRAME_BYTES": "1024"},
			check: func(t *testing.T, st *Settings) {
				assert.Equal(t, engine.ModeRepair, st.Mode)
				assert.Equal(t, "/env/fixtures", st.ReloadGate)
				assert.EqualValues(t, 1024, st.MaxFrameBytes)
				assert.Equal(t, "/etc/p", st.Policies, "what the environment does not say, the file does")
			},
		},
		{
			name: "flags over environment",
			args: []string{"--config", full, "--mode", engine.ModeRepair, "--reload-gate", "", "--listen", "0.0.0.0:1"},
			env:  map[string]string{"GATEWAY_MODE": engine.ModeStrict, "GATEWAY_LISTEN": "127.0.0.1:2"},
			check: func(t *testing.T, st *Settings) {
				assert.Equal(t, engine.ModeRepair, st.Mode)
				assert.Empty(t, st.ReloadGate, "an empty flag turns the file's gate off")
				assert.Equal(t, "0.0.0.0:1", st.Listen)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			st, err := Parse(tc.args, func(k string) string { return tc.env[k] }, &stderr)
			require.NoError(t, err, "%s", stderr.String())
			tc.check(t, st)
		})
	}
}

func TestParseErrors(t *testing.T) {
	dir := t.TempDir()
	file := func(name, body string) string { return writeFile(t, dir, name, body) }
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown key", []string{"--config", file("unknown.yaml", "policies: p\npolicy: q\n")}, nil, `line 2: unknown key "policy"`},
		{"config key in the file", []string{"--config", file("config.yaml", "config: other.yaml\n")}, nil, `line 1: unknown key "config"`},
		{"not a scalar", []string{"--config", file("list.yaml", "listen:\n  - a\n")}, nil, "line 2: listen must be a scalar"},
		{"bad value in the file", []string{"--config", file("bad.yaml", "reload_poll: soon\n")}, nil, "line 1: reload_poll: "},
		{"missing file", []string{"--config", filepath.Join(dir, "absent.yaml")}, nil, "config: "},
		{"bad environment value", nil, map[string]string{"GATEWAY_MAX_FRAME_BYTES": "lots"}, "GATEWAY_MAX_FRAME_BYTES: "},
		{"unexpected arguments", []string{"serve", "now"}, nil, "unexpected arguments: serve now"},
		{"invalid configuration", []string{"--mode", "lenient"}, nil, `mode must be "repair" or "strict", not "lenient"`},
		{"unknown flag", []string{"--reload-gates", "x"}, nil, "flag provided but not defined: -reload-gates"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.args, func(k string) string { return tc.env[k] }, &bytes.Buffer{})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// TestFlagNames pins the command line: the flags (and with them the GATEWAY_* variables
// and YAML keys, which are derived from the flag names) are an operator interface, and
// moving the parser must not rename one.
func TestFlagNames(t *testing.T) {
	var stderr bytes.Buffer
	_, err := Parse([]string{"-help"}, func(string) string { return "" }, &stderr)
	require.True(t, errors.Is(err, flag.ErrHelp), "%v", err)
	var got []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(stderr.String(), -1) {
		got = append(got, m[1])
	}
	assert.Equal(t, []string{
		"anchor-ttl", "body-read-timeout", "client-idle-timeout", "config",
		"decision-log", "decision-log-keep", "decision-log-max-bytes",
		"dial-timeout", "first-event-timeout", "idle-timeout", "listen", "log-format",
		"log-level", "max-body-bytes-in-flight", "max-connections", "max-frame-bytes", "max-queued-bytes", "max-queued-bytes-total", "max-queued-frames", "max-source-connections", "max-tenant-connections", "metrics-listen", "mode",
		"otel", "otel-endpoint",
		"pending-ttl", "policies", "recovery", "redis", "reload-gate", "reload-poll", "replay-cap-bytes", "replay-ttl",
		"session-headers", "shutdown-grace", "store-local-bytes", "store-tenant-share", "store-timeout", "tenant-headers", "upstream", "upstream-max-age", "write-timeout",
	}, got)
}
