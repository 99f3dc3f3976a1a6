package responses

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// maxDepth bounds nesting so that a hostile frame cannot make the scanner recurse without end.
const maxDepth = 512

// SyntaxError is a malformed-JSON error with the byte offset where scanning failed.
type SyntaxError struct {
	Offset int
	Msg    string
}

// Error implements error.
func (e *SyntaxError) Error() string {
	return fmt.Sprintf("invalid JSON at byte %d: %s", e.Offset, e.Msg)
}

// ErrNotObject is returned when a frame is valid JSON but not an object.
var ErrNotObject = errors.New("frame is not a JSON object")

func synErr(off int, msg string) error { return &SyntaxError{Offset: off, Msg: msg} }

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue validates the JSON value starting at b[i] and returns the offset just past it.
// It never allocates: opaque content (encrypted reasoning, tool output) is only walked over.
func skipValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return i, synErr(i, "unexpected end of input")
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{':
		return skipObject(b, i, depth)
	case c == '[':
		return skipArray(b, i, depth)
	case c == 't':
		return skipLiteral(b, i, "true")
	case c == 'f':
		return skipLiteral(b, i, "false")
	case c == 'n':
		return skipLiteral(b, i, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return skipNumber(b, i)
	default:
		return i, synErr(i, fmt.Sprintf("unexpected character %q", c))
	}
}

func skipLiteral(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return i, synErr(i, "invalid literal")
	}
	return i + len(lit), nil
}

func skipNumber(b []byte, i int) (int, error) {
	start := i
	if b[i] == '-' {
		i++
	}
	if i >= len(b) {
		return i, synErr(start, "invalid number")
	}
	switch {
	case b[i] == '0':
		i++
	case b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return i, synErr(start, "invalid number")
	}
	if i < len(b) && b[i] == '.' {
		i++
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return i, synErr(start, "invalid number")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return i, synErr(start, "invalid number")
		}
	}
	return i, nil
}

// SWAR constants: eight bytes are tested at once for the bytes a string scan must stop at.
const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// plainRun returns how many leading bytes of b, in whole 8-byte words, are printable ASCII
// other than '"' and '\\', the bytes a string can be walked over without looking closer.
// Long opaque strings (encrypted reasoning, tool output) are where a turn's bytes are.
func plainRun(b []byte) int {
	n := 0
	for len(b)-n >= 8 {
		x := binary.LittleEndian.Uint64(b[n:])
		q := x ^ (lsb * '"')
		bs := x ^ (lsb * '\\')
		// A byte is zero after the xor where it matched; (v-lsb)&^v&msb flags zero bytes,
		// and (x-0x20*lsb)&^x flags bytes below 0x20. Non-ASCII sets msb itself.
		stop := ((q - lsb) &^ q) | ((bs - lsb) &^ bs) | ((x - lsb*0x20) &^ x) | x
		if stop&msb != 0 {
			return n
		}
		n += 8
	}
	return n
}

// skipString returns the offset past the closing quote of the string starting at b[i].
func skipString(b []byte, i int) (int, error) {
	start := i
	i++
	for i < len(b) {
		i += plainRun(b[i:])
		if i >= len(b) {
			break
		}
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
			// Invalid UTF-8 passes, as with encoding/json: the gateway forwards bytes, and the
			// upstream decides what it accepts.
			i++
		}
	}
	return i, synErr(start, "unterminated string")
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func skipObject(b []byte, i, depth int) (int, error) {
	if depth >= maxDepth {
		return i, synErr(i, "nesting too deep")
	}
	return scanObject(b, i, func(_ []byte, vs int) (int, error) { return skipValue(b, vs, depth+1) })
}

func skipArray(b []byte, i, depth int) (int, error) {
	if depth >= maxDepth {
		return i, synErr(i, "nesting too deep")
	}
	return scanArray(b, i, func(start int) (int, error) { return skipValue(b, start, depth+1) })
}

// scanArray walks the array at b[i] and calls fn for each element's offset; fn consumes the
// element and returns the offset past it.
func scanArray(b []byte, i int, fn func(start int) (int, error)) (int, error) {
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, nil
	}
	for {
		var err error
		if i, err = fn(i); err != nil {
			return i, err
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return i, synErr(i, "unterminated array")
		}
		if b[i] == ']' {
			return i + 1, nil
		}
		if b[i] != ',' {
			return i, synErr(i, "expected ',' or ']'")
		}
		i = skipWS(b, i+1)
	}
}

// scanObject walks the object at b[i] and calls fn for each member in order, with the key
// token and the offset of the value. fn consumes the value and returns the offset past it, so
// that a caller can look inside a value while validating it: every byte is walked once.
func scanObject(b []byte, i int, fn func(key []byte, valStart int) (int, error)) (int, error) {
	if i >= len(b) || b[i] != '{' {
		return i, ErrNotObject
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return i, synErr(i, "expected object key")
		}
		keyStart := i
		var err error
		if i, err = skipString(b, i); err != nil {
			return i, err
		}
		key := b[keyStart:i]
		i = skipWS(b, i)
		if i >= len(b) || b[i] != ':' {
			return i, synErr(i, "expected ':'")
		}
		if i, err = fn(key, skipWS(b, i+1)); err != nil {
			return i, err
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return i, synErr(i, "unterminated object")
		}
		if b[i] == '}' {
			return i + 1, nil
		}
		if b[i] != ',' {
			return i, synErr(i, "expected ',' or '}'")
		}
		i = skipWS(b, i+1)
	}
}

// unquote decodes a JSON string token (quotes included). Tokens without escapes are converted
// directly, which is the common case for keys, types and ids.
func unquote(tok []byte) string {
	if len(tok) < 2 {
		return ""
	}
	inner := tok[1 : len(tok)-1]
	if s, ok := interned[string(inner)]; ok {
		return s
	}
	for _, c := range inner {
		if c == '\\' {
			s, err := strconv.Unquote(jsonToGoQuote(tok))
			if err != nil {
				return string(inner)
			}
			return s
		}
	}
	return string(inner)
}

// interned holds the keys, item types and roles every frame repeats, so reading them does
// not allocate (a map lookup keyed by string(bytes) does not copy).
var interned = func() map[string]string {
	words := []string{
		"type", "model", "input", "previous_response_id", "store", "stream", "tools",
		"tool_choice", "parallel_tool_calls", "reasoning", "include", "prompt_cache_key", "text",
		"service_tier", "metadata", "client_metadata", "generate", "instructions", "id",
		"call_id", "role", "content", "output", "name", "arguments", "encrypted_content",
		"summary", "status", "response.create", "response.processed", "response.append",
		"message", "function_call", "function_call_output", "custom_tool_call",
		"custom_tool_call_output", "local_shell_call", "item_reference", "user", "assistant",
		"developer", "system", "input_text", "output_text", "completed", "in_progress",
		// Server event types, read once per relayed event.
		"error", "response.created", "response.in_progress", "response.completed",
		"response.failed", "response.incomplete", "response.done", "response.cancelled",
		"response.queued", "response.output_item.added", "response.output_item.done",
		"response.content_part.added", "response.content_part.done",
		"response.output_text.delta", "response.output_text.done",
		"response.output_text.annotation.added", "response.refusal.delta", "response.refusal.done",
		"response.function_call_arguments.delta", "response.function_call_arguments.done",
		"response.custom_tool_call_input.delta", "response.custom_tool_call_input.done",
		"response.reasoning_summary_part.added", "response.reasoning_summary_part.done",
		"response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
		"response.reasoning_text.delta", "response.reasoning_text.done",
	}
	m := make(map[string]string, len(words))
	for _, w := range words {
		m[w] = w
	}
	return m
}()

// keyIs reports whether a quoted key token equals name, without allocating for escape-free keys.
func keyIs(tok []byte, name string) bool {
	if len(tok) == len(name)+2 && string(tok[1:len(tok)-1]) == name {
		return true
	}
	// A key spelled with escapes (e.g. "\u0070revious_response_id") still names the field.
	for _, c := range tok {
		if c == '\\' {
			return unquote(tok) == name
		}
	}
	return false
}

// jsonToGoQuote rewrites the JSON escapes that Go's strconv does not accept (\/) so that
// strconv.Unquote can decode the rest, including surrogate pairs.
func jsonToGoQuote(tok []byte) string {
	out := make([]byte, 0, len(tok))
	for i := 0; i < len(tok); i++ {
		if tok[i] == '\\' && i+1 < len(tok) {
			if tok[i+1] == '/' {
				out = append(out, '/')
				i++
				continue
			}
			out = append(out, tok[i], tok[i+1])
			i++
			continue
		}
		out = append(out, tok[i])
	}
	return string(out)
}

// appendQuoted appends s as a JSON string.
func appendQuoted(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			dst = append(dst, c)
			i++
			continue
		}
		if c < utf8.RuneSelf {
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigit(c>>4), hexDigit(c&0xf))
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+n]...)
		}
		i += n
	}
	return append(dst, '"')
}

func hexDigit(c byte) byte { return "0123456789abcdef"[c&0xf] }
