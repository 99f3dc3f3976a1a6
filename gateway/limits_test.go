package gateway_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/gateway"
)

func dialStatus(t *testing.T, url, token string) (*websocket.Conn, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
	if err != nil {
		require.NotNil(t, resp, "%v", err)
		return nil, resp.StatusCode
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	return c, http.StatusSwitchingProtocols
}

// TestConnectionLimits: a tenant over its connection cap is refused with 429 before the
// upgrade, and counted; other tenants are not affected; the total cap holds too.
func TestConnectionLimits(t *testing.T) {
	s := newStack(t, emulator.Reply("ok"), withConfig(func(c *gateway.Config) {
		c.MaxTenantConnections = 2
		c.MaxConnections = 3
	}))
	_, st := dialStatus(t, s.wsURL, "tenant-a")
	assert.Equal(t, 101, st)
	_, st = dialStatus(t, s.wsURL, "tenant-a")
	assert.Equal(t, 101, st)
	_, st = dialStatus(t, s.wsURL, "tenant-a")
	assert.Equal(t, http.StatusTooManyRequests, st, "a third connection of one tenant")
	_, st = dialStatus(t, s.wsURL, "tenant-b")
	assert.Equal(t, 101, st, "another tenant still connects")
	_, st = dialStatus(t, s.wsURL, "tenant-c")
	assert.Equal(t, http.StatusTooManyRequests, st, "the total cap")
	assert.Equal(t, 1.0, s.counter("chainmend_limit_rejections_total", map[string]string{"limit": "tenant_connections"}))
	assert.Equal(t, 1.0, s.counter("chainmend_limit_rejections_total", map[string]string{"limit": "connections"}))
}

// TestQueuedFramesBounded: a client that floods creates while its turn is in flight gets
// one error frame per dropped frame, and the queued turns still run.
func TestQueuedFramesBounded(t *testing.T) {
	s := newStack(t, emulator.Reply("ok"), withConfig(func(c *gateway.Config) { c.MaxQueuedFrames = 2 }),
		withEmulator(emulator.WithFaults(emulator.Faults{All: emulator.CreateFault{Delay: 300 * time.Millisecond}})))
	c := s.dial("flood")
	frame := create(nil, user("hi"))
	for i := 0; i < 8; i++ {
		c.send(frame)
	}
	completed, refused := 0, 0
	for completed+refused < 8 {
		e, err := c.next()
		require.NoError(t, err)
		switch {
		case e.Type == "response.completed":
			completed++
		case e.Type == "error":
			assert.Equal(t, "too_many_queued_frames", e.Error.Code)
			assert.Equal(t, 429, e.Status)
			refused++
		}
	}
	assert.GreaterOrEqual(t, completed, 3, "the turn in flight and the queued ones run")
	assert.GreaterOrEqual(t, refused, 1)
	assert.Equal(t, float64(refused), s.counter("chainmend_limit_rejections_total", map[string]string{"limit": "queued_frames"}))
}

// TestGracefulShutdown: a turn in flight finishes, then its client is closed with 1001;
// new connections are refused and /readyz says so.
func TestGracefulShutdown(t *testing.T) {
	s := newStack(t, emulator.Reply("ok"),
		withEmulator(emulator.WithFaults(emulator.Faults{All: emulator.CreateFault{Delay: 400 * time.Millisecond}})))
	c := s.dial("draining")
	c.send(create(nil, user("slow")))
	time.Sleep(100 * time.Millisecond) // the turn is in flight
	var wg sync.WaitGroup
	wg.Add(1)
	var shutdownErr error
	go func() {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shutdownErr = s.srv.Shutdown(ctx)
	}()
	r := c.collect()
	assert.Equal(t, "response.completed", r.last.Type, "the turn in flight finishes")
	_, err := c.next()
	var ce websocket.CloseError
	require.True(t, errors.As(err, &ce), "%v", err)
	assert.Equal(t, websocket.StatusGoingAway, ce.Code)
	wg.Wait()
	assert.NoError(t, shutdownErr)
	_, st := dialStatus(t, s.wsURL, "late")
	assert.Equal(t, http.StatusServiceUnavailable, st)
	resp, err := http.Get(strings.TrimSuffix(s.httpURL, "/v1/responses") + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
}
