package gateway_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
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

// rawPost opens a TCP connection to the gateway and sends a POST's headers announcing cl
// bytes, then body (possibly shorter). The connection is closed when the test ends.
func rawPost(t *testing.T, s *stack, cl int, body string) net.Conn {
	t.Helper()
	u, err := url.Parse(s.httpURL)
	require.NoError(t, err)
	c, err := net.Dial("tcp", u.Host)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	_, err = fmt.Fprintf(c, "POST /v1/responses HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		u.Host, testSecret, cl, body)
	require.NoError(t, err)
	return c
}

// TestHTTPBodyGrowsAsBytesArrive: a body announced at the frame limit but not sent costs the
// gateway what arrived (a small first buffer), not what Content-Length promised, and a body
// that does not arrive in time is answered 408 (issue 11 items 2 and 5).
func TestHTTPBodyGrowsAsBytesArrive(t *testing.T) {
	s := newStack(t, emulator.Reply("ok"), withConfig(func(c *gateway.Config) {
		c.BodyReadTimeout = 500 * time.Millisecond
		c.MaxFrameBytes = 16 << 20
	}))
	const conns = 40
	for i := 0; i < conns; i++ {
		rawPost(t, s, 16<<20, `{"type":"response.create",`)
	}
	eventually(t, "every body to be begun", func() bool {
		return gaugeValue(t, s, "chainmend_request_body_bytes") >= conns*(64<<10)
	})
	held := gaugeValue(t, s, "chainmend_request_body_bytes")
	assert.Equal(t, float64(conns*(64<<10)), held, "buffers are sized by what arrived, not by Content-Length (%d × 16 MiB)", conns)

	c := rawPost(t, s, 1000, `{"type":`)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	assert.Equal(t, http.StatusRequestTimeout, resp.StatusCode)
	eventually(t, "the budget to be given back", func() bool { return gaugeValue(t, s, "chainmend_request_body_bytes") == 0 })
}

// TestHTTPBodyBudget: request bodies held at once are bounded in bytes; past the budget a
// request is refused with 503 and Retry-After, and the others are unaffected.
func TestHTTPBodyBudget(t *testing.T) {
	s := newStack(t, emulator.Reply("ok"), withConfig(func(c *gateway.Config) {
		c.MaxFrameBytes = 1 << 20
		c.MaxBodyBytesInFlight = 1 << 20
		c.BodyReadTimeout = 10 * time.Second
	}))
	big := strings.Repeat("x", 700<<10)
	rawPost(t, s, 900<<10, big)
	eventually(t, "the first body to be held", func() bool { return gaugeValue(t, s, "chainmend_request_body_bytes") >= 700<<10 })
	resp, body := s.post(create(nil, user(strings.Repeat("y", 400<<10))), "sess-budget")
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%.300s", body)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))
	assert.Contains(t, string(body), "too_many_request_bodies")
	assert.Equal(t, 1.0, s.counter("chainmend_limit_rejections_total", map[string]string{"limit": "request_bodies"}))
}

// TestHTTPCountsAgainstConnectionLimits: an HTTP request holds a slot of its tenant like a
// WebSocket does (issue 11 item 4).
func TestHTTPCountsAgainstConnectionLimits(t *testing.T) {
	s := newStack(t, emulator.Reply("ok"), withConfig(func(c *gateway.Config) { c.MaxTenantConnections = 1 }))
	c := s.dial("holds-the-slot")
	c.ok(create(nil, user("hi")))
	resp, body := s.post(create(nil, user("hi")), "sess-limit")
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "%s", body)
	assert.Contains(t, string(body), "tenant_connections")
}

// TestClientIdleTimeout: a WebSocket that sends nothing and has nothing in flight is closed
// with 1001 after the idle timeout; one with a turn in flight is not.
func TestClientIdleTimeout(t *testing.T) {
	s := newStack(t, emulator.Reply("ok"), withConfig(func(c *gateway.Config) { c.ClientIdleTimeout = 300 * time.Millisecond }),
		withEmulator(emulator.WithFaults(emulator.Faults{All: emulator.CreateFault{Delay: 700 * time.Millisecond}})))
	busy := s.dial("idle-busy")
	busy.send(create(nil, user("slow")))
	idle := s.dial("idle-quiet")
	_, err := idle.next()
	require.Error(t, err)
	assert.Equal(t, websocket.StatusGoingAway, closeStatus(err))
	r := busy.collect()
	assert.Equal(t, "response.completed", r.last.Type, "a turn in flight keeps its connection")
	assert.Positive(t, s.counter("chainmend_limit_rejections_total", map[string]string{"limit": "client_idle"}))
}

func gaugeValue(t *testing.T, s *stack, name string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			v := 0.0
			for _, m := range mf.GetMetric() {
				v += m.GetGauge().GetValue()
			}
			return v
		}
	}
	return 0
}

// TestQueuedBytesProcessBudget: creates waiting behind their lane's turn are bounded in bytes
// across connections, not only per connection (issue 11 item 3): against a stalled upstream,
// a second connection's waiting create is refused on its lane once the process budget is
// full, and the budget comes back when a connection ends.
func TestQueuedBytesProcessBudget(t *testing.T) {
	s := newStack(t, emulator.Reply("ok"), withConfig(func(c *gateway.Config) {
		c.MaxFrameBytes = 128 << 10
		c.MaxQueuedBytes = 128 << 10
		c.MaxQueuedBytesTotal = 128 << 10
		c.FirstEventTimeout = 30 * time.Second
	}), withEmulator(emulator.WithFaults(emulator.Faults{All: emulator.CreateFault{Stall: true}})))
	pad := strings.Repeat("z", 80<<10)
	a := s.dial("budget-a")
	a.send(create(nil, user("in flight")))
	a.send(create(nil, user(pad))) // waits: 80 KiB of the process's 128
	eventually(t, "a's first create upstream", func() bool { return len(s.creates()) == 1 })
	b := s.dial("budget-b")
	b.send(create(obj{"stream_id": "x"}, user("in flight")))
	b.send(create(obj{"stream_id": "x"}, user(pad))) // would wait: over the process budget
	e, err := b.next()
	require.NoError(t, err)
	assert.Equal(t, "too_many_queued_frames", e.Error.Code)
	assert.Equal(t, "x", e.StreamID, "the refusal names the lane")
	_ = a.c.CloseNow()
	eventually(t, "a's budget to come back", func() bool {
		b.send(create(obj{"stream_id": "x"}, user(pad)))
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, _, err := b.c.Read(ctx)
		return err != nil // nothing refused within the wait: the create is waiting
	})
}

// TestConflictingLengthHeaders: a request with both Content-Length and Transfer-Encoding
// (a request smuggling attempt, RFC 9112 §6.3) is read by its Transfer-Encoding, as Go's
// server does for any intermediary, and the upstream gets a request the gateway built
// itself: one create with the chunked body and its own Content-Length, never the client's
// length headers, so a disagreement cannot smuggle a request past the gateway.
func TestConflictingLengthHeaders(t *testing.T) {
	s := newStack(t, emulator.Reply("ok"))
	u, err := url.Parse(s.httpURL)
	require.NoError(t, err)
	c, err := net.Dial("tcp", u.Host)
	require.NoError(t, err)
	defer c.Close()
	body := create(nil, user("chunked"))
	_, err = fmt.Fprintf(c, "POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n",
		testSecret, len(body), body)
	require.NoError(t, err)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	require.Len(t, s.creates(), 1)
	assert.JSONEq(t, body, string(s.creates()[0].Frame), "the upstream got the chunked body, whole")
}

// TestSourceConnectionLimit: one address with a new random credential per connection cannot
// fill the global limit (issue 11 item 4): the per-address cap refuses it first.
func TestSourceConnectionLimit(t *testing.T) {
	s := newStack(t, emulator.Reply("ok"), withConfig(func(c *gateway.Config) {
		c.MaxSourceConnections = 3
		c.MaxConnections = 10
	}))
	for i := 0; i < 3; i++ {
		_, code := dialStatus(t, s.wsURL, fmt.Sprintf("sk-random-%d", i))
		require.Equal(t, http.StatusSwitchingProtocols, code)
	}
	_, code := dialStatus(t, s.wsURL, "sk-random-3")
	assert.Equal(t, http.StatusTooManyRequests, code)
	assert.Equal(t, 1.0, s.counter("chainmend_limit_rejections_total", map[string]string{"limit": "source_connections"}))
	assert.Zero(t, s.counter("chainmend_limit_rejections_total", map[string]string{"limit": "connections"}), "the global limit never filled")
}
