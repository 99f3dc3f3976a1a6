package e2e

// Tenant scoping by every credential header (issue 11 item 1, SPEC §7): two clients that
// differ in any header that selects a credential or a billing scope (Authorization, api-key,
// OpenAI-Organization, OpenAI-Project), or that carry no credential at all, never share state,
// whatever session id they send, on one instance or two, over WebSocket or HTTP.

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/internal/e2etest"
	"chainmend/internal/redistest"
)

func TestSecurityTenantScopedByEveryCredential(t *testing.T) {
	t.Parallel()
	r := redistest.Start(t)
	bin := Build(t, "./cmd/gateway")
	emu := emulator.StartTest(t, emulator.WithScript(LoadScript()))
	args := []string{"--upstream", emu.URL(), "--policies", policiesDir(t), "--redis", r.URL(), "--reload-poll", "1h"}
	g1, g2 := StartGateway(t, bin, "G1", args...), StartGateway(t, bin, "G2", args...)

	creds := []struct {
		name string
		// a and b are the credential headers of tenants A and B (the i-th B of a case gets
		// its index appended to every value, so that each B starts with no state).
		a, b map[string]string
	}{
		{"Azure api-key", map[string]string{"Api-Key": "key-a"}, map[string]string{"Api-Key": "key-b"}},
		{"no credential", map[string]string{}, map[string]string{}},
		{"one key, two projects", map[string]string{"Authorization": "Bearer sk-shared", "Openai-Project": "proj-a"},
			map[string]string{"Authorization": "Bearer sk-shared", "Openai-Project": "proj-b"}},
		{"one key, two organizations", map[string]string{"Authorization": "Bearer sk-shared", "Openai-Organization": "org-a"},
			map[string]string{"Authorization": "Bearer sk-shared", "Openai-Organization": "org-b"}},
	}
	for ci, cr := range creds {
		session := fmt.Sprintf("shared-session-%d", ci)
		hdr := func(kv map[string]string, suffix string) http.Header {
			h := http.Header{"Session-Id": {session}}
			for k, v := range kv {
				h.Set(k, v+suffix)
			}
			return h
		}
		secret := fmt.Sprintf("secret-of-tenant-A-%d", ci)
		a := Dial(t, g1.WSURL(), hdr(cr.a, ""))
		ra := a.OK(Create(nil, User("step 1 "+secret)))
		require.Len(t, ra.CallIDs(), 1)
		callA := ra.CallIDs()[0]
		a.Close()

		frames := []struct {
			name  string
			frame string
		}{
			{"outputs without previous_response_id", Create(nil, FCO(callA, "from-B"), User("B step"))},
			{"A's response id, no outputs", Chained(ra.Response.ID, User("B step"))},
		}
		i := 0
		for _, g := range []*Gateway{g1, g2} {
			for _, transport := range []string{"websocket", "http"} {
				for _, f := range frames {
					i++
					name := fmt.Sprintf("%s/%s/%s/%s", cr.name, g.Name, transport, f.name)
					t.Run(name, func(t *testing.T) {
						hb := hdr(cr.b, fmt.Sprintf("-%d", i))
						before := g.Fired(t)
						n := len(emu.Creates())
						switch transport {
						case "websocket":
							b := Dial(t, g.WSURL(), hb)
							b.Turn(f.frame)
							b.Close()
						default:
							req, err := http.NewRequest(http.MethodPost, g.URL()+"/v1/responses", bytes.NewReader([]byte(f.frame)))
							require.NoError(t, err)
							req.Header = hb
							req.Header.Set("Content-Type", "application/json")
							resp, err := http.DefaultClient.Do(req)
							require.NoError(t, err)
							_, _ = io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
						}
						reasons := g.FiredSince(t, before)
						t.Logf("reasons %v", reasons)
						for _, r := range []string{"pending_prev_infer", "pending_prev_align", "aborted_injected", "fresh_connection_replay",
							"function_call_output_prev_infer", "function_call_output_prev_align", "anchor_reset",
							"function_call_output_call_id_match", "drop_previous_response_id_full_replay", "tool_output_not_found_drop_prev_replay"} {
							assert.NotContains(t, reasons, r, "B's turn was repaired with A's state")
						}
						for _, c := range emu.Creates()[n:] {
							assert.NotContains(t, string(c.Frame), secret, "A's context was sent for B")
							assert.NotContains(t, strings.Join(e2etest.Summary(c.Frame), " "), "fc:"+callA, "A's call was sent for B")
						}
					})
				}
			}
		}
	}
	for _, g := range []*Gateway{g1, g2} {
		noSecret(t, "gateway "+g.Name+" log", g.Logs())
		assert.NotContains(t, g.Logs(), "key-a", "a credential reached the log")
	}
}
