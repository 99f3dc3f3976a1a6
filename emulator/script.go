package emulator

import (
	"strings"
	"sync"
)

// Terminal statuses a Turn can end with. StatusCancelled is only reached
// through response.interrupt under InterruptReading.Cancel.
const (
	StatusCompleted  = "completed"
	StatusIncomplete = "incomplete"
	StatusFailed     = "failed"
	StatusCancelled  = "cancelled"
)

// Script decides the model's answer to each create that generates output.
// Implementations must be safe for concurrent use: every connection asks the
// same script.
type Script interface {
	Turn(req *Request) Turn
}

// ScriptFunc adapts a function to Script.
type ScriptFunc func(req *Request) Turn

// Turn calls f.
func (f ScriptFunc) Turn(req *Request) Turn { return f(req) }

// Turn is one scripted model answer.
type Turn struct {
	// Output lists the output items in order.
	Output []Output
	// Status is StatusCompleted (the default), StatusIncomplete or StatusFailed.
	Status string
	// Error answers the create with an error instead of a response.
	Error *APIError
	// TextDeltas overrides the emulator's number of output_text.delta events
	// per message when positive.
	TextDeltas int
	// AwaitControl (WebSocket only) holds the response before its terminal
	// event until a steer, inject or interrupt frame names it, so a test can
	// act on an in-flight response without racing its stream.
	AwaitControl bool
	// AwaitInject (WebSocket only) holds the response after each call it
	// emits until a response.inject answers that call or an interrupt ends
	// the response, as a multi-agent response waits for client tool output.
	AwaitInject bool
}

// Output describes one output item of a Turn.
type Output struct {
	// Type is the item type: reasoning, message, function_call,
	// custom_tool_call or local_shell_call.
	Type string
	// Text is the message text, the reasoning summary or the custom tool input.
	Text string
	// Name is the tool name of a call.
	Name string
	// Arguments is the JSON arguments string of a function call, or the JSON
	// action object of a local shell call.
	Arguments string
	// CallID is the call id; empty means the emulator issues call_emuNNNN.
	CallID string
}

// Reason returns a reasoning item with a summary; its encrypted_content is
// generated. Follow it with the item it produced, or the next create fails.
func Reason(summary string) Output { return Output{Type: TypeReasoning, Text: summary} }

// Say returns an assistant message.
func Say(text string) Output { return Output{Type: TypeMessage, Text: text} }

// FunctionCall returns a function call with an emulator-issued call id.
func FunctionCall(name, arguments string) Output {
	return Output{Type: TypeFunctionCall, Name: name, Arguments: arguments}
}

// FunctionCallID returns a function call with a fixed call id.
func FunctionCallID(callID, name, arguments string) Output {
	return Output{Type: TypeFunctionCall, Name: name, Arguments: arguments, CallID: callID}
}

// CustomToolCall returns a custom (freeform) tool call.
func CustomToolCall(callID, name, input string) Output {
	return Output{Type: TypeCustomToolCall, Name: name, Text: input, CallID: callID}
}

// LocalShellCall returns a local_shell_call whose action runs command.
func LocalShellCall(callID string, command ...string) Output {
	return Output{Type: TypeLocalShellCall, CallID: callID, Arguments: shellAction(command)}
}

// TextTurn returns a turn that answers with one assistant message.
func TextTurn(text string) Turn { return Turn{Output: []Output{Say(text)}} }

// CallTurn returns a turn that reasons once and then issues calls, the shape
// Codex sees when the model wants tools.
func CallTurn(calls ...Output) Turn {
	out := make([]Output, 0, len(calls)+1)
	out = append(out, Reason("Run the tools."))
	out = append(out, calls...)
	return Turn{Output: out}
}

// Reply returns a script that always answers text.
func Reply(text string) Script {
	return ScriptFunc(func(*Request) Turn { return TextTurn(text) })
}

// Sequence returns a script that answers with turns in order, shared by all
// connections, and with TextTurn("ok") once they are used up.
func Sequence(turns ...Turn) Script {
	return &sequence{turns: turns}
}

type sequence struct {
	mu    sync.Mutex
	next  int
	turns []Turn
}

func (s *sequence) Turn(*Request) Turn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next >= len(s.turns) {
		return TextTurn("ok")
	}
	t := s.turns[s.next]
	s.next++
	return t
}

// ToolLoop returns a script for agent-style conversations: after a tool
// output it answers with text, otherwise it reasons and calls the tool name
// with arguments (a fresh call id each time).
func ToolLoop(name, arguments string) Script {
	return ScriptFunc(func(r *Request) Turn {
		if n := len(r.Context); n > 0 && r.Context[n-1].IsOutput() {
			return Turn{Output: []Output{Reason("Report the result."), Say("done")}}
		}
		return CallTurn(FunctionCall(name, arguments))
	})
}

func shellAction(command []string) string {
	var b strings.Builder
	b.WriteString(`{"type":"exec","command":[`)
	for i, c := range command {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(appendJSONString(nil, c))
	}
	b.WriteString(`],"env":{}}`)
	return b.String()
}
