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
	// Output are the items of a terminal event's response.output (not read by ParseTerminal).
	Output []Item
	// OutputCalls are the call ids of the call items (IsCall) in response.output, in order,
	// "" for a call without one; nil when there is none.
	OutputCalls []string
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
					return unquoteWord(frame[j:ve])
				}
			}
		}
	}
	ev, err := parseEvent(frame, true)
	if err != nil {
		return ""
	}
	return ev.Type
}

// ParseEvent reads a server event.
func ParseEvent(frame []byte) (Event, error) {
	return parseEvent(frame, false)
}

// ParseTerminal reads a terminal event for a reader that already has the response's output
// items (from its response.output_item.done events): it is ParseEvent without Output. The
// output is validated and HasOutput and OutputCalls are set, but no item is materialized, so
// a terminal event that repeats a whole response costs one walk over its bytes and a few
// small allocations. Any other event reads as with ParseEvent, Output aside.
func ParseTerminal(frame []byte) (Event, error) {
	return parseEvent(frame, true)
}

// parseEvent reads an event in one walk over its bytes, validating every value while it reads
// the few it needs. A member read more than once (a duplicate key) is read again from
// scratch: the last one counts, as with a JSON decoder.
func parseEvent(frame []byte, skipOutput bool) (Event, error) {
	var ev Event
	var resp responseFacts
	hasResp := false
	var item *Item
	var errBody *ErrorBody
	status := 0
	typed := false
	end, err := scanObject(frame, skipWS(frame, 0), func(key []byte, vs int) (int, error) {
		if vs >= len(frame) {
			return vs, synErr(vs, "unexpected end of input")
		}
		c := frame[vs]
		switch {
		case c == '{' && keyIs(key, "response"):
			var r responseFacts
			ve, err := readResponse(frame, vs, 1, skipOutput, &r)
			if err == nil {
				resp, hasResp = r, true
			}
			return ve, err
		case c == '{' && keyIs(key, "item"):
			var it Item
			ve, err := parseItem(frame, vs, 1, func(v Item) { it = v })
			if err == nil {
				item = &it
			}
			return ve, err
		case c == '{' && keyIs(key, "error"):
			eb, ve, err := readErrorBody(frame, vs, 1)
			if err == nil {
				errBody = &eb
			}
			return ve, err
		}
		ve, err := skipValue(frame, vs, 1)
		if err != nil {
			return ve, err
		}
		val := frame[vs:ve]
		switch {
		case keyIs(key, "type"):
			// The first type key counts, as in EventKind's fast path.
			if !typed && c == '"' {
				ev.Type = unquoteWord(val)
			}
			typed = true
		case keyIs(key, "status"):
			status, _ = strconv.Atoi(string(val))
		case c == '"' && keyIs(key, "stream_id"):
			ev.Lane = unquoteWord(val)
		}
		return ve, nil
	})
	if err != nil {
		return ev, err
	}
	if skipWS(frame, end) != len(frame) {
		return ev, synErr(end, "trailing data after event")
	}
	ev.Item = item
	if hasResp {
		resp.fill(&ev)
	}
	if errBody != nil {
		if errBody.Status == 0 {
			errBody.Status = status
		}
		ev.Error = errBody
	}
	return ev, nil
}

// responseFacts is what readResponse takes from a response object.
type responseFacts struct {
	id, status, reason string
	hasOutput          bool
	output             []Item
	calls              []string
	err                *ErrorBody
}

func (r *responseFacts) fill(ev *Event) {
	ev.ResponseID, ev.Status, ev.IncompleteReason = r.id, r.status, r.reason
	ev.HasOutput, ev.Output, ev.OutputCalls = r.hasOutput, r.output, r.calls
	ev.Error = r.err
}

// readResponse reads the response object at b[i] (depth as skipValue counts it) while it
// validates it. Without skipOutput the output items are materialized; with it only their call
// ids are read.
func readResponse(b []byte, i, depth int, skipOutput bool, r *responseFacts) (int, error) {
	if depth >= maxDepth {
		return i, synErr(i, "nesting too deep")
	}
	return scanObject(b, i, func(key []byte, vs int) (int, error) {
		if vs >= len(b) {
			return vs, synErr(vs, "unexpected end of input")
		}
		c := b[vs]
		switch {
		case c == '[' && keyIs(key, "output"):
			ve, err := readOutput(b, vs, depth+1, skipOutput, r)
			r.hasOutput = true
			return ve, err
		case c == '{' && keyIs(key, "incomplete_details"):
			return scanObject(b, vs, func(k []byte, s int) (int, error) {
				e, err := skipValue(b, s, depth+2)
				if err == nil && b[s] == '"' && keyIs(k, "reason") {
					r.reason = unquoteWord(b[s:e])
				}
				return e, err
			})
		case c == '{' && keyIs(key, "error"):
			eb, ve, err := readErrorBody(b, vs, depth+1)
			r.err = &eb
			return ve, err
		}
		ve, err := skipValue(b, vs, depth+1)
		if err != nil || c != '"' {
			return ve, err
		}
		switch {
		case keyIs(key, "id"):
			r.id = unquote(b[vs:ve])
		case keyIs(key, "status"):
			r.status = unquoteWord(b[vs:ve])
		}
		return ve, nil
	})
}

// readOutput reads a response's output array at b[i] (at depth): its items, or with
// skipOutput only the call ids of its call items.
func readOutput(b []byte, i, depth int, skipOutput bool, r *responseFacts) (int, error) {
	if depth >= maxDepth {
		return i, synErr(i, "nesting too deep")
	}
	r.calls = nil
	if !skipOutput {
		// An empty output reads as an empty list, not as none.
		r.output = []Item{}
		if j := skipWS(b, i+1); j < len(b) && b[j] != ']' {
			r.output = make([]Item, 0, 4)
		}
		end, err := scanArray(b, i, func(start int) (int, error) {
			return parseItem(b, start, depth+1, func(it Item) { r.output = append(r.output, it) })
		})
		for j := range r.output {
			if r.output[j].IsCall() {
				r.calls = append(r.calls, r.output[j].CallID)
			}
		}
		return end, err
	}
	return scanArray(b, i, func(start int) (int, error) {
		if start >= len(b) || b[start] != '{' {
			return skipValue(b, start, depth+1)
		}
		// An item's type and call id, as parseItem reads them (the last of each counts).
		var typ, callID []byte
		end, err := scanObject(b, start, func(key []byte, vs int) (int, error) {
			ve, err := skipValue(b, vs, depth+2)
			if err != nil || b[vs] != '"' {
				return ve, err
			}
			switch {
			case keyIs(key, "type"):
				typ = b[vs:ve]
			case keyIs(key, "call_id"):
				callID = b[vs:ve]
			}
			return ve, nil
		})
		if err == nil && typ != nil && isCallToken(typ) {
			id := ""
			if callID != nil {
				id = unquote(callID)
			}
			r.calls = append(r.calls, id)
		}
		return end, err
	})
}

// isCallToken reports whether a string token names a call item type (IsCall).
func isCallToken(tok []byte) bool {
	return keyIs(tok, TypeFunctionCall) || keyIs(tok, TypeCustomToolCall) || keyIs(tok, TypeLocalShellCall)
}

// readErrorBody reads the error object at b[i] (at depth) while it validates it.
func readErrorBody(b []byte, i, depth int) (ErrorBody, int, error) {
	var eb ErrorBody
	if depth >= maxDepth {
		return eb, i, synErr(i, "nesting too deep")
	}
	end, err := scanObject(b, i, func(key []byte, vs int) (int, error) {
		ve, err := skipValue(b, vs, depth+1)
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
	return eb, end, err
}

// ParseErrorBody reads an HTTP error body {"error":{…}} or a bare error object.
func ParseErrorBody(body []byte, status int) (ErrorBody, bool) {
	ev, err := parseEvent(body, true)
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
	var r responseFacts
	end, err := readResponse(body, i, 0, false, &r)
	if err != nil {
		return ev, err
	}
	if skipWS(body, end) != len(body) {
		return ev, synErr(end, "trailing data after the response object")
	}
	r.fill(&ev)
	return ev, nil
}

// laneKey is what an event that belongs to a named lane carries.
var laneKey = []byte(`"stream_id"`)

// laneKeyTail is the end of laneKey. A search for the whole key starts at each '"', the
// commonest byte of JSON; one for its tail starts at each 'm', which is rare in the bytes of a
// turn (base64, text), so it mostly runs at IndexByte's speed.
var laneKeyTail = laneKey[len(laneKey)-5:]

// mentionsLane reports whether frame contains laneKey (bytes.Contains, faster).
func mentionsLane(frame []byte) bool {
	head := len(laneKey) - len(laneKeyTail)
	for i := 0; ; {
		j := bytes.Index(frame[i:], laneKeyTail)
		if j < 0 {
			return false
		}
		i += j
		if i >= head && string(frame[i-head:i]) == string(laneKey[:head]) {
			return true
		}
		// The tail does not overlap itself, so no match starts inside this one.
		i += len(laneKeyTail)
	}
}

// EventLane returns an event's top-level stream_id: the lane of the connection it belongs
// to, "" for the default lane. Default-lane events (most traffic) cost one substring search;
// only a frame that mentions stream_id is walked, at its top level.
func EventLane(frame []byte) string {
	if !mentionsLane(frame) {
		return ""
	}
	lane := ""
	_, _ = scanObject(frame, skipWS(frame, 0), func(key []byte, vs int) (int, error) {
		ve, err := skipValue(frame, vs, 1)
		if err == nil && keyIs(key, "stream_id") && frame[vs] == '"' {
			lane = unquoteWord(frame[vs:ve])
		}
		return ve, err
	})
	return lane
}
