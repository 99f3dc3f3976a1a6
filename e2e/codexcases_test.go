package e2e

// The Codex cases (issue 6 item 2), shared by the live Codex suite (codex_test.go) and the
// replay of its captures (capture_test.go): the same emulator script and faults, and the
// same checks of what reached the emulator.

import (
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/internal/e2etest"
)

// codexVersions are the Codex CLI releases the live suite runs, each as its own subtest: the
// release the captures in testdata/codex come from (0.169.0), and the newest on npm. The
// Makefile's CODEX_VERSIONS installs the same list.
var codexVersions = []string{"0.169.0", "0.171.0"}

type codexCase struct {
	name        string
	description string
	// start starts the emulator of the case: CodexScript plus the case's faults.
	start func(t *testing.T) *emulator.Emulator
	// check asserts on what the emulator received and on the reasons the gateway fired.
	check func(t *testing.T, emu *emulator.Emulator, reasons []string)
}

var codexCases = []codexCase{
	{
		name:        "plain",
		description: "The tool loop on one upstream connection: warm-up, the user turn chained to it (the model calls exec_command), the tool output chained to that response, the final answer.",
		start: func(t *testing.T) *emulator.Emulator {
			return emulator.StartTest(t, emulator.WithScript(e2etest.CodexScript()))
		},
		check: func(t *testing.T, emu *emulator.Emulator, reasons []string) {
			cs := emu.Creates()
			require.GreaterOrEqual(t, len(cs), 3, "warm-up, user turn, tool output")
			assert.False(t, cs[0].Generate, "Codex starts with a generate:false warm-up")
			for i, c := range cs[1:] {
				assert.Equal(t, cs[i].ResponseID, c.PreviousResponseID, "create %d is chained to the one before", c.Seq)
				assert.Equal(t, 1, c.Conn, "one upstream connection")
			}
			assert.Zero(t, emu.Stats().Errors)
			assert.Contains(t, reasons, "function_call_output_call_id_match", "the tool output answers exactly the pending call")
			for _, r := range []string{"fresh_connection_replay", "transport_retry", "aborted_injected", "orphan_output_removed", "input_edited", "non_input_changed"} {
				assert.NotContains(t, reasons, r, "nothing to repair in a plain Codex loop")
			}
		},
	},
	{
		name:        "drop-after-completed",
		description: "The emulator drops every upstream connection abruptly right after its first generating response.completed (warm-ups do not count): each later turn reaches the upstream as a full replay on a fresh connection.",
		start: func(t *testing.T) *emulator.Emulator {
			return emulator.StartTest(t, emulator.WithScript(e2etest.CodexScript()),
				emulator.WithFaults(emulator.Faults{CloseAfterResponses: 1, CloseMode: emulator.CloseAbrupt}))
		},
		check: func(t *testing.T, emu *emulator.Emulator, reasons []string) {
			var gen []emulator.Create
			for _, c := range emu.Creates() {
				if c.Generate {
					gen = append(gen, c)
				}
			}
			require.GreaterOrEqual(t, len(gen), 2, "the user turn and the tool output")
			conns := map[int]bool{}
			for _, c := range gen {
				assert.False(t, conns[c.Conn], "create %d: one generating response per upstream connection", c.Seq)
				conns[c.Conn] = true
			}
			for _, c := range gen[1:] {
				assert.Empty(t, c.PreviousResponseID, "create %d: a full replay, nothing to chain to", c.Seq)
				assert.NotEqual(t, gen[0].Conn, c.Conn)
			}
			assert.Zero(t, emu.Stats().Errors, "the upstream never had to refuse a turn")
			assert.True(t, contains(reasons, "fresh_connection_replay") || contains(reasons, "transport_retry"), "%v", reasons)
		},
	},
	{
		name:        "previous-response-not-found",
		description: "The emulator fails the first continuation that carries a tool output with previous_response_not_found; the gateway retries it once as the full replay on a fresh connection.",
		start: func(t *testing.T) *emulator.Emulator {
			return emulator.StartTest(t, emulator.WithScript(failFirstContinuation(e2etest.CodexScript())))
		},
		check: func(t *testing.T, emu *emulator.Emulator, reasons []string) {
			cs := emu.Creates()
			failed := -1
			for i, c := range cs {
				if c.Outcome == emulator.OutcomeError {
					require.Equal(t, -1, failed, "one failed create")
					failed = i
				}
			}
			require.GreaterOrEqual(t, failed, 0, "the continuation was failed")
			require.Less(t, failed+1, len(cs), "and retried")
			f, retry := cs[failed], cs[failed+1]
			assert.Equal(t, emulator.CodePreviousResponseNotFound, f.Error.Code)
			assert.NotEmpty(t, f.PreviousResponseID)
			assert.Empty(t, retry.PreviousResponseID, "the retry is the full replay")
			assert.NotEqual(t, f.Conn, retry.Conn, "on a fresh upstream connection")
			assert.Equal(t, emulator.OutcomeCompleted, retry.Outcome)
			assert.EqualValues(t, 1, emu.Stats().Errors)
			assert.Contains(t, reasons, "drop_previous_response_id_full_replay")
		},
	},
}

func codexCaseNamed(t *testing.T, name string) codexCase {
	t.Helper()
	for _, k := range codexCases {
		if k.name == name {
			return k
		}
	}
	t.Fatalf("unknown Codex case %q", name)
	return codexCase{}
}

// failFirstContinuation answers the first create that chains to a response and carries a
// tool output with previous_response_not_found, and everything else with s.
func failFirstContinuation(s emulator.Script) emulator.Script {
	var done atomic.Bool
	return emulator.ScriptFunc(func(r *emulator.Request) emulator.Turn {
		if r.PreviousResponseID != "" {
			for _, it := range r.Input {
				if it.IsOutput() && done.CompareAndSwap(false, true) {
					return emulator.Turn{Error: emulator.ErrPreviousResponseNotFound(r.PreviousResponseID)}
				}
			}
		}
		return s.Turn(r)
	})
}

// checkCodexUpstream is what every case must show upstream: each create the emulator
// accepted had a valid, paired context, the last one completed, and the shell call's real
// output (Codex ran `echo acceptance-ok`) reached the model.
func checkCodexUpstream(t *testing.T, emu *emulator.Emulator) {
	t.Helper()
	cs := emu.Creates()
	require.NotEmpty(t, cs)
	for _, c := range cs {
		if c.Outcome == emulator.OutcomeError && c.Injected {
			continue
		}
		if c.Outcome == emulator.OutcomeError && c.Error != nil && c.Error.Code == emulator.CodePreviousResponseNotFound && c.Context != nil {
			continue // the scripted refusal: its context was valid
		}
		assert.Equal(t, emulator.OutcomeCompleted, c.Outcome, "create %d: %v", c.Seq, c.Error)
		assert.NoError(t, e2etest.Paired(c))
	}
	last := cs[len(cs)-1]
	assert.Equal(t, emulator.OutcomeCompleted, last.Outcome)
	out, ok := toolOutput(last.Frame, e2etest.CodexCallID)
	if !ok {
		// A chained last turn carries only the new items; the output is in an earlier one.
		for i := len(cs) - 2; i >= 0 && !ok; i-- {
			out, ok = toolOutput(cs[i].Frame, e2etest.CodexCallID)
		}
	}
	require.True(t, ok, "the tool output reached the upstream")
	assert.Contains(t, out, e2etest.CodexEcho, "the shell command really ran")
	assert.Equal(t, e2etest.CodexCallID, lastCallBefore(last.Context), "the model's call is in the final context")
}

// toolOutput returns the output text of the function_call_output for callID in a frame.
func toolOutput(frame []byte, callID string) (string, bool) {
	var m struct {
		Input []struct {
			Type   string          `json:"type"`
			CallID string          `json:"call_id"`
			Output json.RawMessage `json:"output"`
		} `json:"input"`
	}
	if json.Unmarshal(frame, &m) != nil {
		return "", false
	}
	for _, it := range m.Input {
		if it.Type == "function_call_output" && it.CallID == callID {
			var s string
			if json.Unmarshal(it.Output, &s) == nil {
				return s, true
			}
			return string(it.Output), true
		}
	}
	return "", false
}

func lastCallBefore(ctx []emulator.Item) string {
	for i := len(ctx) - 1; i >= 0; i-- {
		if ctx[i].IsCall() {
			return ctx[i].CallID
		}
	}
	return ""
}

// upstreamCreate is what one create looked like upstream, in a capture.
type upstreamCreate struct {
	Seq                int      `json:"seq"`
	Conn               int      `json:"conn"`
	PreviousResponseID string   `json:"previous_response_id,omitempty"`
	Generate           bool     `json:"generate"`
	Input              []string `json:"input"`
	Outcome            string   `json:"outcome"`
	ResponseID         string   `json:"response_id,omitempty"`
	ErrorCode          string   `json:"error_code,omitempty"`
}

func upstreamOf(emu *emulator.Emulator) []upstreamCreate {
	var out []upstreamCreate
	for _, c := range emu.Creates() {
		u := upstreamCreate{Seq: c.Seq, Conn: c.Conn, PreviousResponseID: c.PreviousResponseID, Generate: c.Generate,
			Input: e2etest.Summary(c.Frame), Outcome: c.Outcome, ResponseID: c.ResponseID}
		for i, s := range u.Input {
			// Tool output texts carry wall times; keep the shape.
			if strings.HasPrefix(s, "fco:") {
				if k := strings.IndexByte(s, '='); k > 0 && len(s) > k+40 {
					u.Input[i] = s[:k+1] + "…"
				}
			}
		}
		if c.Error != nil {
			u.ErrorCode = c.Error.Code
		}
		out = append(out, u)
	}
	return out
}
