package responses

import (
	"bytes"
	"strconv"
)

// Server event types the gateway acts on. Everything else is relayed without a look inside.
const (
	EventError          = "error"
	EventCreated        = "response.created"
	EventOutputItemDone = "response.output_item.done"
	EventCompleted      = "response.completed"
	EventFailed         = "response.failed"
	EventIncomplete     = "response.incomplete"
	EventDone           = "response.done"
	EventCancelled      = "response.cancelled"
)

// StatusCompleted is the status of a response that ran to its end.
const StatusCompleted = "completed"

// IsTerminal reports whether an event type ends a response.
func IsTerminal(t string) bool {
	switch t {
	case EventCompleted, EventFailed, EventIncomplete, EventDone, EventCancelled:
		return true
	}
	return false
}

// Event is what the gateway reads from one server event. Item and Output alias the frame's
// bytes.
type Event struct {
	Type string
	// ResponseID and Status come from the event's response object (created and terminal).
	ResponseID string
	Status     string
	// IncompleteReason is the response's incomplete_details.reason ("steered",
	// "max_output_tokens", …).
	IncompleteReason string
	// HasOutput is set when the response object carries an output list (Output may still be
	// empty).
	HasOutput bool
	// Lane is the event's top-level stream_id: the lane of the connection it belongs to; ""
	// is the default lane.
	Lane string
	// Item is the item of response.output_item.done.
	Item *Item
	// Output are the items of a terminal event's response.output.
	Output []Item
	// Error is set for an error event, or a terminal event whose response carries an error.
	Error *ErrorBody
}

// ErrorBody is the error object of an error frame or HTTP error body.
type ErrorBody struct {
	Status  int
	Type    string
	Code    string
	Message string
	Param   string
	// Lane is the stream_id the error frame is about; "" for the default lane. Only
	// ErrorFrame writes it (top-level, as the upstream does on a named lane).
	Lane string
}

// EventKind returns an event's type, reading only as far as the type field when it comes
// first, as it does in every server event. The first type key counts, here and in ParseEvent.
func EventKind(frame []byte) string {
	i := skipWS(frame, 0)
	if i >= len(frame) || frame[i] != '{' {
		return ""
	}
	i = skipWS(frame, i+1)
	if i < len(frame) && frame[i] == '"' {
		end, err := skipString(frame, i)
		if err == nil && keyIs(frame[i:end], "type") {
			j := skipWS(frame, end)
			if j < len(frame) && frame[j] == ':' {
				j = skipWS(frame, j+1)
				if j >= len(frame) || frame[j] != '"' {
					return ""
				}
				if ve, err := skipString(frame, j); err == nil {
					return unquote(frame[j:ve])
				}
			}
		}
	}
	ev, err := ParseEvent(frame)
	if err != nil {
		return ""
	}
	return ev.Type
}

// ParseEvent reads a server event.
func ParseEvent(frame []byte) (Event, error) {
	var ev Event
	var response, item, errObj []byte
	status := 0
	typed := false
	end, err := scanObject(frame, skipWS(frame, 0), func(key []byte, vs int) (int, error) {
		ve, err := skipValue(frame, vs, 1)
		if err != nil {
			return ve, err
		}
		val := frame[vs:ve]
		switch {
		case keyIs(key, "type"):
			// The first type key counts, as in EventKind's fast path.
			if !typed && val[0] == '"' {
				ev.Type = unquote(val)
			}
			typed = true
		case keyIs(key, "response") && val[0] == '{':
			response = val
		case keyIs(key, "item") && val[0] == '{':
			item = val
		case keyIs(key, "error") && val[0] == '{':
			errObj = val
		case keyIs(key, "status"):
			status, _ = strconv.Atoi(string(val))
		case keyIs(key, "stream_id") && val[0] == '"':
			ev.Lane = unquote(val)
		}
		return ve, nil
	})
	if err != nil {
		return ev, err
	}
	if skipWS(frame, end) != len(frame) {
		return ev, synErr(end, "trailing data after event")
	}
	if item != nil {
		it, _ := ParseItem(item)
		ev.Item = &it
	}
	if response != nil {
		readResponse(response, &ev)
	}
	if errObj != nil {
		eb := parseErrorBody(errObj)
		if eb.Status == 0 {
			eb.Status = status
		}
		ev.Error = &eb
	}
	return ev, nil
}

func readResponse(b []byte, ev *Event) {
	_, _ = scanObject(b, 0, func(key []byte, vs int) (int, error) {
		ve, err := skipValue(b, vs, 2)
		if err != nil {
			return ve, err
		}
		val := b[vs:ve]
		switch {
		case keyIs(key, "id") && val[0] == '"':
			ev.ResponseID = unquote(val)
		case keyIs(key, "status") && val[0] == '"':
			ev.Status = unquote(val)
		case keyIs(key, "output") && val[0] == '[':
			var r Request
			_, _ = r.parseInput(b, vs)
			ev.Output = r.items
			ev.HasOutput = true
		case keyIs(key, "incomplete_details") && val[0] == '{':
			_, _ = scanObject(val, 0, func(k []byte, s int) (int, error) {
				e, err := skipValue(val, s, 3)
				if err == nil && keyIs(k, "reason") && val[s] == '"' {
					ev.IncompleteReason = unquote(val[s:e])
				}
				return e, err
			})
		case keyIs(key, "error") && val[0] == '{':
			eb := parseErrorBody(val)
			ev.Error = &eb
		}
		return ve, nil
	})
}

func parseErrorBody(b []byte) ErrorBody {
	var eb ErrorBody
	_, _ = scanObject(b, 0, func(key []byte, vs int) (int, error) {
		ve, err := skipValue(b, vs, 2)
		if err != nil {
			return ve, err
		}
		val := b[vs:ve]
		isStr := val[0] == '"'
		switch {
		case keyIs(key, "type") && isStr:
			eb.Type = unquote(val)
		case keyIs(key, "code") && isStr:
			eb.Code = unquote(val)
		case keyIs(key, "message") && isStr:
			eb.Message = unquote(val)
		case keyIs(key, "param") && isStr:
			eb.Param = unquote(val)
		case keyIs(key, "status"):
			eb.Status, _ = strconv.Atoi(string(val))
		}
		return ve, nil
	})
	return eb
}

// ParseErrorBody reads an HTTP error body {"error":{…}} or a bare error object.
func ParseErrorBody(body []byte, status int) (ErrorBody, bool) {
	ev, err := ParseEvent(body)
	if err != nil {
		return ErrorBody{}, false
	}
	if ev.Error == nil {
		return ErrorBody{}, false
	}
	if ev.Error.Status == 0 {
		ev.Error.Status = status
	}
	return *ev.Error, true
}

// ErrorFrame builds a WebSocket error frame. Codex treats a frame as an error only when it has
// a top-level status, so it is always set; code is the upstream's own, never renamed.
func ErrorFrame(e ErrorBody) []byte {
	if e.Status == 0 {
		e.Status = 400
	}
	if e.Type == "" {
		e.Type = "invalid_request_error"
	}
	b := make([]byte, 0, 128+len(e.Message))
	b = append(b, `{"type":"error","status":`...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	if e.Lane != "" {
		b = append(b, `,"stream_id":`...)
		b = appendQuoted(b, e.Lane)
	}
	b = append(b, `,"error":`...)
	b = appendErrorObject(b, e)
	return append(b, '}')
}

// ErrorJSON builds an HTTP error body {"error":{…}}.
func ErrorJSON(e ErrorBody) []byte {
	if e.Type == "" {
		e.Type = "invalid_request_error"
	}
	b := append([]byte(`{"error":`), appendErrorObject(nil, e)...)
	return append(b, '}')
}

func appendErrorObject(b []byte, e ErrorBody) []byte {
	b = append(b, `{"type":`...)
	b = appendQuoted(b, e.Type)
	b = append(b, `,"code":`...)
	if e.Code == "" {
		b = append(b, "null"...)
	} else {
		b = appendQuoted(b, e.Code)
	}
	b = append(b, `,"message":`...)
	b = appendQuoted(b, e.Message)
	b = append(b, `,"param":`...)
	if e.Param == "" {
		b = append(b, "null"...)
	} else {
		b = appendQuoted(b, e.Param)
	}
	return append(b, '}')
}

// ParseResponseObject reads a response object that is not wrapped in an event (the body of a
// non-streamed HTTP response): its id, status and output items, as ParseEvent reads them from
// a terminal event. Type stays "".
func ParseResponseObject(body []byte) (Event, error) {
	var ev Event
	i := skipWS(body, 0)
	if i >= len(body) || body[i] != '{' {
		return ev, ErrNotObject
	}
	end, err := skipValue(body, i, 0)
	if err != nil {
		return ev, err
	}
	if skipWS(body, end) != len(body) {
		return ev, synErr(end, "trailing data after the response object")
	}
	readResponse(body[i:end], &ev)
	return ev, nil
}

// laneKey is what an event that belongs to a named lane carries.
var laneKey = []byte(`"stream_id"`)

// EventLane returns an event's top-level stream_id: the lane of the connection it belongs
// to, "" for the default lane. Default-lane events (most traffic) cost one substring search;
// only a frame that mentions stream_id is walked, at its top level.
func EventLane(frame []byte) string {
	if !bytes.Contains(frame, laneKey) {
		return ""
	}
	lane := ""
	_, _ = scanObject(frame, skipWS(frame, 0), func(key []byte, vs int) (int, error) {
		ve, err := skipValue(frame, vs, 1)
		if err == nil && keyIs(key, "stream_id") && frame[vs] == '"' {
			lane = unquote(frame[vs:ve])
		}
		return ve, err
	})
	return lane
}
