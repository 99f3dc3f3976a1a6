package emulator

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// Error codes the emulator emits in error.code. Pairing and item errors carry a
// null code, as the real API does; only these conditions have a code.
const (
	CodePreviousResponseNotFound = "previous_response_not_found"
	CodeConnectionLimitReached   = "websocket_connection_limit_reached"
	CodeInvalidValue             = "invalid_value"
	CodeInvalidType              = "invalid_type"
	CodeMissingRequiredParameter = "missing_required_parameter"
	CodeInvalidJSON              = "invalid_json"
	CodeInvalidAPIKey            = "invalid_api_key"
	CodeServerError              = "server_error"
	CodeUnknownParameter         = "unknown_parameter"
	CodeInvalidStreamID          = "invalid_stream_id"
	CodeStreamLimitReached       = "websocket_stream_limit_reached"
	CodeModelNotFound            = "model_not_found"
	// Codes of response.steer.failed and response.inject.failed (the
	// error frame of an unknown interrupt target uses CodeResponseNotFound).
	CodeResponseNotFound          = "response_not_found"
	CodeResponseAlreadyCompleted  = "response_already_completed"
	CodeResponseNotActive         = "response_not_active"
	CodeInvalidInput              = "invalid_input"
	CodeSuccessorCreationFailed   = "successor_creation_failed"
	TypeInvalidRequest            = "invalid_request_error"
	TypeServerError               = "server_error"
	connectionLimitMessage        = "Responses websocket connection limit reached (60 minutes). Create a new websocket connection to continue."
	storeFalseItemNotFoundMessage = "Item with id '%s' not found. Items are not persisted when `store` is set to false. Try again with `store` set to true, or remove this item from your input."
	invalidStreamIDMessage        = "The 'stream_id' field must be a non-empty string with at most 256 characters and may only contain letters, numbers, underscores, hyphens, and periods."
	// streamLimitMessage is the emulator's wording; the real text is unknown.
	streamLimitMessage = "Too many streams on this websocket connection: at most %d distinct 'stream_id' values may be used per connection. Reuse an existing stream_id or open a new websocket connection."
)

// APIError is a request-scoped failure as the Responses API reports it: the
// top-level status of a WebSocket error frame (or the HTTP status) plus the
// error object. Empty Code and Param encode as JSON null.
type APIError struct {
	Status  int
	Type    string
	Code    string
	Message string
	Param   string
}

// Error returns the message with its code, so a test failure names both.
func (e *APIError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("%d %s: %s", e.Status, e.Type, e.Message)
	}
	return fmt.Sprintf("%d %s (%s): %s", e.Status, e.Type, e.Code, e.Message)
}

// errorBody is the wire form of the error object; pointers give the nulls.
type errorBody struct {
	Type    string  `json:"type"`
	Code    *string `json:"code"`
	Message string  `json:"message"`
	Param   *string `json:"param"`
}

func (e *APIError) body() errorBody {
	b := errorBody{Type: e.Type, Message: e.Message}
	if e.Code != "" {
		code := e.Code
		b.Code = &code
	}
	if e.Param != "" {
		param := e.Param
		b.Param = &param
	}
	return b
}

func (e *APIError) status() int {
	if e.Status == 0 {
		return http.StatusBadRequest
	}
	return e.Status
}

// Frame returns the WebSocket error frame, with the top-level status Codex
// needs before it treats the frame as an error at all.
func (e *APIError) Frame() []byte { return e.frame(nil) }

// LaneFrame returns the error frame as sent on lane stream_id: the frame of
// a named lane carries the lane at the top level, like every other event of
// that lane.
func (e *APIError) LaneFrame(streamID string) []byte { return e.frame(&streamID) }

func (e *APIError) frame(lane *string) []byte {
	b, _ := json.Marshal(struct {
		Type     string    `json:"type"`
		Status   int       `json:"status"`
		Error    errorBody `json:"error"`
		StreamID *string   `json:"stream_id,omitempty"`
	}{"error", e.status(), e.body(), lane})
	return b
}

// HTTPBody returns the JSON body of an HTTP 4xx/5xx answer.
func (e *APIError) HTTPBody() []byte {
	b, _ := json.Marshal(struct {
		Error errorBody `json:"error"`
	}{e.body()})
	return b
}

func invalidRequest(code, param, format string, args ...any) *APIError {
	return &APIError{
		Status:  http.StatusBadRequest,
		Type:    TypeInvalidRequest,
		Code:    code,
		Param:   param,
		Message: fmt.Sprintf(format, args...),
	}
}

// ErrPreviousResponseNotFound returns the error for a previous_response_id the
// emulator cannot chain to.
func ErrPreviousResponseNotFound(id string) *APIError {
	return invalidRequest(CodePreviousResponseNotFound, "previous_response_id",
		"Previous response with id '%s' not found.", id)
}

// ErrConnectionLimit returns the error sent when a connection reaches its age cap.
func ErrConnectionLimit() *APIError {
	return invalidRequest(CodeConnectionLimitReached, "", connectionLimitMessage)
}

// ErrServer returns a generic upstream failure, handy for fault injection.
func ErrServer() *APIError {
	return &APIError{
		Status:  http.StatusInternalServerError,
		Type:    TypeServerError,
		Code:    CodeServerError,
		Message: "The server had an error while processing your request. Sorry about that!",
	}
}

// ErrInvalidStreamID returns the error for a stream_id that is not 1-256
// characters of letters, digits, '_', '-' and '.'.
func ErrInvalidStreamID() *APIError {
	return invalidRequest(CodeInvalidStreamID, "stream_id", invalidStreamIDMessage)
}

// ErrStreamLimit returns the error for the first create on a named lane
// beyond MaxLanes on one connection.
func ErrStreamLimit() *APIError {
	return invalidRequest(CodeStreamLimitReached, "stream_id", streamLimitMessage, MaxLanes)
}

// ErrResponseNotFound returns the error frame for a response.interrupt that
// names no response of the connection (emulator wording).
func ErrResponseNotFound(id string) *APIError {
	return invalidRequest(CodeResponseNotFound, "response_id", "Response with id '%s' not found on this connection.", id)
}

func errUnknownParameter(param string) *APIError {
	return invalidRequest(CodeUnknownParameter, param, "Unknown parameter: '%s'.", param)
}

func errNotFound(format string, args ...any) *APIError {
	e := invalidRequest("", "", format, args...)
	e.Status = http.StatusNotFound
	return e
}

func errNoToolOutput(kind, callID string) *APIError {
	return invalidRequest("", "input", "No tool output found for %s %s.", callKindNoun(kind), callID)
}

func errNoToolCall(kind, callID string) *APIError {
	return invalidRequest("", "input", "No tool call found for %s output with call_id %s.", callKindNoun(kind), callID)
}

func errDuplicateOutput(callID string) *APIError {
	return invalidRequest("", "input", "Duplicate tool output found for call_id %s.", callID)
}

func errDuplicateItem(id string) *APIError {
	return invalidRequest("", "input", "Duplicate item found with id %s. Remove duplicate items from your input and try again.", id)
}

func errReasoningWithoutFollower(id string) *APIError {
	return invalidRequest("", "input", "Item '%s' of type 'reasoning' was provided without its required following item.", id)
}

func errItemNotPersisted(id string) *APIError {
	return invalidRequest("", "input", storeFalseItemNotFoundMessage, id)
}

func errItemNotFound(id string) *APIError {
	return invalidRequest("", "input", "Item with id '%s' not found.", id)
}

func errMissingParam(param string) *APIError {
	return invalidRequest(CodeMissingRequiredParameter, param, "Missing required parameter: '%s'.", param)
}

func errInvalidJSON() *APIError {
	return invalidRequest(CodeInvalidJSON, "", "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.")
}
