package gateway_test

// End-to-end tests of bad input (SPEC §9): every bad frame gets exactly one clear error
// frame with a status and the connection stays open; an oversized frame closes with 1009;
// an upstream that stalls or closes mid-turn costs bounded time and one error frame; no
// other session notices.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/gateway"
	"chainmend/internal/e2etest"
)

func TestE2EBadFrames(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-bad")
	e1 := c.ok(create(nil, user("hello")))

	cases := []struct {
		name    string
		typ     websocket.MessageType
		frame   string
		code    string
		message string
	}{
		{"malformed JSON", websocket.MessageText, `{"type":"response.create","input":[`, "invalid_json", "malformed JSON"},
		{"binary frame", websocket.MessageBinary, create(nil, user("x")), "unsupported_frame", "binary"},
		{"array", websocket.MessageText, `[{"type":"response.create"}]`, "invalid_frame", "JSON object"},
		{"string", websocket.MessageText, `"response.create"`, "invalid_frame", "JSON object"},
		{"null", websocket.MessageText, `null`, "invalid_frame", "JSON object"},
		{"unknown type", websocket.MessageText, `{"type":"response.cancel","response_id":"resp_1"}`, "unknown_frame_type", "response.cancel"},
		{"no type", websocket.MessageText, `{"model":"gpt-5","input":[]}`, "missing_type", "type"},
		{"response.append", websocket.MessageText, `{"type":"response.append","input":[]}`, "unsupported_frame_type", "not supported"},
		{"message id as previous_response_id", websocket.MessageText, chained("msg_01a22114-0dce", user("x")), "invalid_previous_response_id", "resp_"},
		{"item id as previous_response_id", websocket.MessageText, chained("fc_emu0002", user("x")), "invalid_previous_response_id", "fc_emu0002"},
	}
	prev := e1.Response.ID
	for i, k := range cases {
		t.Run(k.name, func(t *testing.T) {
			c.t = t
			defer func() { c.t = s.t }()
			n := len(s.creates())
			c.sendType(k.typ, []byte(k.frame))
			e, err := c.next()
			require.NoError(t, err)
			require.Equal(t, "error", e.Type, "%s", e.Raw)
			assert.Equal(t, 400, e.Status, "an error frame with a top-level status: %s", e.Raw)
			assert.Equal(t, k.code, e.Error.Code)
			assert.Equal(t, "invalid_request_error", e.Error.Type)
			assert.Contains(t, e.Error.Message, k.message)
			// Exactly one reply, and the connection stays open: the next frame belongs to
			// the next turn, which works (chained, so the session kept its state too).
			r := c.turn(chained(prev, user("turn after bad frame "+string(rune('a'+i)))))
			require.Equal(t, "response.created", r.events[0].Type, "a second reply to the bad frame: %s", r.events[0].Raw)
			require.Equal(t, "response.completed", r.last.Type, "%s", r.last.Raw)
			prev = r.last.Response.ID
			assert.Len(t, s.creates(), n+1, "the bad frame never went upstream")
		})
	}
	assert.Zero(t, s.emu.Stats().Errors, "nothing bad reached the upstream")
	assert.Equal(t, 1.0, s.counter("chainmend_bad_frames_total", map[string]string{"code": "unsupported_frame_type"}))
	assert.Equal(t, 2.0, s.counter("chainmend_rule_fired_total", map[string]string{"reason": "prev_not_response_id"}))
}

func TestE2EFrameTooLarge(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript(), withConfig(func(c *gateway.Config) { c.MaxFrameBytes = 32 << 10 }))
	other := s.dial("sess-big-other")
	other.ok(create(nil, user("before")))

	c := s.dial("sess-big")
	c.ok(create(nil, user("small is fine")))
	big := create(nil, user(strings.Repeat("x", 64<<10)))
	c.send(big)
	_, err := c.next()
	require.Error(t, err)
	assert.Equal(t, websocket.StatusMessageTooBig, closeStatus(err), "closed with 1009: %v", err)
	eventually(t, "the oversized frame to be counted", func() bool {
		return s.counter("chainmend_bad_frames_total", map[string]string{"code": "frame_too_large"}) == 1
	})
	assert.Len(t, s.creates(), 2, "nothing of the big frame went upstream")

	// Other sessions never notice.
	other.ok(create(nil, user("after")))
}

func TestE2EUpstreamStalls(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript(), withConfig(func(c *gateway.Config) { c.FirstEventTimeout = 500 * time.Millisecond }))
	c := s.dial("sess-stall")
	e1 := c.ok(create(nil, user("one")))
	s.emu.SetCreateFault(2, emulator.CreateFault{Stall: true})
	start := time.Now()
	c.send(chained(e1.Response.ID, user("two")))
	eventually(t, "the stalled create to reach the emulator", func() bool { return len(s.creates()) == 2 })

	// Meanwhile another session is served as usual.
	other := s.dial("sess-stall-other")
	otherDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
		defer cancel()
		if err := other.c.Write(ctx, websocket.MessageText, []byte(create(nil, user("not stalled")))); err != nil {
			otherDone <- err
			return
		}
		e, err := readTurn(ctx, other.c)
		if err == nil && e.Type != "response.completed" {
			err = fmt.Errorf("other session: %s", e.Raw)
		}
		otherDone <- err
	}()

	r := c.collect()
	elapsed := time.Since(start)
	e := c.oneError(r)
	require.NoError(t, <-otherDone, "a stalled session must not stall another")
	assert.Equal(t, 504, e.Status)
	assert.Equal(t, "upstream_timeout", e.Error.Code)
	assert.Less(t, elapsed, 3*time.Second, "bounded by the configured timeout")
	assert.GreaterOrEqual(t, elapsed, 450*time.Millisecond)

	// The next turn works on a new upstream connection.
	c.ok(chained(e1.Response.ID, user("three")))
	assert.NotEqual(t, 1, s.lastCreate().Conn)
}

func TestE2EUpstreamClosesMidTurn(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-midturn")
	e1 := c.ok(create(nil, user("one")))
	s.emu.SetCreateFault(2, emulator.CreateFault{DropAfterEvents: 2})
	r := c.turn(chained(e1.Response.ID, user("two")))
	e := c.oneError(r)
	assert.Equal(t, []string{"response.created", "response.in_progress", "error"}, r.types(),
		"the events written before the drop, then one error frame")
	assert.Equal(t, 502, e.Status)
	assert.Equal(t, "upstream_connection_lost", e.Error.Code)
	assert.Len(t, s.creates(), 2, "part of the turn reached the client: no retry")

	// The session stays open; Codex resends its full context after an error.
	c.ok(create(nil, user("one"), obj{"type": "message", "role": "assistant", "content": []obj{{"type": "output_text", "text": "done"}}}, user("two")))
}

func TestE2EUpstreamUnreachable(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-unreachable")
	e1 := c.ok(create(nil, user("one")))
	s.emu.Close()
	before := s.fired()
	e := c.fails(chained(e1.Response.ID, user("two")))
	s.requireFired(before, []string{"transport_retry", "upstream_error_forwarded"})
	assert.Equal(t, 502, e.Status)
	assert.Equal(t, "upstream_connection_lost", e.Error.Code)
	// The connection to the client stays open and keeps answering.
	e = c.fails(create(nil, user("three")))
	assert.Equal(t, 502, e.Status)
}

func TestE2EUpstreamGoesQuietMidTurn(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript(), withConfig(func(c *gateway.Config) { c.IdleTimeout = 300 * time.Millisecond }))
	c := s.dial("sess-quiet")
	e1 := c.ok(create(nil, user("one")))
	s.emu.SetCreateFault(2, emulator.CreateFault{EventInterval: 2 * time.Second})
	start := time.Now()
	r := c.turn(chained(e1.Response.ID, user("two")))
	e := c.oneError(r)
	assert.Equal(t, []string{"response.created", "error"}, r.types())
	assert.Equal(t, 504, e.Status)
	assert.Equal(t, "upstream_timeout", e.Error.Code)
	assert.Less(t, time.Since(start), 1800*time.Millisecond)
	// The connection stays open (checked without the upstream: this stack's idle timeout
	// is too tight for a loaded machine).
	c.send(`{"type":"response.append"}`)
	e, err := c.next()
	require.NoError(t, err)
	assert.Equal(t, "unsupported_frame_type", e.Error.Code)
}

func TestE2EClientGoneMidTurn(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	c := s.dial("sess-gone")
	e1 := c.ok(create(nil, user("one")))
	// A long answer: the gateway must not wait for it once the client is gone.
	s.emu.SetCreateFault(2, emulator.CreateFault{Delay: 3 * clientTimeout})
	c.send(chained(e1.Response.ID, user("two")))
	eventually(t, "the create to reach the emulator", func() bool { return len(s.creates()) == 2 })
	_ = c.c.CloseNow()
	select {
	case <-s.emu.Conn(1).Done():
	case <-time.After(2 * time.Second):
		t.Fatal("the upstream connection of a departed client stays open")
	}
	s.counterReaches("chainmend_turns_total", map[string]string{"outcome": "client_gone"}, 1)
	// Nothing else is disturbed.
	s.dial("sess-gone-2").ok(create(nil, user("still serving")))
}
