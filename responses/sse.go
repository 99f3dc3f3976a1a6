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

// NewSSEReader reads events from r.
func NewSSEReader(r io.Reader) *SSEReader {
	return &SSEReader{r: bufio.NewReaderSize(r, 64<<10), max: MaxSSEEvent}
}

// ErrSSETooLarge is returned for an event over MaxSSEEvent.
var ErrSSETooLarge = errors.New("server-sent event too large")

// Next returns the next event. It returns io.EOF at a clean end, io.ErrUnexpectedEOF when
// the stream ends inside an event.
func (s *SSEReader) Next() (SSEEvent, error) {
	var ev SSEEvent
	var raw, data []byte
	for {
		line, err := s.readLine()
		if err != nil {
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
		raw = append(raw, line...)
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
			ev.Name = string(value)
		case "data":
			if data != nil {
				data = append(data, '\n')
			}
			if data == nil {
				data = make([]byte, 0, len(value))
			}
			data = append(data, value...)
		}
	}
}

func (s *SSEReader) readLine() ([]byte, error) {
	var line []byte
	for {
		chunk, err := s.r.ReadSlice('\n')
		line = append(line, chunk...)
		if err == nil {
			return line, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(line) > s.max {
				return nil, ErrSSETooLarge
			}
			continue
		}
		if len(line) > 0 && errors.Is(err, io.EOF) {
			return line, nil
		}
		return nil, err
	}
}

// SSEFrame formats a JSON event as a server-sent event.
func SSEFrame(name string, data []byte) []byte {
	return fmt.Appendf(nil, "event: %s\ndata: %s\n\n", name, data)
}
