package e2e

// Security end to end (issue 8 item 4): the gateway dials only its configured upstream;
// Redis passwords and TLS (rediss://) are parsed and used; tenant B cannot read or steer
// tenant A's chains even with A's response ids.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/internal/e2etest"
	"chainmend/internal/redistest"
)

// A client cannot make the gateway connect anywhere but its --upstream: not with a Host
// header, forwarding headers, query parameters, nor fields of the request that name
// another server. A decoy emulator listens at the address the client names; it must never
// see a connection.
func TestSecurityDialsOnlyConfiguredUpstream(t *testing.T) {
	t.Parallel()
	upstream := emulator.StartTest(t, emulator.WithScript(LoadScript()))
	decoy := emulator.StartTest(t, emulator.WithScript(LoadScript()))
	decoyHost := strings.TrimPrefix(decoy.URL(), "http://")
	bin := Build(t, "./cmd/gateway")
	g := StartGateway(t, bin, "A", "--upstream", upstream.URL(), "--policies", policiesDir(t), "--reload-poll", "1h")

	steer := http.Header{
		"X-Forwarded-Host":  {decoyHost},
		"X-Forwarded-Proto": {"http"},
		"Forwarded":         {"host=" + decoyHost + ";proto=http"},
		"X-Original-Url":    {decoy.HTTPURL()},
		"X-Rewrite-Url":     {decoy.HTTPURL()},
		"Openai-Base-Url":   {decoy.URL() + "/v1"},
		"X-Upstream":        {decoy.WebSocketURL()},
		"Origin":            {decoy.URL()},
	}
	fields := Item{
		"base_url": decoy.URL() + "/v1", "upstream": decoy.WebSocketURL(), "url": decoy.HTTPURL(),
		"api_base": decoy.URL(), "server_url": decoy.URL(), "model": decoy.HTTPURL(),
		"metadata": map[string]any{"base_url": decoy.URL(), "host": decoyHost},
	}
	hdr := func(session string) http.Header {
		h := header(session)
		for k, v := range steer {
			h[k] = v
		}
		return h
	}

	// WebSocket: a forged Host and query parameters on the handshake.
	for i, url := range []string{g.WSURL(), g.WSURL() + "?upstream=" + decoy.WebSocketURL() + "&base_url=" + decoy.URL()} {
		ctx, cancel := context.WithTimeout(context.Background(), ClientTimeout)
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: hdr("steer-ws"), Host: decoyHost})
		cancel()
		require.NoError(t, err, "dial %d", i)
		cl := &Client{tb: t, Conn: c}
		e1 := cl.OK(Create(fields, User("step 1 http://"+decoyHost+"/v1/responses")))
		cl.OK(Chained(e1.Response.ID, append([]Item{FCO(e1.CallIDs()[0], decoy.URL())}, User("finish"))...))
		cl.Close()
	}

	// HTTP: a forged Host and the same fields.
	body, _ := jsonBody(Create(fields, User("finish over http")))
	req, err := http.NewRequest(http.MethodPost, g.URL()+"/v1/responses", bytes.NewReader(body))
	require.NoError(t, err)
	req.Host = decoyHost
	req.Header = hdr("steer-http")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	out, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "%s", out)
	assert.Contains(t, string(out), `"status":"completed"`)

	st, dst := upstream.Stats(), decoy.Stats()
	assert.Equal(t, int64(5), st.Creates, "every turn went to the configured upstream")
	assert.Zero(t, dst.Connections, "the decoy was never dialed")
	assert.Zero(t, dst.Creates)
	for _, c := range upstream.Conns() {
		assert.Equal(t, decoyHost, c.Header().Get("X-Forwarded-Host"), "client headers are relayed as data, not followed")
	}
}

// jsonBody turns a WebSocket create into an HTTP body (the same object without "type").
func jsonBody(frame string) ([]byte, error) {
	return []byte(strings.Replace(frame, `"type":"response.create",`, "", 1)), nil
}

// Redis with a password, then with TLS and a password (rediss://): the gateway parses the
// URL, authenticates, writes its state there (the keys exist), and never logs the
// password. With a wrong password, or a certificate it cannot verify, it does not write
// to Redis (never in plaintext, never unauthenticated) and keeps serving from its local
// tier. The TLS case hands the test CA to the gateway through SSL_CERT_FILE (which
// crypto/x509 reads on Linux), set by a wrapper script around the binary.
func TestSecurityRedisPasswordAndTLS(t *testing.T) {
	t.Parallel()
	const password = "s3cr3t-redis-pw-7f"
	bin := Build(t, "./cmd/gateway")
	emu := emulator.StartTest(t, emulator.WithScript(LoadScript()))
	for _, withTLS := range []bool{false, true} {
		name := map[bool]string{false: "redis:// with a password", true: "rediss:// (TLS) with a password"}[withTLS]
		t.Run(name, func(t *testing.T) {
			r := startSecureRedis(t, password, withTLS)
			rc := r.client()
			defer rc.Close()
			caFile := r.caFile
			run := func(gname, url string) *Gateway {
				// A generous store deadline: the first operations include the TLS handshake,
				// and this is about authentication, not latency. A refused store makes the
				// gateway not ready (it says so), but it serves from its local tier.
				g := StartGatewayLive(t, withEnv(t, bin, "SSL_CERT_FILE="+caFile), gname, "--upstream", emu.URL(), "--policies", policiesDir(t), "--redis", url, "--reload-poll", "1h",
					"--store-timeout", "1s")
				c := Dial(t, g.WSURL(), header("secure-redis-"+gname))
				e := c.OK(Create(nil, User("step 1")))
				c.OK(Chained(e.Response.ID, FCO(e.CallIDs()[0], "ok"), User("finish")))
				c.Close()
				return g
			}
			good := run("good", r.url(password))
			assert.Positive(t, good.Sum(t, "chainmend_store_commits_total", map[string]string{"result": "redis"}), "commits reached Redis")
			assert.Zero(t, good.Sum(t, "chainmend_store_commits_total", map[string]string{"result": "degraded"}))
			keys, err := rc.Keys(context.Background(), "cm:*").Result()
			require.NoError(t, err)
			assert.NotEmpty(t, keys, "the gateway's state is in this Redis")

			// Refused: a wrong password (plain), a certificate the gateway cannot verify (TLS).
			var bad *Gateway
			if withTLS {
				caFile = "/nonexistent"
				bad = run("untrusted-cert", r.url(password))
			} else {
				bad = run("wrong-password", r.url("not-the-password"))
				// Refused credentials are a configuration the store cannot work with:
				// /readyz says so (issue 16), the turns went on all the same.
				resp, err := http.Get(bad.URL() + "/readyz")
				require.NoError(t, err)
				_ = resp.Body.Close()
				assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
			}
			n, err := rc.DBSize(context.Background()).Result()
			require.NoError(t, err)
			assert.Equal(t, int64(len(keys)), n, "nothing was written without authentication or over an unverified connection")
			assert.Positive(t, bad.Sum(t, "chainmend_store_commits_total", map[string]string{"result": "degraded"}),
				"refused by Redis, the turns went on from the local tier")
			for _, g := range []*Gateway{good, bad} {
				for _, where := range []string{g.Logs(), g.Metrics(t)} {
					assert.NotContains(t, where, password, "gateway %s leaked the Redis password", g.Name)
					assert.NotContains(t, where, "not-the-password")
				}
				noSecret(t, "gateway "+g.Name+" log", g.Logs())
			}
		})
	}
}

// Tenant B (another credential) uses tenant A's session id and A's response id and call
// ids, on the instance A used and on another. B's turns are never repaired with A's
// pending calls, anchor or transcript (no inference, no alignment, no aborted outputs, no
// replay of A's context), and nothing B does changes A's chain: A then moves to the other
// instance and is repaired from its own intact state.
func TestSecurityTenantCannotSteerChains(t *testing.T) {
	t.Parallel()
	r := redistest.Start(t)
	bin := Build(t, "./cmd/gateway")
	emu := emulator.StartTest(t, emulator.WithScript(LoadScript()))
	args := []string{"--upstream", emu.URL(), "--policies", policiesDir(t), "--redis", r.URL(), "--reload-poll", "1h"}
	g1, g2 := StartGateway(t, bin, "G1", args...), StartGateway(t, bin, "G2", args...)
	const session = "shared-session-id"
	tenantA := http.Header{"Authorization": {"Bearer sk-tenant-a-0001"}, "Session-Id": {session}}

	a1 := Dial(t, g1.WSURL(), tenantA)
	ra := a1.OK(Create(nil, User("step 1 secret-of-tenant-A")))
	require.Len(t, ra.CallIDs(), 1)
	callA := ra.CallIDs()[0]
	a1.Close()

	steal := []struct {
		name  string
		frame string
	}{
		{"outputs chained to A's response", Chained(ra.Response.ID, FCO(callA, "from-B"), User("B step"))},
		{"outputs without previous_response_id", Create(nil, FCO(callA, "from-B"), User("B step"))},
		{"A's response id, no outputs", Chained(ra.Response.ID, User("B step"))},
		{"a fresh create", Create(nil, User("B step"))},
	}
	for _, g := range []*Gateway{g1, g2} {
		for i, s := range steal {
			t.Run(g.Name+": "+s.name, func(t *testing.T) {
				// A new tenant B for every case, so that B has no state of its own: any
				// repair would have to come from A's.
				tenantB := http.Header{"Authorization": {fmt.Sprintf("Bearer sk-tenant-b-%s-%d", g.Name, i)}, "Session-Id": {session}}
				before := g.Fired(t)
				n := len(emu.Creates())
				b := Dial(t, g.WSURL(), tenantB)
				res := b.Turn(s.frame)
				b.Close()
				reasons := g.FiredSince(t, before)
				t.Logf("B got %s %s; rules fired %v", res.Last.Type, res.Last.Raw[:min(len(res.Last.Raw), 160)], reasons)
				for _, r := range []string{"pending_prev_infer", "pending_prev_align", "aborted_injected", "fresh_connection_replay",
					"function_call_output_prev_infer", "function_call_output_prev_align", "anchor_reset", "function_call_output_call_id_match"} {
					assert.NotContains(t, reasons, r, "B's turn was repaired with A's state")
				}
				for _, c := range emu.Creates()[n:] {
					assert.NotContains(t, string(c.Frame), "secret-of-tenant-A", "A's context was sent for B")
					assert.NotContains(t, strings.Join(e2etest.Summary(c.Frame), " "), "fc:"+callA, "A's call was sent for B")
				}
				if res.Last.Type == "error" {
					assert.NotEmpty(t, res.Last.Error.Code)
					assert.Positive(t, res.Last.Status)
				}
			})
		}
	}

	// A moves to G2 and answers its call: repaired from A's own state, untouched by B.
	before := g2.Fired(t)
	n := len(emu.Creates())
	a2 := Dial(t, g2.WSURL(), tenantA)
	a2.OK(Chained(ra.Response.ID, FCO(callA, "from-A"), User("finish")))
	assert.Contains(t, g2.FiredSince(t, before), "fresh_connection_replay")
	up := emu.Creates()[n]
	assert.Equal(t, []string{"msg:user", "rs", "fc:" + callA, "fco:" + callA + "=from-A", "msg:user"}, e2etest.Summary(up.Frame))
	assert.NotContains(t, string(up.Frame), "from-B")
	assert.NoError(t, e2etest.Paired(up))
}

// withEnv returns a wrapper script that runs bin with extra environment variables
// (StartGateway passes the test's own environment, minus the gateway's settings).
func withEnv(t *testing.T, bin string, env ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("#!/bin/sh\nexec env")
	for _, kv := range env {
		b.WriteString(" '" + strings.ReplaceAll(kv, "'", `'\''`) + "'")
	}
	b.WriteString(" '" + bin + `' "$@"` + "\n")
	p := filepath.Join(t.TempDir(), "gateway-env.sh")
	require.NoError(t, os.WriteFile(p, []byte(b.String()), 0o755))
	return p
}
