package gateway_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/internal/e2etest"
)

// refusingFront relays to the emulator until refuse is set; then it answers every
// WebSocket handshake 429 with Retry-After and an OpenAI error body, and counts them.
func refusingFront(t *testing.T, refuse *atomic.Bool, refused *atomic.Int64) func(string) string {
	return func(emuURL string) string {
		u, err := url.Parse(emuURL)
		require.NoError(t, err)
		proxy := httputil.NewSingleHostReverseProxy(u)
		ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if refuse.Load() && r.Header.Get("Upgrade") != "" {
				refused.Add(1)
				w.Header().Set("Retry-After", "7")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusTooManyRequests)
				_, _ = io.WriteString(w, `{"error":{"type":"rate_limit_error","code":"rate_limit_exceeded","message":"Rate limit reached.","param":null}}`)
				return
			}
			proxy.ServeHTTP(w, r)
		}))
		t.Cleanup(ts.Close)
		return ts.URL
	}
}

// TestE2EUpstreamRefusesHandshake: an upstream that refuses the WebSocket handshake with 429
// and Retry-After answers the client's handshake itself (issue 11 item 6), and a refusal of a
// later redial reaches the client as an error frame with the upstream's status and code,
// after one attempt: no immediate redials.
func TestE2EUpstreamRefusesHandshake(t *testing.T) {
	t.Parallel()
	var refuse atomic.Bool
	var refused atomic.Int64
	s := newStack(t, e2etest.CmdScript(), withFront(refusingFront(t, &refuse, &refused)))

	refuse.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, s.wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + testSecret}}})
	require.Error(t, err)
	require.NotNil(t, resp)
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	assert.Equal(t, "7", resp.Header.Get("Retry-After"))
	assert.Equal(t, int64(1), refused.Load())

	refuse.Store(false)
	c := s.dial("sess-refused")
	e1 := c.ok(create(nil, user("one")))
	refuse.Store(true)
	refused.Store(0)
	s.emu.ResetConnections()
	s.waitUpstreamClosed(1)
	e := c.fails(chained(e1.Response.ID, user("two")))
	assert.Equal(t, http.StatusTooManyRequests, e.Status)
	assert.Equal(t, "rate_limit_exceeded", e.Error.Code)
	assert.Contains(t, e.Error.Message, "Retry-After: 7")
	assert.Equal(t, int64(1), refused.Load(), "one dial, no retry into a rate limit")
}
