package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Item types the emulator gives meaning to; every other type is kept as is.
const (
	TypeMessage              = "message"
	TypeReasoning            = "reasoning"
	TypeFunctionCall         = "function_call"
	TypeFunctionCallOutput   = "function_call_output"
	TypeCustomToolCall       = "custom_tool_call"
	TypeCustomToolCallOutput = "custom_tool_call_output"
	TypeLocalShellCall       = "local_shell_call"
	TypeLocalShellCallOutput = "local_shell_call_output"
	TypeItemReference        = "item_reference"
)

// Item is the header of one input or output item. The emulator reads only
// these fields so that a large create is decoded once and its item content
// (messages, tool output, encrypted reasoning) is never materialised.
type Item struct {
	Type   string
	ID     string
	CallID string
	Role   string
	Name   string
	// EncryptedContent reports a non-null encrypted_content field.
	EncryptedContent bool
	// Response is the id of the response whose output produced the item; it is
	// empty for items the client sent.
	Response string
}

// IsCall reports whether the item is a tool call that needs an output.
func (it Item) IsCall() bool {
	switch it.Type {
	case TypeFunctionCall, TypeCustomToolCall, TypeLocalShellCall:
		return true
	}
	return false
}

// IsOutput reports whether the item answers a tool call.
func (it Item) IsOutput() bool {
	switch it.Type {
	case TypeFunctionCallOutput, TypeCustomToolCallOutput, TypeLocalShellCallOutput:
		return true
	}
	return false
}

// answers reports whether an output of this item's type can answer a call of
// kind call; local shell calls accept function_call_output because that is
// what Codex sends for them.
func (it Item) answers(call string) bool {
	switch it.Type {
	case TypeFunctionCallOutput:
		return call == TypeFunctionCall || call == TypeLocalShellCall
	case TypeCustomToolCallOutput:
		return call == TypeCustomToolCall
	case TypeLocalShellCallOutput:
		return call == TypeLocalShellCall
	}
	return false
}

// callKindNoun names a call or output kind the way the API's messages do.
func callKindNoun(kind string) string {
	kind = strings.TrimSuffix(kind, "_output")
	return strings.ReplaceAll(kind, "_", " ")
}

// present records whether a field holds something other than null without
// copying the value, because encrypted_content can be large.
type present bool

func (p *present) UnmarshalJSON(b []byte) error {
	*p = present(!bytes.Equal(b, []byte("null")))
	return nil
}

// wireItem is the decode target for one item; unlisted fields are skipped by
// the decoder instead of being allocated.
type wireItem struct {
	Type             string  `json:"type"`
	ID               string  `json:"id"`
	CallID           string  `json:"call_id"`
	Role             string  `json:"role"`
	Name             string  `json:"name"`
	EncryptedContent present `json:"encrypted_content"`
}

// wireCreate is the decode target for a response.create frame or a POST body.
// Fields that are only echoed back stay raw.
type wireCreate struct {
	Type               string          `json:"type"`
	Model              string          `json:"model"`
	PreviousResponseID *string         `json:"previous_response_id"`
	Store              *bool           `json:"store"`
	Generate           *bool           `json:"generate"`
	Stream             *bool           `json:"stream"`
	Input              []wireItem      `json:"input"`
	Instructions       json.RawMessage `json:"instructions"`
	Tools              json.RawMessage `json:"tools"`
	ToolChoice         json.RawMessage `json:"tool_choice"`
	ParallelToolCalls  json.RawMessage `json:"parallel_tool_calls"`
	Reasoning          json.RawMessage `json:"reasoning"`
	Text               json.RawMessage `json:"text"`
	Metadata           json.RawMessage `json:"metadata"`
	PromptCacheKey     json.RawMessage `json:"prompt_cache_key"`
	ServiceTier        json.RawMessage `json:"service_tier"`
	// StreamID stays raw so that a non-string lane gets invalid_stream_id
	// rather than a type error.
	StreamID json.RawMessage `json:"stream_id"`
}

// parsedCreate is a create after decoding, before it is checked against state.
type parsedCreate struct {
	wire     wireCreate
	prevID   string
	store    bool
	generate bool
	stream   bool
	input    []Item
	// hasLane reports a stream_id field; lane is its value when valid and
	// laneEcho the string to echo on an invalid_stream_id frame (nil when the
	// field is not a string).
	hasLane  bool
	laneOK   bool
	lane     string
	laneEcho *string
}

// parseCreate decodes a create once. Errors are the API errors the real
// service answers for malformed requests.
func parseCreate(frame []byte) (*parsedCreate, *APIError) {
	p := &parsedCreate{}
	err := json.Unmarshal(frame, &p.wire)
	if err != nil && retryStringInput(frame, err, &p.wire) {
		err = nil
	}
	var apiErr *APIError
	if err != nil {
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) {
			return nil, errInvalidJSON()
		}
		// A wrong type still leaves the rest decoded, so the caller can tell
		// a create with a bad field from a frame that is not a create.
		apiErr = decodeError(err)
	}
	w := &p.wire
	// Echoed fields go into SSE data lines, which must not contain newlines,
	// so a pretty-printed request is compacted once here.
	for _, raw := range []*json.RawMessage{&w.Instructions, &w.Tools, &w.ToolChoice, &w.ParallelToolCalls,
		&w.Reasoning, &w.Text, &w.Metadata, &w.PromptCacheKey, &w.ServiceTier} {
		*raw = compactRaw(*raw)
	}
	if w.PreviousResponseID != nil {
		p.prevID = *w.PreviousResponseID
	}
	// The Responses API stores by default; Codex opts out explicitly.
	p.store = w.Store == nil || *w.Store
	p.generate = w.Generate == nil || *w.Generate
	p.stream = w.Stream != nil && *w.Stream
	if len(w.StreamID) > 0 {
		p.hasLane = true
		p.lane, p.laneEcho, p.laneOK = parseLane(w.StreamID)
		w.StreamID = nil
	}
	p.input = make([]Item, len(w.Input))
	for i, wi := range w.Input {
		typ := wi.Type
		if typ == "" && wi.Role != "" {
			// An "easy" input message has a role and content but no type.
			typ = TypeMessage
		}
		p.input[i] = Item{
			Type:             typ,
			ID:               wi.ID,
			CallID:           wi.CallID,
			Role:             wi.Role,
			Name:             wi.Name,
			EncryptedContent: bool(wi.EncryptedContent),
		}
	}
	// The headers now live in p.input; drop the wire copy.
	w.Input = nil
	return p, apiErr
}

func compactRaw(raw json.RawMessage) json.RawMessage {
	if bytes.IndexByte(raw, '\n') < 0 && bytes.IndexByte(raw, '\r') < 0 {
		return raw
	}
	var buf bytes.Buffer
	buf.Grow(len(raw))
	if json.Compact(&buf, raw) != nil {
		return raw
	}
	return buf.Bytes()
}

// retryStringInput handles the one shape the struct cannot take: input given
// as a plain string, which the API treats as a single user message. It only
// runs on that rare failure, so the common path decodes once.
func retryStringInput(frame []byte, err error, w *wireCreate) bool {
	var te *json.UnmarshalTypeError
	if !errors.As(err, &te) || te.Field != "input" || te.Value != "string" {
		return false
	}
	var alt struct {
		wireCreate
		Input string `json:"input"`
	}
	if json.Unmarshal(frame, &alt) != nil {
		return false
	}
	*w = alt.wireCreate
	w.Input = []wireItem{{Type: TypeMessage, Role: "user"}}
	return true
}

// decodeError maps a type mismatch to the API's wording.
func decodeError(err error) *APIError {
	var te *json.UnmarshalTypeError
	if !errors.As(err, &te) {
		return errInvalidJSON()
	}
	if te.Field == "" {
		return invalidRequest(CodeInvalidType, "", "Invalid type for request body: expected an object, but got %s instead.", jsonKind(te.Value))
	}
	want := "a value"
	if te.Type != nil {
		want = goKind(te.Type.Kind().String())
	}
	return invalidRequest(CodeInvalidType, te.Field, "Invalid type for '%s': expected %s, but got %s instead.", te.Field, want, jsonKind(te.Value))
}

func jsonKind(v string) string {
	switch v {
	case "object", "array":
		return "an " + v
	case "":
		return "a value"
	}
	return "a " + v
}

func goKind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "slice":
		return "an array"
	case "struct":
		return "an object"
	}
	return "a " + k
}

// Request is what a Script sees of one create.
type Request struct {
	// Conn is the connection's sequence number (1-based), Create the create's.
	Conn   int
	Create int
	// Transport is "ws" or "http".
	Transport          string
	Model              string
	PreviousResponseID string
	Store              bool
	Generate           bool
	// Input holds the new items of this create, Context the effective context:
	// the chained response's context and output followed by Input. Both are
	// shared with the emulator's records and must not be modified.
	Input   []Item
	Context []Item
	// Frame is the raw create; Header the handshake or POST headers. For a
	// successor, Frame is a response.steer frame the emulator assembles from
	// the accepted steers, whose input is Input.
	Frame  []byte
	Header http.Header
	// Lane is the create's stream_id ("" on the default lane).
	Lane string
	// Successor reports a response the server started by itself after a
	// steer: PreviousResponseID is the steered response and Input the
	// steering messages.
	Successor bool
}

// LastInput returns the last new item, or a zero Item for an empty input.
func (r *Request) LastInput() Item {
	if len(r.Input) == 0 {
		return Item{}
	}
	return r.Input[len(r.Input)-1]
}

// InputRaw decodes the raw new input items. The emulator never needs item
// content itself, so this runs only when a script or test asks for it.
func (r *Request) InputRaw() ([]json.RawMessage, error) {
	return rawInput(r.Frame)
}

func rawInput(frame []byte) ([]json.RawMessage, error) {
	var v struct {
		Input json.RawMessage `json:"input"`
	}
	if err := json.Unmarshal(frame, &v); err != nil {
		return nil, fmt.Errorf("decode frame: %w", err)
	}
	if len(v.Input) == 0 || v.Input[0] != '[' {
		return nil, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(v.Input, &items); err != nil {
		return nil, fmt.Errorf("decode input: %w", err)
	}
	return items, nil
}
