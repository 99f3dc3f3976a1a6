package emulator

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const notPersisted = "Items are not persisted when `store` is set to false. Try again with `store` set to true, or remove this item from your input."

// TestPairingRules sends one full create per case on a fresh connection and
// checks acceptance or the exact error the real API gives.
func TestPairingRules(t *testing.T) {
	custom := func(callID string) map[string]any {
		return map[string]any{"type": "custom_tool_call", "call_id": callID, "name": "apply_patch", "input": "*** Begin Patch"}
	}
	customOut := func(callID string) map[string]any {
		return map[string]any{"type": "custom_tool_call_output", "call_id": callID, "output": "ok"}
	}
	shell := map[string]any{"type": "local_shell_call", "call_id": "call_sh", "status": "completed",
		"action": map[string]any{"type": "exec", "command": []string{"ls"}}}
	assistant := map[string]any{"type": "message", "role": "assistant", "content": []any{map[string]any{"type": "output_text", "text": "hi"}}}

	tests := []struct {
		name    string
		frame   map[string]any
		wantErr string
		code    string // expected error.code; "" means null
		param   string // expected error.param; "" means null
	}{
		{name: "call with output", frame: req(nil, user("go"), fcall("call_1"), fout("call_1", "ok"))},
		{name: "output may precede its call", frame: req(nil, fout("call_1", "ok"), fcall("call_1"))},
		{name: "call without output", frame: req(nil, user("go"), fcall("call_1")),
			wantErr: "No tool output found for function call call_1.", param: "input"},
		{name: "custom call with output", frame: req(nil, custom("call_c"), customOut("call_c"))},
		{name: "custom call without output", frame: req(nil, custom("call_c")),
			wantErr: "No tool output found for custom tool call call_c.", param: "input"},
		{name: "custom call answered by function output", frame: req(nil, custom("call_c"), fout("call_c", "x")),
			wantErr: "No tool output found for custom tool call call_c.", param: "input"},
		{name: "local shell call answered by function_call_output", frame: req(nil, shell, fout("call_sh", "ok"))},
		{name: "local shell call without output", frame: req(nil, shell),
			wantErr: "No tool output found for local shell call call_sh.", param: "input"},
		{name: "orphan function output", frame: req(nil, user("go"), fout("call_9", "x")),
			wantErr: "No tool call found for function call output with call_id call_9.", param: "input"},
		{name: "orphan custom output", frame: req(nil, customOut("call_9")),
			wantErr: "No tool call found for custom tool call output with call_id call_9.", param: "input"},
		{name: "two outputs for one call", frame: req(nil, fcall("call_1"), fout("call_1", "a"), fout("call_1", "b")),
			wantErr: "Duplicate tool output found for call_id call_1.", param: "input"},
		{name: "duplicate item id", frame: req(nil, withID(user("a"), "msg_1"), withID(user("b"), "msg_1")),
			wantErr: "Duplicate item found with id msg_1. Remove duplicate items from your input and try again.", param: "input"},
		{name: "reasoning followed by its call", frame: req(nil, user("go"), reasoning("rs_1", true), fcall("call_1"), fout("call_1", "ok"))},
		{name: "reasoning followed by assistant message", frame: req(nil, user("go"), reasoning("rs_1", true), assistant)},
		{name: "reasoning last", frame: req(nil, user("go"), reasoning("rs_1", true)),
			wantErr: "Item 'rs_1' of type 'reasoning' was provided without its required following item.", param: "input"},
		{name: "reasoning followed by user message", frame: req(nil, reasoning("rs_1", true), user("go")),
			wantErr: "Item 'rs_1' of type 'reasoning' was provided without its required following item.", param: "input"},
		{name: "reasoning followed by output", frame: req(nil, fcall("call_1"), reasoning("rs_1", true), fout("call_1", "ok")),
			wantErr: "Item 'rs_1' of type 'reasoning' was provided without its required following item.", param: "input"},
		{name: "store false reasoning id without encrypted content", frame: req(nil, user("go"), reasoning("rs_1", false), assistant),
			wantErr: "Item with id 'rs_1' not found. " + notPersisted, param: "input"},
		{name: "store false reasoning without id or content", frame: req(nil, user("go"), reasoning("", false), assistant)},
		{name: "store false item_reference", frame: req(nil, map[string]any{"type": "item_reference", "id": "msg_1"}),
			wantErr: "Item with id 'msg_1' not found. " + notPersisted, param: "input"},
		{name: "store true unknown item_reference", frame: req(map[string]any{"store": true}, map[string]any{"type": "item_reference", "id": "msg_1"}),
			wantErr: "Item with id 'msg_1' not found.", param: "input"},
		{name: "store true unknown reasoning id", frame: req(map[string]any{"store": true}, reasoning("rs_1", false), assistant),
			wantErr: "Item with id 'rs_1' not found.", param: "input"},
		{name: "items keep their ids under store false", frame: req(nil, withID(user("go"), "msg_a"), withID(fcall("call_1"), "fc_1"), withID(fout("call_1", "ok"), "fco_1"))},
		{name: "message id as previous_response_id", frame: req(map[string]any{"previous_response_id": "msg_123"}, user("go")),
			wantErr: "Invalid 'previous_response_id': 'msg_123'. Expected an ID that begins with 'resp'.", code: CodeInvalidValue, param: "previous_response_id"},
		{name: "unknown previous response", frame: req(map[string]any{"previous_response_id": "resp_nope"}, user("go")),
			wantErr: "Previous response with id 'resp_nope' not found.", code: CodePreviousResponseNotFound, param: "previous_response_id"},
		{name: "missing model", frame: req(map[string]any{"model": nil}, user("go")),
			wantErr: "Missing required parameter: 'model'.", code: CodeMissingRequiredParameter, param: "model"},
		{name: "call without call_id", frame: req(nil, map[string]any{"type": "function_call", "name": "x", "arguments": "{}"}),
			wantErr: "Missing required parameter: 'input[0].call_id'.", code: CodeMissingRequiredParameter, param: "input[0].call_id"},
		{name: "wrong field type", frame: req(map[string]any{"store": "no"}, user("go")),
			wantErr: "Invalid type for 'store': expected a boolean, but got a string instead.", code: CodeInvalidType, param: "store"},
		{name: "unknown fields and item types are kept", frame: req(map[string]any{"x_future": map[string]any{"a": 1}, "client_metadata": map[string]any{"k": "v"}},
			user("go"), map[string]any{"type": "tool_search_call", "id": "tsc_1", "arguments": map[string]any{}})},
		{name: "string input", frame: req(map[string]any{"input": "hello"})},
		{name: "empty input", frame: req(nil)},
	}
	e := StartTest(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := dial(t, e, nil).create(tc.frame)
			if tc.wantErr == "" {
				require.Nil(t, res.err, "unexpected error: %s", res.errRaw())
				assert.Equal(t, "response.completed", res.terminal.Type)
				return
			}
			require.NotNil(t, res.err, "expected %q, got %v", tc.wantErr, res.types())
			assert.Equal(t, []string{"error"}, res.types(), "an error comes alone, before any event")
			assert.Equal(t, 400, res.err.Status)
			assert.Equal(t, TypeInvalidRequest, res.err.Error.Type)
			assert.Equal(t, tc.wantErr, res.err.Error.Message)
			if tc.code == "" {
				assert.Nil(t, res.err.Error.Code)
			} else if assert.NotNil(t, res.err.Error.Code) {
				assert.Equal(t, tc.code, *res.err.Error.Code)
			}
			if tc.param == "" {
				assert.Nil(t, res.err.Error.Param)
			} else if assert.NotNil(t, res.err.Error.Param) {
				assert.Equal(t, tc.param, *res.err.Error.Param)
			}
		})
	}
}

// TestErrorFrameShape pins the exact bytes of the error frame the gateway
// classifies and forwards.
func TestErrorFrameShape(t *testing.T) {
	e := StartTest(t)
	res := dial(t, e, nil).create(req(map[string]any{"previous_response_id": "resp_1"}, user("hi")))
	require.NotNil(t, res.err)
	assert.JSONEq(t, `{"type":"error","status":400,"error":{"type":"invalid_request_error","code":"previous_response_not_found","message":"Previous response with id 'resp_1' not found.","param":"previous_response_id"}}`,
		string(res.err.raw))
}

// TestPairingOverChainedContext checks that the rule spans the chained
// response: its calls need outputs in the continuation, and a continuation
// must not resend the items it chains to.
func TestPairingOverChainedContext(t *testing.T) {
	script := ScriptFunc(func(r *Request) Turn {
		if r.LastInput().IsOutput() {
			return TextTurn("done")
		}
		return CallTurn(FunctionCallID("call_a", "exec_command", `{"cmd":"ls"}`), FunctionCallID("call_b", "exec_command", `{}`))
	})
	tests := []struct {
		name    string
		input   func(out []json.RawMessage) []any
		wantErr string
	}{
		{name: "both outputs", input: func([]json.RawMessage) []any { return []any{fout("call_a", "1"), fout("call_b", "2")} }},
		{name: "one output missing (ESC without aborted)", input: func([]json.RawMessage) []any { return []any{fout("call_a", "1")} },
			wantErr: "No tool output found for function call call_b."},
		{name: "aborted outputs answer the calls", input: func([]json.RawMessage) []any {
			return []any{fout("call_a", "aborted"), fout("call_b", "aborted"), user("<turn_aborted>")}
		}},
		{name: "output for an unknown call", input: func([]json.RawMessage) []any {
			return []any{fout("call_a", "1"), fout("call_b", "2"), fout("call_z", "3")}
		}, wantErr: "No tool call found for function call output with call_id call_z."},
		{name: "new user message only", input: func([]json.RawMessage) []any { return []any{user("next")} },
			wantErr: "No tool output found for function call call_a."},
		{name: "replayed model items duplicate the chain", input: func(out []json.RawMessage) []any {
			items := []any{}
			for _, o := range out {
				items = append(items, o)
			}
			return append(items, fout("call_a", "1"), fout("call_b", "2"))
		}, wantErr: "Duplicate item found with id rs_emu"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := StartTest(t, WithScript(script))
			c := dial(t, e, nil)
			first := c.create(req(nil, user("go")))
			id := first.responseID(t)
			res := c.create(req(map[string]any{"previous_response_id": id}, tc.input(first.terminal.Response.Output)...))
			if tc.wantErr == "" {
				res.responseID(t)
				return
			}
			assert.Contains(t, res.errMessage(t), tc.wantErr)
		})
	}
}
