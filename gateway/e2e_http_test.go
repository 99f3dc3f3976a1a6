package gateway_test

// End-to-end tests of POST /v1/responses (HTTP + SSE): events relayed as they come, full
// inputs repaired in place, upstream errors passed through with their status and body.

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/gateway"
	"chainmend/internal/e2etest"
)

func TestE2EHTTPStreamsEvents(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	resp, body := s.post(create(nil, user("hello")), "sess-http-stream")
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	assert.Contains(t, resp.Header.Get("Content-Type"), "text/event-stream")
	events := parseSSE(t, body)
	require.NotEmpty(t, events)

	// Every upstream event reaches the client, in order, names and data intact.
	conn := s.emu.Conns()[0]
	require.Equal(t, "http", conn.Transport())
	var sent []string
	for _, f := range conn.Sent() {
		sent = append(sent, f.Type)
	}
	var got []string
	for _, e := range events {
		got = append(got, e.name)
		var v struct {
			Type string `json:"type"`
		}
		require.NoError(t, json.Unmarshal(e.data, &v), "%s", e.data)
		assert.Equal(t, e.name, v.Type)
	}
	assert.Equal(t, sent, got)
	assert.Equal(t, "response.completed", got[len(got)-1])
	assert.Greater(t, countOf(got, "response.output_text.delta"), 1, "deltas are relayed one by one")
	assert.Equal(t, "Bearer "+testSecret, conn.Header().Get("Authorization"))
	assert.Equal(t, "sess-http-stream", conn.Header().Get("Session-Id"))
}

func countOf(list []string, s string) int {
	n := 0
	for _, e := range list {
		if e == s {
			n++
		}
	}
	return n
}

func TestE2EHTTPRepairsInPlace(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())

	t.Run("unanswered call", func(t *testing.T) {
		s := s.with(t)
		before := s.fired()
		resp, body := s.post(create(nil, user("go"), fcall("call_H1", "exec", `{}`), user("<turn_aborted>esc</turn_aborted>")), "sess-http-inline")
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		s.requireFired(before, []string{"aborted_injected_inline"})
		assert.Equal(t, []string{"msg:user", "fc:call_H1", "fco:call_H1=aborted", "msg:user"}, summary(t, s.lastCreate().Frame),
			"aborted right after the call")
		assert.Equal(t, emulator.OutcomeCompleted, s.lastCreate().Outcome)
	})

	t.Run("orphan output", func(t *testing.T) {
		s := s.with(t)
		before := s.fired()
		resp, body := s.post(create(nil, user("go"), fco("call_Hghost", "stray")), "sess-http-orphan")
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		s.requireFired(before, []string{"orphan_output_removed"}, "proactive_tool_output_reject")
		assert.Equal(t, []string{"msg:user"}, summary(t, s.lastCreate().Frame))
		assert.Equal(t, emulator.OutcomeCompleted, s.lastCreate().Outcome)
	})
}

func TestE2EHTTPUpstreamErrorPassthrough(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())

	t.Run("4xx", func(t *testing.T) {
		s := s.with(t)
		// No model: the upstream refuses it; the gateway has no business with it.
		resp, body := s.post(create(obj{"model": nil}, user("hi")), "sess-http-4xx")
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, "%s", body)
		assert.Contains(t, resp.Header.Get("Content-Type"), "application/json")
		sent := s.emu.Conns()[len(s.emu.Conns())-1].Sent()
		require.NotEmpty(t, sent)
		assert.Equal(t, string(sent[len(sent)-1].Data), string(body), "the upstream's body, byte for byte")
		var v struct {
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		require.NoError(t, json.Unmarshal(body, &v))
		assert.Equal(t, "missing_required_parameter", v.Error.Code)
	})

	t.Run("5xx", func(t *testing.T) {
		s := s.with(t)
		s.emu.FailNextCreate(emulator.ErrServer())
		resp, body := s.post(create(nil, user("hi")), "sess-http-5xx")
		require.Equal(t, http.StatusInternalServerError, resp.StatusCode, "%s", body)
		assert.JSONEq(t, string(emulator.ErrServer().HTTPBody()), string(body))
	})

	t.Run("stream cut short", func(t *testing.T) {
		s := s.with(t)
		seq := len(s.creates()) + 1
		s.emu.SetCreateFault(seq, emulator.CreateFault{DropAfterEvents: 2})
		resp, body := s.post(create(nil, user("hi")), "sess-http-cut")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		events := parseSSE(t, body)
		require.NotEmpty(t, events)
		last := events[len(events)-1]
		assert.Equal(t, "error", last.name, "the stream says it ended early: %s", body)
		var v struct {
			Status int `json:"status"`
			Error  struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		require.NoError(t, json.Unmarshal(last.data, &v))
		assert.Equal(t, http.StatusBadGateway, v.Status)
		assert.Equal(t, "upstream_connection_lost", v.Error.Code)
	})
}

func TestE2ECodexCaptureHTTP(t *testing.T) {
	t.Parallel()
	s := newStack(t, codexScript())
	for i, name := range []string{"http-create1-user-turn", "http-create2-tool-output"} {
		capt := loadCapture(t, name)
		h := loadHeaders(t, "http-conn"+string(rune('1'+i))+"-request-headers")
		resp, body := s.postHeader(capt.Frame, h)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", name, body)
		events := parseSSE(t, body)
		require.NotEmpty(t, events)
		last := events[len(events)-1]
		require.Equal(t, "response.completed", last.name)
		var v struct {
			Response struct {
				ID string `json:"id"`
			} `json:"response"`
		}
		require.NoError(t, json.Unmarshal(last.data, &v))
		assert.Equal(t, capt.ResponseID, v.Response.ID, name)
		up := s.creates()[i]
		sameJSON(t, capt.Frame, up.Frame, "%s passes untouched", name)
		assert.Empty(t, up.PreviousResponseID)
	}
}

func TestE2EHTTPChainedTurnReplayed(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript())
	resp, body := s.post(create(nil, user("call call_HC1")), "sess-http-chain")
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	events := parseSSE(t, body)
	var v struct {
		Response struct {
			ID string `json:"id"`
		} `json:"response"`
	}
	require.NoError(t, json.Unmarshal(events[len(events)-1].data, &v))

	// Over HTTP the upstream keeps nothing of a store:false response: the chain fails and
	// the replay carries the turn.
	before := s.fired()
	resp, body = s.post(chained(v.Response.ID, fco("call_HC1", "ok")), "sess-http-chain")
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	events = parseSSE(t, body)
	assert.Equal(t, "response.completed", events[len(events)-1].name)
	assert.Equal(t, 1, countOfEvents(events, "response.created"), "only the retry's events reach the client")
	s.requireFired(before, []string{"drop_previous_response_id_full_replay"})
	assert.Equal(t, []string{"msg:user", "rs", "fc:call_HC1", "fco:call_HC1=ok"}, summary(t, s.lastCreate().Frame))
}

func countOfEvents(events []sseEvent, name string) int {
	n := 0
	for _, e := range events {
		if e.name == name {
			n++
		}
	}
	return n
}

// TestE2EHTTPTimeouts: the HTTP path goes through the same driver as the WebSocket one, so a
// stalled or quiet upstream ends the request at the configured timeouts with the same
// answer (issue 11 item 5): 504 upstream_timeout before the stream, an error event after.
func TestE2EHTTPTimeouts(t *testing.T) {
	t.Parallel()
	s := newStack(t, e2etest.CmdScript(), withConfig(func(c *gateway.Config) {
		c.FirstEventTimeout = 300 * time.Millisecond
		c.IdleTimeout = 300 * time.Millisecond
	}))

	t.Run("stalled before the first event", func(t *testing.T) {
		s.emu.SetCreateFault(len(s.creates())+1, emulator.CreateFault{Stall: true})
		start := time.Now()
		resp, body := s.post(create(nil, user("hi")), "sess-http-stall")
		require.Equal(t, http.StatusGatewayTimeout, resp.StatusCode, "%s", body)
		assert.Contains(t, string(body), `"upstream_timeout"`)
		assert.Less(t, time.Since(start), 5*time.Second, "bounded by the configured timeout")
	})

	t.Run("quiet mid-stream", func(t *testing.T) {
		s.emu.SetCreateFault(len(s.creates())+1, emulator.CreateFault{EventInterval: 2 * time.Second})
		resp, body := s.post(create(nil, user("hi")), "sess-http-quiet")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		events := parseSSE(t, body)
		require.NotEmpty(t, events)
		last := events[len(events)-1]
		assert.Equal(t, "error", last.name)
		assert.Contains(t, string(last.data), `"upstream_timeout"`)
	})
}
