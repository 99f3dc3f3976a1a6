package responses

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// MaxSSEEvent bounds one server-sent event; a response.completed carries the whole response.
const MaxSSEEvent = 256 << 20

// SSEEvent is one server-sent event: its raw bytes (blank line included, to relay as is),
// its event name and its joined data.
type SSEEvent struct {
	Raw   []byte
	Name  string
	Data  []byte
	Lines int
}

// SSEReader reads server-sent events (text/event-stream) one at a time.
type SSEReader struct {
	r   *bufio.Reader
	max int
}

// sseBufferSize is the read buffer of an SSEReader. Longer lines are read in several
// chunks; the buffer is allocated (and zeroed) per response, so it is kept small (issue 7:
// 64 KiB per HTTP turn was a fifth of the gateway's allocated bytes).
const sseBufferSize = 8 << 10

// NewSSEReader reads events from r.
func NewSSEReader(r io.Reader) *SSEReader {
	return &SSEReader{r: bufio.NewReaderSize(r, sseBufferSize), max: MaxSSEEvent}
}

// Buffered returns how many bytes have been read from the stream but not yet returned as
// events: when it is not zero, the next event (or part of it) is already here. A relay
// flushes its client only when it is zero, so that a burst of events goes out in one write.
func (s *SSEReader) Buffered() int { return s.r.Buffered() }

// ErrSSETooLarge is returned for an event over MaxSSEEvent.
var ErrSSETooLarge = errors.New("server-sent event too large")

// Next returns the next event. It returns io.EOF at a clean end, io.ErrUnexpectedEOF when
// the stream ends inside an event.
func (s *SSEReader) Next() (SSEEvent, error) {
	var ev SSEEvent
	var data []byte
	raw := make([]byte, 0, 512)
	for {
		// Each line is read straight into raw (the event as relayed), not into a line
		// buffer first.
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
					// A last event without its blank line still counts.
					ev.Raw, ev.Data = append(raw, '\n'), data
					return ev, nil
				}
				return ev, io.ErrUnexpectedEOF
			}
			return ev, err
		}
		line := raw[start:]
		if len(raw) > s.max {
			return ev, ErrSSETooLarge
		}
		body := bytes.TrimRight(line, "\r\n")
		if len(body) == 0 {
			if len(data) == 0 && ev.Name == "" {
				// Blank lines between events carry nothing.
				raw = raw[:0]
				continue
			}
			ev.Raw, ev.Data = raw, data
			return ev, nil
		}
		ev.Lines++
		if body[0] == ':' {
			continue // a comment
		}
		field, value, _ := bytes.Cut(body, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			ev.Name = intern(value)
		case "data":
			if data == nil {
				// One data line (the usual case) is a slice of raw; its capacity ends with
				// it, so a second line appends to a copy, never into raw.
				data = value[:len(value):len(value)]
			} else {
				data = append(data, '\n')
				data = append(data, value...)
			}
		}
	}
}

// appendLine appends the next line, newline included, to dst. At the end of the stream it
// returns the last line without one, or io.EOF when there is none.
func (s *SSEReader) appendLine(dst []byte) ([]byte, error) {
	start := len(dst)
	for {
		chunk, err := s.r.ReadSlice('\n')
		dst = append(dst, chunk...)
		if err == nil {
			return dst, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(dst)-start > s.max {
				return dst, ErrSSETooLarge
			}
			continue
		}
		if len(dst) > start && errors.Is(err, io.EOF) {
			return dst, nil
		}
		return dst, err
	}
}

// SSEFrame formats a JSON event as a server-sent event.
func SSEFrame(name string, data []byte) []byte {
	return fmt.Appendf(nil, "event: %s\ndata: %s\n\n", name, data)
}

// intern returns a known word (an event type) without allocating, else a copy.
func intern(b []byte) string {
	if s, ok := interned[string(b)]; ok {
		return s
	}
	return string(b)
}
