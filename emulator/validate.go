package emulator

import (
	"strconv"
	"strings"
)

// checkTop applies the request-level rules that need no state.
func checkTop(p *parsedCreate, transport string) *APIError {
	if transport == transportWS {
		switch p.wire.Type {
		case "response.create":
		case "":
			return errMissingParam("type")
		default:
			return invalidRequest(CodeInvalidValue, "type",
				"Invalid value: '%s'. Supported values are: 'response.create', 'response.processed', 'response.steer', 'response.inject' and 'response.interrupt'.", p.wire.Type)
		}
	} else if p.hasLane {
		// Lanes exist only on a WebSocket; the HTTP body has no such field.
		return errUnknownParameter("stream_id")
	}
	if p.wire.Model == "" {
		return errMissingParam("model")
	}
	if p.prevID != "" && !strings.HasPrefix(p.prevID, "resp") {
		return invalidRequest(CodeInvalidValue, "previous_response_id",
			"Invalid 'previous_response_id': '%s'. Expected an ID that begins with 'resp'.", p.prevID)
	}
	return nil
}

// resolveInput checks what the new items ask the server to look up. Under
// store:false nothing is persisted, so a bare reference fails; under
// store:true it resolves against stored items.
func resolveInput(p *parsedCreate, lookup func(id string) (Item, bool)) *APIError {
	for i := range p.input {
		it := &p.input[i]
		switch {
		case it.Type == TypeItemReference:
			if it.ID == "" {
				return errMissingParam(itemParam(i, "id"))
			}
			if !p.store {
				return errItemNotPersisted(it.ID)
			}
			stored, ok := lookup(it.ID)
			if !ok {
				return errItemNotFound(it.ID)
			}
			*it = stored
		case it.Type == TypeReasoning && it.ID != "" && !it.EncryptedContent:
			// Without encrypted_content the server must fetch the item by id.
			if !p.store {
				return errItemNotPersisted(it.ID)
			}
			if _, ok := lookup(it.ID); !ok {
				return errItemNotFound(it.ID)
			}
		case it.IsCall() || it.IsOutput():
			if it.CallID == "" {
				return errMissingParam(itemParam(i, "call_id"))
			}
		}
	}
	return nil
}

func itemParam(i int, field string) string {
	return "input[" + strconv.Itoa(i) + "]." + field
}

// callState tracks one call of the effective context during pairing.
type callState struct {
	kind    string
	outputs int
}

// checkContext applies the rules that span the whole effective context:
// unique item ids, every call answered exactly once, every output answering a
// call, and every reasoning item followed by the item it produced. The first
// offending item in context order determines the error, so the answer is
// stable for a given input.
func checkContext(ctx []Item) *APIError {
	calls := make(map[string]*callState)
	ids := make(map[string]struct{}, len(ctx))
	for _, it := range ctx {
		if it.IsCall() {
			if _, dup := calls[it.CallID]; !dup {
				calls[it.CallID] = &callState{kind: it.Type}
			}
		}
	}
	for _, it := range ctx {
		if !it.IsOutput() {
			continue
		}
		if c, ok := calls[it.CallID]; ok && it.answers(c.kind) {
			c.outputs++
		}
	}
	for i, it := range ctx {
		if it.ID != "" {
			if _, dup := ids[it.ID]; dup {
				return errDuplicateItem(it.ID)
			}
			ids[it.ID] = struct{}{}
		}
		switch {
		case it.IsCall():
			c := calls[it.CallID]
			if c.kind != it.Type {
				// A second call reusing a call_id of another kind.
				continue
			}
			if c.outputs == 0 {
				return errNoToolOutput(it.Type, it.CallID)
			}
		case it.IsOutput():
			c, ok := calls[it.CallID]
			if !ok || !it.answers(c.kind) {
				return errNoToolCall(it.Type, it.CallID)
			}
			if c.outputs > 1 {
				return errDuplicateOutput(it.CallID)
			}
		case it.Type == TypeReasoning:
			if i+1 >= len(ctx) || !canFollowReasoning(ctx[i+1]) {
				return errReasoningWithoutFollower(reasoningName(it))
			}
		}
	}
	return nil
}

// canFollowReasoning reports whether next can be the item a reasoning item
// produced: a model-side item, not client input or another reasoning step.
// Unknown types pass, because the emulator keeps what it does not know.
func canFollowReasoning(next Item) bool {
	switch {
	case next.Type == TypeReasoning, next.IsOutput():
		return false
	case next.Type == TypeMessage:
		return next.Role == "" || next.Role == "assistant"
	}
	return true
}

func reasoningName(it Item) string {
	if it.ID == "" {
		return "reasoning"
	}
	return it.ID
}
