package responses

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// The readers as they were before they were made cheaper, kept as oracles for the fuzz
// targets: the fast readers must read every input exactly as these do.

func refParseEvent(frame []byte) (Event, error) {
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
		it, _ := refParseItem(item)
		ev.Item = &it
	}
	if response != nil {
		refReadResponse(response, &ev)
	}
	if errObj != nil {
		eb := refParseErrorBody(errObj)
		if eb.Status == 0 {
			eb.Status = status
		}
		ev.Error = &eb
	}
	return ev, nil
}

func refReadResponse(b []byte, ev *Event) {
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
			items := make([]Item, 0, 8)
			_, _ = scanArray(b, vs, func(start int) (int, error) {
				return refParseItemAt(b, start, 2, func(it Item) { items = append(items, it) })
			})
			ev.Output = items
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
			eb := refParseErrorBody(val)
			ev.Error = &eb
		}
		return ve, nil
	})
	// What the old reader left to its callers, derived here for the comparison.
	for i := range ev.Output {
		if ev.Output[i].IsCall() {
			ev.OutputCalls = append(ev.OutputCalls, ev.Output[i].CallID)
		}
	}
}

func refParseErrorBody(b []byte) ErrorBody {
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

func refParseResponseObject(body []byte) (Event, error) {
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
	refReadResponse(body[i:end], &ev)
	return ev, nil
}

func refParseItem(raw []byte) (Item, error) {
	var it Item
	end, err := refParseItemAt(raw, skipWS(raw, 0), 0, func(v Item) { it = v })
	if err != nil {
		return Item{Raw: raw}, err
	}
	if skipWS(raw, end) != len(raw) {
		return Item{Raw: raw}, synErr(end, "trailing data after item")
	}
	it.Raw = raw
	return it, nil
}

func refParseItemAt(b []byte, i, depth int, add func(Item)) (int, error) {
	if i >= len(b) || b[i] != '{' {
		end, err := skipValue(b, i, depth)
		if err == nil {
			add(Item{Raw: b[i:end]})
		}
		return end, err
	}
	var it Item
	end, err := scanObject(b, i, func(key []byte, vs int) (int, error) {
		ve, err := skipValue(b, vs, depth+1)
		if err != nil {
			return ve, err
		}
		val := b[vs:ve]
		isStr := val[0] == '"'
		switch {
		case keyIs(key, "type") && isStr:
			it.Type = unquote(val)
		case keyIs(key, "id") && isStr:
			it.ID = unquote(val)
		case keyIs(key, "call_id") && isStr:
			it.CallID = unquote(val)
		case keyIs(key, "role") && isStr:
			it.Role = unquote(val)
		case keyIs(key, "encrypted_content"):
			it.EncryptedContent = string(val) != "null"
		}
		return ve, nil
	})
	if err != nil {
		return end, err
	}
	if it.Type == "" && it.Role != "" {
		it.Type = TypeMessage
	}
	it.Raw = b[i:end]
	add(it)
	return end, nil
}

// refSkipString walks a string one byte at a time.
func refSkipString(b []byte, i int) (int, error) {
	start := i
	i++
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			return i + 1, nil
		case c == '\\':
			if i+1 >= len(b) {
				return i, synErr(start, "unterminated string")
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) {
					return i, synErr(i, "invalid \\u escape")
				}
				for _, h := range b[i+2 : i+6] {
					if !isHex(h) {
						return i, synErr(i, "invalid \\u escape")
					}
				}
				i += 6
			default:
				return i, synErr(i, "invalid escape")
			}
		case c < 0x20:
			return i, synErr(i, "control character in string")
		default:
			i++
		}
	}
	return i, synErr(start, "unterminated string")
}

func refKey(it *Item) string {
	switch {
	case it.ID != "":
		return it.Type + ":" + it.ID
	case it.CallID != "":
		return it.Type + ":" + it.CallID
	default:
		return fmt.Sprintf("%s#%016x", it.Type, xxhash.Sum64(it.Raw))
	}
}

// refSSE reads events as the reader did with a buffer per event.
type refSSE struct{ r *bufio.Reader }

func (s *refSSE) next() (SSEEvent, error) {
	var ev SSEEvent
	var data []byte
	raw := make([]byte, 0, 512)
	for {
		start := len(raw)
		var err error
		raw, err = s.appendLine(raw)
		if err != nil {
			raw = raw[:start]
			if errors.Is(err, io.EOF) {
				if len(raw) == 0 {
					return ev, io.EOF
				}
				if len(data) > 0 || ev.Name != "" {
					ev.Raw, ev.Data = append(raw, '\n'), data
					return ev, nil
				}
				return ev, io.ErrUnexpectedEOF
			}
			return ev, err
		}
		line := raw[start:]
		body := bytes.TrimRight(line, "\r\n")
		if len(body) == 0 {
			if len(data) == 0 && ev.Name == "" {
				raw = raw[:0]
				continue
			}
			ev.Raw, ev.Data = raw, data
			return ev, nil
		}
		ev.Lines++
		if body[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(body, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			ev.Name = string(value)
		case "data":
			if data == nil {
				data = value[:len(value):len(value)]
			} else {
				data = append(data, '\n')
				data = append(data, value...)
			}
		}
	}
}

func (s *refSSE) appendLine(dst []byte) ([]byte, error) {
	start := len(dst)
	for {
		chunk, err := s.r.ReadSlice('\n')
		dst = append(dst, chunk...)
		if err == nil {
			return dst, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if len(dst) > start && errors.Is(err, io.EOF) {
			return dst, nil
		}
		return dst, err
	}
}
