package responses

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"github.com/cespare/xxhash/v2"
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

// stopBits flags (with its high bit) each byte of x that is '"', '\\' or below 0x20. A byte
// is zero after the xor where it matched; (v-lsb)&^v&msb flags zero bytes and
// (x-0x20*lsb)&^x&msb bytes below 0x20. A borrow only starts at a flagged byte, so bytes above
// the lowest flagged one may be flagged wrongly but the lowest is exact; bytes with the high
// bit set are never flagged.
func stopBits(x uint64) uint64 {
	q := x ^ (lsb * '"')
	bs := x ^ (lsb * '\\')
	return (((q - lsb) &^ q) | ((bs - lsb) &^ bs) | ((x - lsb*0x20) &^ x)) & msb
}

// skipString returns the offset past the closing quote of the string starting at b[i].
func skipString(b []byte, i int) (int, error) {
	start := i
	i++
	for i < len(b) {
		// Eight bytes at a time up to the first that needs a look ('"', '\\', a control
		// character), two words a round while neither needs one: long opaque strings
		// (encrypted reasoning, tool output) are where a turn's bytes are. Non-ASCII bytes
		// pass as they are. Inlined here, so text with an escape every line pays no call per
		// escape.
		found := false
		for i+16 <= len(b) {
			s0 := stopBits(binary.LittleEndian.Uint64(b[i : i+8]))
			s1 := stopBits(binary.LittleEndian.Uint64(b[i+8 : i+16]))
			if s0|s1 != 0 {
				if s0 != 0 {
					i += bits.TrailingZeros64(s0) >> 3
				} else {
					i += 8 + bits.TrailingZeros64(s1)>>3
				}
				found = true
				break
			}
			i += 16
		}
		if !found && i+8 <= len(b) {
			s := stopBits(binary.LittleEndian.Uint64(b[i : i+8]))
			if s == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(s) >> 3
		}
		if i >= len(b) {
			break // the two-word loop ran to the end
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

// unquoteWord is unquote for the short words a frame repeats that are not known in advance
// (lane names, event and item types of a newer API, reasons): an escape-free one is read
// through words, so that reading it again does not allocate.
func unquoteWord(tok []byte) string {
	if len(tok) < 2 || hasEscape(tok) {
		return unquote(tok)
	}
	return word(tok[1 : len(tok)-1])
}

// maxWord is the longest string word keeps.
const maxWord = 64

// words is a direct-mapped cache of strings read from frames that interned does not hold. A
// slot holds the last string that hashed to it; a miss costs what string(b) costs and a
// little more, so hostile input gains nothing by filling it.
var words [256]atomic.Pointer[string]

// word returns string(b), without allocating when b is a known word or one seen lately.
func word(b []byte) string {
	if s, ok := interned[string(b)]; ok {
		return s
	}
	if len(b) == 0 || len(b) > maxWord {
		return string(b)
	}
	slot := &words[xxhash.Sum64(b)%uint64(len(words))]
	if p := slot.Load(); p != nil && *p == string(b) {
		return *p
	}
	s := string(b)
	slot.Store(&s)
	return s
}

// unquotePair decodes two string tokens (either may be nil, which reads as "") with one
// allocation for both when neither has escapes nor is a known word.
func unquotePair(a, b []byte) (string, string) {
	if len(a) < 2 || len(b) < 2 || hasEscape(a) || hasEscape(b) {
		return unquote(a), unquote(b)
	}
	ia, ib := a[1:len(a)-1], b[1:len(b)-1]
	if _, ok := interned[string(ia)]; ok {
		return unquote(a), unquote(b)
	}
	if _, ok := interned[string(ib)]; ok {
		return unquote(a), unquote(b)
	}
	var sb strings.Builder
	sb.Grow(len(ia) + len(ib))
	sb.Write(ia)
	sb.Write(ib)
	s := sb.String()
	return s[:len(ia)], s[len(ia):]
}

func hasEscape(tok []byte) bool { return bytes.IndexByte(tok, '\\') >= 0 }

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
		"incomplete", "failed", "cancelled", "queued", "max_output_tokens", "content_filter",
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

// quotedLen is len(appendQuoted(nil, s)).
func quotedLen(s string) int {
	n := 2
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c >= 0x20 && c != '"' && c != '\\':
				n++
			case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t':
				n += 2
			default:
				n += 6
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			n += 6
		} else {
			n += size
		}
		i += size
	}
	return n
}

func hexDigit(c byte) byte { return "0123456789abcdef"[c&0xf] }
