package e2e

// The Codex captures replayed (issue 6 item 2): what Codex CLI sent through the gateway
// (testdata/codex/codex-<version>-gateway-*.json, written by TestCodexCLI with
// CHAINMEND_CODEX_CAPTURE=1) goes through the gateway binary again, against the emulator
// with the same script and faults. No Codex needed: this runs in the ordinary suite.

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCodexCaptureReplay(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(RepoRoot(t), "testdata", "codex", "codex-*-gateway-*.json"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no gateway captures in testdata/codex (make e2e-codex CHAINMEND_CODEX_CAPTURE=1 writes them)")
	bin := Build(t, "./cmd/gateway")
	seen := map[string]bool{}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile(file)
			require.NoError(t, err)
			var cf captureFile
			require.NoError(t, json.Unmarshal(data, &cf))
			require.NotEmpty(t, cf.Frames)
			k := codexCaseNamed(t, cf.Case)
			emu := k.start(t)
			gw := StartGateway(t, bin, "replay-"+cf.Case, "--upstream", emu.URL(), "--policies", policiesDir(t), "--reload-poll", "1h")
			before := gw.Fired(t)

			clients := map[int]*Client{}
			for i, f := range cf.Frames {
				c := clients[f.Conn]
				if c == nil {
					require.LessOrEqual(t, f.Conn, len(cf.Connections))
					rc := cf.Connections[f.Conn-1]
					require.Equal(t, "ws", rc.Transport)
					c = Dial(t, gw.WSURL(), replayHeader(rc))
					clients[f.Conn] = c
				}
				c.Send(string(f.Frame))
				if f.Answer == "" {
					continue
				}
				r := c.Collect()
				require.Equal(t, f.Answer, r.Last.Type, "frame %d: %s", i, r.Last.Raw)
				assert.Equal(t, f.ResponseID, r.Last.Response.ID, "frame %d: the emulator issues the same ids", i)
				if f.ErrorCode != "" {
					assert.Equal(t, f.ErrorCode, r.Last.Error.Code)
				}
			}
			reasons := gw.FiredSince(t, before)
			k.check(t, emu, reasons)
			checkCodexUpstream(t, emu)
			assert.Equal(t, cf.Upstream, upstreamOf(emu), "the upstream receives what it received when Codex ran")
			noSecret(t, "gateway log", gw.Logs())
		})
		for _, k := range codexCases {
			if strings.HasSuffix(file, "-gateway-"+k.name+".json") {
				seen[k.name] = true
			}
		}
	}
	for _, k := range codexCases {
		assert.True(t, seen[k.name], "no capture of the Codex case %q", k.name)
	}
}

// replayHeader is a captured handshake without the headers the WebSocket client sets
// itself, with the test credential in place of the redacted one.
func replayHeader(c recConn) http.Header {
	h := http.Header{}
	for k, v := range c.Headers {
		if hopHeaders[http.CanonicalHeaderKey(k)] {
			continue
		}
		h.Set(k, v)
	}
	h.Set("Authorization", "Bearer "+testSecret)
	return h
}
