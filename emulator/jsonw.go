package emulator

import (
	"strconv"
	"unicode/utf8"
)

// jw builds a JSON object by appending, so event frames (thousands of text
// deltas in a throughput test) cost one allocation and no reflection.
type jw struct {
	b     []byte
	first bool
}

func newObj(size int) *jw {
	b := make([]byte, 0, size)
	return &jw{b: append(b, '{'), first: true}
}

func (w *jw) key(k string) {
	if !w.first {
		w.b = append(w.b, ',')
	}
	w.first = false
	w.b = append(w.b, '"')
	w.b = append(w.b, k...)
	w.b = append(w.b, '"', ':')
}

func (w *jw) str(k, v string) *jw {
	w.key(k)
	w.b = appendJSONString(w.b, v)
	return w
}

func (w *jw) num(k string, v int64) *jw {
	w.key(k)
	w.b = strconv.AppendInt(w.b, v, 10)
	return w
}

func (w *jw) boolean(k string, v bool) *jw {
	w.key(k)
	w.b = strconv.AppendBool(w.b, v)
	return w
}

// raw appends a value that is already JSON; an empty value becomes def.
func (w *jw) raw(k string, v []byte, def string) *jw {
	w.key(k)
	if len(v) == 0 {
		w.b = append(w.b, def...)
		return w
	}
	w.b = append(w.b, v...)
	return w
}

func (w *jw) done() []byte { return append(w.b, '}') }

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD
// and U+2028/U+2029 are escaped, matching encoding/json.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
