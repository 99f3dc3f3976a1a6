package settings

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/internal/decisionlog"
)

// TestDecisionLogSettings: the decision log is off by default, and its path, size and kept
// files come from flags, the environment and the file like every other setting.
func TestDecisionLogSettings(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want DecisionLog
	}{
		{"off by default", nil, nil, DecisionLog{DecisionLogMaxBytes: decisionlog.DefaultMaxBytes, DecisionLogKeep: decisionlog.DefaultKeep}},
		{"flags", []string{"--decision-log", "/var/log/d.jsonl", "--decision-log-max-bytes", "1000", "--decision-log-keep", "0"}, nil,
			DecisionLog{DecisionLogPath: "/var/log/d.jsonl", DecisionLogMaxBytes: 1000}},
		{"environment", nil, map[string]string{"GATEWAY_DECISION_LOG": "/tmp/d.jsonl", "GATEWAY_DECISION_LOG_KEEP": "9"},
			DecisionLog{DecisionLogPath: "/tmp/d.jsonl", DecisionLogMaxBytes: decisionlog.DefaultMaxBytes, DecisionLogKeep: 9}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := Parse(tc.args, func(k string) string { return tc.env[k] }, &bytes.Buffer{})
			require.NoError(t, err)
			assert.Equal(t, tc.want, st.DecisionLog)
		})
	}
}

// TestDecisionLogWiring: NewGateway opens the log and installs its hook only when a path is
// set; a path that cannot be opened fails the start; CloseDecisionLog closes what it opened.
func TestDecisionLogWiring(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		name    string
		args    []string
		file    string
		wantErr string
	}{
		{name: "off"},
		{name: "on", args: []string{"--decision-log", filepath.Join(dir, "d.jsonl")}, file: filepath.Join(dir, "d.jsonl")},
		{name: "a directory that does not exist", args: []string{"--decision-log", filepath.Join(dir, "no", "d.jsonl")}, wantErr: "decision log: "},
		{name: "a size that is no size", args: []string{"--decision-log", filepath.Join(dir, "e.jsonl"), "--decision-log-max-bytes", "-1"}, wantErr: "max bytes must be positive"},
	}
	for _, tc := range tests {
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
			assert.Equal(t, tc.file != "", st.writer != nil)
			if tc.file != "" {
				_, err := os.Stat(tc.file)
				assert.NoError(t, err, "the log file is created at start")
			}
			require.NoError(t, st.CloseDecisionLog())
		})
	}
}
