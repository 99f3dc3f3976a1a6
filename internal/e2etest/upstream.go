// Package e2etest holds the end-to-end helpers that both end-to-end suites use (the
// in-process one in gateway/ and the process-level one in e2e/): scripted models for the
// upstream emulator and summaries of what the emulator received. It is a test harness:
// only _test.go files and e2e/ import it, never the runtime.
package e2etest

import (
	"encoding/json"
	"fmt"
	"strings"

	"chainmend/emulator"
)

// Summary renders the input items of a create frame compactly: "msg:user", "rs",
// "fc:call_A", "fco:call_A=aborted", "ctc:call_C", "ctco:call_C=…", "lsc:call_L"; other
// types by name.
func Summary(frame []byte) []string {
	var m struct {
		Input []map[string]any `json:"input"`
	}
	if err := json.Unmarshal(frame, &m); err != nil {
		return []string{"!" + err.Error()}
	}
	out := make([]string, 0, len(m.Input))
	for _, it := range m.Input {
		callID, _ := it["call_id"].(string)
		switch typ, _ := it["type"].(string); typ {
		case "message":
			role, _ := it["role"].(string)
			out = append(out, "msg:"+role)
		case "reasoning":
			out = append(out, "rs")
		case "function_call":
			out = append(out, "fc:"+callID)
		case "custom_tool_call":
			out = append(out, "ctc:"+callID)
		case "local_shell_call":
			out = append(out, "lsc:"+callID)
		case "function_call_output":
			o, _ := it["output"].(string)
			out = append(out, "fco:"+callID+"="+o)
		case "custom_tool_call_output":
			o, _ := it["output"].(string)
			out = append(out, "ctco:"+callID+"="+o)
		default:
			out = append(out, typ)
		}
	}
	return out
}

// Paired checks the effective context of a create the emulator accepted: every call has
// exactly one output with its call_id, every output its call, and every reasoning item is
// followed by the item it produced (SPEC §2, the pairing rule).
func Paired(c emulator.Create) error {
	if c.Context == nil {
		return fmt.Errorf("create %d: no effective context (outcome %s)", c.Seq, c.Outcome)
	}
	calls := map[string]int{}
	outputs := map[string]int{}
	for i, it := range c.Context {
		switch {
		case it.IsCall():
			calls[it.CallID]++
		case it.IsOutput():
			outputs[it.CallID]++
		case it.Type == emulator.TypeReasoning:
			if i+1 >= len(c.Context) || c.Context[i+1].Type == emulator.TypeReasoning || c.Context[i+1].IsOutput() ||
				(c.Context[i+1].Type == emulator.TypeMessage && c.Context[i+1].Role != "assistant") {
				return fmt.Errorf("create %d: reasoning item %d is not followed by its item", c.Seq, i)
			}
		}
	}
	var problems []string
	for id, n := range calls {
		if n != 1 {
			problems = append(problems, fmt.Sprintf("call %s appears %d times", id, n))
		}
		if outputs[id] != 1 {
			problems = append(problems, fmt.Sprintf("call %s has %d outputs", id, outputs[id]))
		}
	}
	for id := range outputs {
		if calls[id] == 0 {
			problems = append(problems, fmt.Sprintf("output %s has no call", id))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("create %d: %s", c.Seq, strings.Join(problems, "; "))
	}
	return nil
}

// CmdScript answers a create whose last new item is the user message "call X Y…" with a
// reasoning item and the function calls X, Y…; anything else with the text "done". It
// depends only on the request, so retries and replays get the same answer.
func CmdScript() emulator.Script {
	return emulator.ScriptFunc(func(r *emulator.Request) emulator.Turn {
		raws, _ := r.InputRaw()
		if len(raws) > 0 {
			var it struct {
				Type    string `json:"type"`
				Content []struct {
					Text string `json:"text"`
				} `json:"content"`
			}
			_ = json.Unmarshal(raws[len(raws)-1], &it)
			if it.Type == "message" && len(it.Content) > 0 {
				if ids, ok := strings.CutPrefix(it.Content[0].Text, "call "); ok {
					var calls []emulator.Output
					for _, id := range strings.Fields(ids) {
						calls = append(calls, emulator.FunctionCallID(id, "exec", `{"cmd":"true"}`))
					}
					return emulator.CallTurn(calls...)
				}
			}
		}
		return emulator.TextTurn("done")
	})
}

// CodexCallID is the call id of the shell call CodexScript makes.
const CodexCallID = "call_codex_echo_1"

// CodexEcho is what the shell call of CodexScript prints.
const CodexEcho = "acceptance-ok"

// CodexScript plays the model for Codex CLI: when the effective context ends with a tool
// output it reasons and answers CodexEcho; otherwise it reasons and calls exec_command
// with `echo acceptance-ok` (call id CodexCallID). It depends only on the request, so a
// replayed or retried create gets the same answer.
func CodexScript() emulator.Script {
	return emulator.ScriptFunc(func(r *emulator.Request) emulator.Turn {
		if n := len(r.Context); n > 0 && r.Context[n-1].IsOutput() {
			return emulator.Turn{Output: []emulator.Output{emulator.Reason("Report the result."), emulator.Say(CodexEcho)}}
		}
		return emulator.Turn{Output: []emulator.Output{
			emulator.Reason("Run the command."),
			emulator.FunctionCallID(CodexCallID, "exec_command", `{"cmd":"echo `+CodexEcho+`","yield_time_ms":1000}`),
		}}
	})
}
