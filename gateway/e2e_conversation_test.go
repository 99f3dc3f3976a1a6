package gateway_test

// The conversation test (issue 4): 20 turns of tool calls while the upstream drops its
// connection every third turn and the client once omits its outputs (ESC). Through the
// gateway nothing of this reaches the client; the same client straight to the emulator
// fails.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
)

const (
	conversationTurns = 20
	conversationESC   = 10 // right after an upstream drop
)

// conversationFaults close every upstream connection after its third response.
var conversationFaults = emulator.Faults{CloseAfterResponses: 3}

// converse plays the client: a first user turn, then each turn chained to the last
// response with an output for each of its calls, except the ESC turn, which sends only
// the aborted-turn message. do sends one frame and returns the turn's last frame, or a
// transport error. It returns the client-visible errors and the responses completed.
func converse(t *testing.T, do func(frame string) (event, error)) (errs []string, completed []string) {
	t.Helper()
	prev := ""
	var calls []string
	for turn := 1; turn <= conversationTurns; turn++ {
		var frame string
		switch {
		case turn == 1:
			frame = create(nil, user("start the task"))
		case turn == conversationESC:
			frame = chained(prev, user(fmt.Sprintf("<turn_aborted>turn %d interrupted</turn_aborted>", turn)))
		default:
			items := make([]obj, 0, len(calls))
			for _, id := range calls {
				items = append(items, fco(id, fmt.Sprintf("output of %s at turn %d", id, turn)))
			}
			frame = chained(prev, items...)
		}
		e, err := do(frame)
		switch {
		case err != nil:
			errs = append(errs, fmt.Sprintf("turn %d: transport: %v", turn, err))
		case e.Type != "response.completed":
			errs = append(errs, fmt.Sprintf("turn %d: %s %d %s: %s", turn, e.Type, e.Status, e.Error.Code, e.Error.Message))
		default:
			prev, calls = e.Response.ID, e.callIDs()
			completed = append(completed, prev)
			require.NotEmpty(t, calls, "turn %d: every answer is a tool call", turn)
		}
	}
	return errs, completed
}

// readTurn reads frames to the end of a turn.
func readTurn(ctx context.Context, c *websocket.Conn) (event, error) {
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			return event{}, err
		}
		var e event
		if err := json.Unmarshal(data, &e); err != nil {
			return event{}, err
		}
		e.Raw = data
		if isTerminal(e.Type) {
			return e, nil
		}
	}
}

// reconnecting is a plain client of the upstream: when its socket is gone it opens a new
// one and resends the frame as it was (what a client does that knows nothing of the
// upstream's connection-local cache).
type reconnecting struct {
	t   *testing.T
	url string
	h   http.Header
	c   *websocket.Conn
}

func (r *reconnecting) do(frame string) (event, error) {
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		if r.c == nil {
			r.c = dialURL(r.t, r.url, r.h).c
		}
		ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
		err := r.c.Write(ctx, websocket.MessageText, []byte(frame))
		var e event
		if err == nil {
			e, err = readTurn(ctx, r.c)
		}
		cancel()
		if err == nil {
			return e, nil
		}
		lastErr = err
		_ = r.c.CloseNow()
		r.c = nil
	}
	return event{}, lastErr
}

func TestE2EConversationSurvivesDropsAndESC(t *testing.T) {
	t.Parallel()
	h := http.Header{"Authorization": {"Bearer " + testSecret}, "Session-Id": {"sess-conversation"}}

	// Through the gateway: not one error reaches the client.
	s := newStack(t, callScript(), withEmulator(emulator.WithFaults(conversationFaults)))
	gw := s.dialHeader(h)
	errs, completed := converse(t, func(frame string) (event, error) {
		gw.send(frame)
		r := gw.collect()
		return r.last, nil
	})
	assert.Empty(t, errs, "client-visible errors through the gateway")
	assert.Len(t, completed, conversationTurns)
	st := s.emu.Stats()
	assert.GreaterOrEqual(t, st.FaultCloses, int64(conversationTurns/3), "the upstream dropped every third turn")
	assert.GreaterOrEqual(t, len(s.emu.Conns()), conversationTurns/3+1)
	assert.Zero(t, st.Errors, "the gateway repaired every turn before the upstream had to refuse it")

	// The ESC turn went upstream with an aborted output for the call it left open.
	var esc emulator.Create
	for _, c := range s.creates() {
		if c.ResponseID == completed[conversationESC-1] {
			esc = c
		}
	}
	require.NotEmpty(t, esc.Frame)
	got := summary(t, esc.Frame)
	require.GreaterOrEqual(t, len(got), 2)
	assert.True(t, strings.HasSuffix(got[len(got)-2], "=aborted"), "aborted output before the ESC message: %v", got)
	assert.Equal(t, "msg:user", got[len(got)-1])

	// The rules that did it counted themselves, by reason.
	fired := s.fired()
	assert.GreaterOrEqual(t, fired["aborted_injected"], 1.0)
	assert.GreaterOrEqual(t, fired["fresh_connection_replay"]+fired["transport_retry"], float64(conversationTurns/3))
	assert.GreaterOrEqual(t, fired["fresh_connection_replay"], 1.0)
	s.counterReaches("chainmend_turns_total", map[string]string{"transport": "websocket", "outcome": "completed"}, conversationTurns)
	resp, err := http.Get(s.hs.URL + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	for _, want := range []string{
		`chainmend_rule_fired_total{mode="repair",policy="normalizer",reason="aborted_injected",rule="inject-aborted-for-pending",shadow="false",stage="pre_send"}`,
		`reason="fresh_connection_replay"`,
		`chainmend_upstream_connections_total{event="dialed"}`,
	} {
		assert.Contains(t, string(body), want)
	}
	assert.NotContains(t, string(body), testSecret)
	logs := s.logs.String()
	assert.Contains(t, logs, "msg=turn", "one info line per turn")
	assert.Contains(t, logs, "reason=aborted_injected", "one debug line per fired rule")
	assert.Contains(t, logs, "sess-conversation")
	// (Cleanup asserts that the credential never reached the logs.)

	// The same client straight to the emulator, same script, same faults: it fails.
	emu := emulator.StartTest(t, emulator.WithScript(callScript()), emulator.WithFaults(conversationFaults))
	direct := &reconnecting{t: t, url: emu.WebSocketURL(), h: h}
	errs, completed = converse(t, direct.do)
	require.NotEmpty(t, errs, "without the gateway the conversation breaks")
	assert.Less(t, len(completed), conversationTurns)
	assert.True(t, strings.HasPrefix(errs[0], "turn 4: error 400 previous_response_not_found"),
		"the first turn after the first drop fails: %v", errs[0])
	t.Logf("straight to the emulator: %d of %d turns failed, first: %s", len(errs), conversationTurns, errs[0])
}
