package gateway_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
)

// TestSmokeESC is the shortest path through the stack (helpers in e2e_helpers_test.go):
// two calls, the client answers one and sends no previous_response_id.
func TestSmokeESC(t *testing.T) {
	s := newStack(t, emulator.Sequence(
		emulator.CallTurn(emulator.FunctionCallID("call_A", "exec", `{"cmd":"ls"}`), emulator.FunctionCallID("call_B", "exec", `{"cmd":"pwd"}`)),
		emulator.TextTurn("done"),
	))
	c := s.dial("sess-esc")
	r := c.turn(`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"message","role":"user","content":"go"}]}`)
	require.Equal(t, "response.completed", r.last.Type, "%s", r.last.Raw)
	require.Len(t, r.items, 3)
	// ESC: only call_A answered, no previous_response_id.
	r = c.turn(`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"function_call_output","call_id":"call_A","output":"ok"},{"type":"message","role":"user","content":"next"}]}`)
	require.Equal(t, "response.completed", r.last.Type, "%s", r.last.Raw)
	creates := s.creates()
	require.Len(t, creates, 2)
	var sent map[string]any
	require.NoError(t, json.Unmarshal(creates[1].Frame, &sent))
	assert.NotEmpty(t, sent["previous_response_id"])
	assert.Equal(t, []string{"fco:call_A=ok", "fco:call_B=aborted", "msg:user"}, summary(t, creates[1].Frame))
}
