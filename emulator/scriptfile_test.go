package emulator

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseScript(t *testing.T) {
	f, err := os.Open("testdata/scripts/codex-echo.json")
	require.NoError(t, err)
	defer f.Close()
	s, err := ParseScript(f)
	require.NoError(t, err)
	first := s.Turn(&Request{})
	require.Len(t, first.Output, 2)
	assert.Equal(t, Output{Type: TypeFunctionCall, Name: "exec_command", CallID: "call_codex_echo_1",
		Arguments: `{"cmd":"echo acceptance-ok","yield_time_ms":1000}`}, first.Output[1])
	assert.Equal(t, TextTurn("acceptance-ok"), s.Turn(&Request{}))
	assert.Equal(t, TextTurn("ok"), s.Turn(&Request{}), "a used-up sequence answers ok")

	tests := []struct {
		name, src, wantErr string
	}{
		{"repeat cycles", `{"turns":[{"output":[{"type":"message","text":"a"}]}],"repeat":true}`, ""},
		{"tool loop", `{"tool_loop":{"name":"exec_command","arguments":"{}"}}`, ""},
		{"error turn", `{"turns":[{"error":{"status":500,"code":"server_error","message":"boom"}}]}`, ""},
		{"empty", `{}`, "no turns and no tool_loop"},
		{"unknown field", `{"turns":[],"bogus":1}`, "unknown field"},
		{"bad status", `{"turns":[{"status":"done"}]}`, `unknown status "done"`},
		{"missing output type", `{"turns":[{"output":[{"text":"a"}]}]}`, "missing type"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseScript(strings.NewReader(tc.src))
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.NotNil(t, s.Turn(&Request{}))
		})
	}

	cyc, err := ParseScript(strings.NewReader(`{"turns":[{"output":[{"type":"message","text":"a"}]},{"output":[{"type":"message","text":"b"}]}],"repeat":true}`))
	require.NoError(t, err)
	var got []string
	for range 3 {
		got = append(got, cyc.Turn(&Request{}).Output[0].Text)
	}
	assert.Equal(t, []string{"a", "b", "a"}, got)

	errTurn, err := ParseScript(strings.NewReader(`{"turns":[{"error":{"status":500,"code":"server_error","message":"boom"}}]}`))
	require.NoError(t, err)
	assert.Equal(t, &APIError{Status: 500, Type: TypeServerError, Code: "server_error", Message: "boom"}, errTurn.Turn(&Request{}).Error)
}

func TestToolLoop(t *testing.T) {
	e := StartTest(t, WithScript(ToolLoop("exec_command", `{"cmd":"ls"}`)))
	c := dial(t, e, nil)
	prev := ""
	for turn := range 5 {
		fields := map[string]any{}
		if prev != "" {
			fields["previous_response_id"] = prev
		}
		var input []any
		if turn == 0 {
			input = []any{user("go")}
		} else {
			info, ok := e.Response(prev)
			require.True(t, ok)
			for _, it := range info.Items {
				if it.IsCall() {
					input = append(input, fout(it.CallID, "ok"))
				}
			}
			if len(input) == 0 {
				input = []any{user("again")}
			}
		}
		prev = c.create(req(fields, input...)).responseID(t)
	}
}
