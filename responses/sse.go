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
	// slab holds the events returned so far at its start; the next event is read into what
	// is left of it, so that a stream of small events costs an allocation per slab, not one
	// per event. A returned event's bytes are never written again (its capacity ends with
	// it), so an event, and items that alias it, stay valid after the next call to Next.
	slab []byte
	// nextSlab is the size of the next slab: slabs double up to maxSlab as a stream goes
	// on, so a short response allocates little.
	nextSlab int
}

// sseBufferSize is the read buffer of an SSEReader. Longer lines are read in several
// chunks; the buffer is allocated (and zeroed) per response, so it is kept small (issue 7:
// 64 KiB per HTTP turn was a fifth of the gateway's allocated bytes).
const sseBufferSize = 8 << 10

// Slab sizes of an SSEReader, and the room below which a new slab is taken before an event.
const (
	firstSlab = 4 << 10
	maxSlab   = 32 << 10
	minRoom   = 256
)

// NewSSEReader reads events from r.
func NewSSEReader(r io.Reader) *SSEReader {
	return &SSEReader{r: bufio.NewReaderSize(r, sseBufferSize), max: MaxSSEEvent, nextSlab: firstSlab}
}

// Buffered returns how many bytes have been read from the stream but not yet returned as
// events: when it is not zero, the next event (or part of it) is already here. A relay
// flushes its client only when it is zero, so that a burst of events goes out in one write.
func (s *SSEReader) Buffered() int { return s.r.Buffered() }

// ErrSSETooLarge is returned for an event over MaxSSEEvent.
var ErrSSETooLarge = errors.New("server-sent event too large")

// Next returns the next event. It returns io.EOF at a clean end, io.ErrUnexpectedEOF when
// the stream ends inside an event. The event's bytes stay valid (and unchanged) after later
// calls.
func (s *SSEReader) Next() (SSEEvent, error) {
	var ev SSEEvent
	var data []byte
	if cap(s.slab)-len(s.slab) < minRoom {
		s.newSlab(0)
	}
	// raw is the event as relayed, read at the end of the slab; it moves to a larger slab
	// when it outgrows this one.
	raw := s.slab[len(s.slab):]
	for {
		// Each line is read straight into raw, not into a line buffer first.
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
					raw = s.grow(raw, 1)
					raw = append(raw, '\n')
					ev.Raw, ev.Data = s.take(raw), data
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
			ev.Raw, ev.Data = s.take(raw), data
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
				// it, so a second line appends to a copy, never into raw. raw only ever
				// moves by a copy, so the bytes data points at stay as they are.
				data = value[:len(value):len(value)]
			} else {
				data = append(data, '\n')
				data = append(data, value...)
			}
		}
	}
}

// take ends the event raw, which lies at the end of the slab, and returns it with its
// capacity cut to its length.
func (s *SSEReader) take(raw []byte) []byte {
	s.slab = s.slab[:len(s.slab)+len(raw)]
	return raw[:len(raw):len(raw)]
}

// grow makes room for n more bytes after raw, the event being read at the end of the slab,
// moving it to a new slab when this one is too small.
func (s *SSEReader) grow(raw []byte, n int) []byte {
	if cap(raw)-len(raw) >= n {
		return raw
	}
	s.newSlab(2 * (len(raw) + n))
	return append(s.slab, raw...)
}

// newSlab starts a slab of at least atLeast bytes. The old one stays with the events in it.
func (s *SSEReader) newSlab(atLeast int) {
	size := max(s.nextSlab, atLeast)
	s.slab = make([]byte, 0, size)
	s.nextSlab = min(2*s.nextSlab, maxSlab)
}

// appendLine appends the next line, newline included, to raw. At the end of the stream it
// returns the last line without one, or io.EOF when there is none.
func (s *SSEReader) appendLine(raw []byte) ([]byte, error) {
	start := len(raw)
	for {
		chunk, err := s.r.ReadSlice('\n')
		raw = s.grow(raw, len(chunk))
		raw = append(raw, chunk...)
		if err == nil {
			return raw, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(raw)-start > s.max {
				return raw, ErrSSETooLarge
			}
			continue
		}
		if len(raw) > start && errors.Is(err, io.EOF) {
			return raw, nil
		}
		return raw, err
	}
}

// SSEFrame formats a JSON event as a server-sent event.
func SSEFrame(name string, data []byte) []byte {
	return fmt.Appendf(nil, "event: %s\ndata: %s\n\n", name, data)
}

// intern returns a known word (an event type) without allocating, else a copy.
func intern(b []byte) string { return word(b) }
