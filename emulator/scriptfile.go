package emulator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sync"
)

// scriptFile is the JSON form of a script, for the emulator binary and for
// fixtures that prefer data to code.
type scriptFile struct {
	// Turns are answered in order.
	Turns []fileTurn `json:"turns"`
	// Repeat cycles through Turns instead of answering "ok" afterwards.
	Repeat bool `json:"repeat"`
	// ToolLoop, when set and Turns is empty, selects ToolLoop(name, arguments).
	ToolLoop *fileOutput `json:"tool_loop"`
}

type fileTurn struct {
	Output     []fileOutput `json:"output"`
	Status     string       `json:"status"`
	TextDeltas int          `json:"text_deltas"`
	Error      *fileError   `json:"error"`
}

type fileOutput struct {
	Type   string `json:"type"`
	Text   string `json:"text"`
	Name   string `json:"name"`
	CallID string `json:"call_id"`
	// Arguments may be a JSON string or any JSON value, which is used as
	// its compact text.
	Arguments json.RawMessage `json:"arguments"`
}

type fileError struct {
	Status  int    `json:"status"`
	Type    string `json:"type"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Param   string `json:"param"`
}

// ParseScript reads a script from JSON:
//
//	{"turns": [{"output": [{"type": "reasoning", "text": "plan"},
//	                       {"type": "function_call", "name": "exec_command",
//	                        "arguments": {"cmd": "ls"}, "call_id": "call_1"}]},
//	           {"output": [{"type": "message", "text": "done"}]},
//	           {"error": {"status": 500, "type": "server_error", "code": "server_error", "message": "boom"}}],
//	 "repeat": false}
//
// or {"tool_loop": {"name": "exec_command", "arguments": "{}"}}.
func ParseScript(r io.Reader) (Script, error) {
	var f scriptFile
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parse script: %w", err)
	}
	if len(f.Turns) == 0 {
		if f.ToolLoop != nil {
			args, err := argumentsText(f.ToolLoop.Arguments)
			if err != nil {
				return nil, fmt.Errorf("parse script: tool_loop: %w", err)
			}
			return ToolLoop(f.ToolLoop.Name, args), nil
		}
		return nil, fmt.Errorf("parse script: no turns and no tool_loop")
	}
	turns := make([]Turn, len(f.Turns))
	for i, ft := range f.Turns {
		t := Turn{Status: ft.Status, TextDeltas: ft.TextDeltas}
		switch ft.Status {
		case "", StatusCompleted, StatusIncomplete, StatusFailed:
		default:
			return nil, fmt.Errorf("parse script: turn %d: unknown status %q", i+1, ft.Status)
		}
		if ft.Error != nil {
			t.Error = &APIError{Status: ft.Error.Status, Type: ft.Error.Type, Code: ft.Error.Code,
				Message: ft.Error.Message, Param: ft.Error.Param}
			if t.Error.Type == "" {
				t.Error.Type = TypeInvalidRequest
				if t.Error.Status >= 500 {
					t.Error.Type = TypeServerError
				}
			}
		}
		for j, o := range ft.Output {
			args, err := argumentsText(o.Arguments)
			if err != nil {
				return nil, fmt.Errorf("parse script: turn %d output %d: %w", i+1, j+1, err)
			}
			if o.Type == "" {
				return nil, fmt.Errorf("parse script: turn %d output %d: missing type", i+1, j+1)
			}
			t.Output = append(t.Output, Output{Type: o.Type, Text: o.Text, Name: o.Name, Arguments: args, CallID: o.CallID})
		}
		turns[i] = t
	}
	if f.Repeat {
		return Cycle(turns...), nil
	}
	return Sequence(turns...), nil
}

func argumentsText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return "", nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("arguments: %w", err)
		}
		return s, nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return "", fmt.Errorf("arguments: %w", err)
	}
	return buf.String(), nil
}

// Cycle returns a script that answers with turns in order and starts over
// after the last one. Leave call ids empty so each round gets fresh ones.
func Cycle(turns ...Turn) Script {
	if len(turns) == 0 {
		return Reply("ok")
	}
	c := &cycle{turns: turns}
	return c
}

type cycle struct {
	mu    sync.Mutex
	next  int
	turns []Turn
}

func (c *cycle) Turn(*Request) Turn {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.turns[c.next%len(c.turns)]
	c.next++
	return t
}
