// Package responses is the wire model of the OpenAI Responses API as the gateway needs it:
// a byte-preserving view of a response.create frame (top-level fields and input items with
// their kinds and call ids), mutations applied as byte patches, and the protocol facts that
// tie calls to their outputs. It knows nothing of policies, stores or sockets.
package responses

import (
	"errors"
	"slices"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// Item types that matter to the pairing rule (SPEC §2).
const (
	TypeMessage              = "message"
	TypeReasoning            = "reasoning"
	TypeFunctionCall         = "function_call"
	TypeFunctionCallOutput   = "function_call_output"
	TypeCustomToolCall       = "custom_tool_call"
	TypeCustomToolCallOutput = "custom_tool_call_output"
	TypeLocalShellCall       = "local_shell_call"
	TypeLocalShellCallOutput = "local_shell_call_output"
	TypeItemReference        = "item_reference"
)

// IsCall reports whether an item type is a tool call that needs exactly one output.
func IsCall(t string) bool {
	return t == TypeFunctionCall || t == TypeCustomToolCall || t == TypeLocalShellCall
}

// IsOutput reports whether an item type answers a tool call. A local shell call is answered
// with function_call_output (what Codex sends), and the upstream also takes
// local_shell_call_output.
func IsOutput(t string) bool {
	return t == TypeFunctionCallOutput || t == TypeCustomToolCallOutput || t == TypeLocalShellCallOutput
}

// OutputTypeFor returns the output item type that answers a call of the given type.
// Local shell calls are answered with function_call_output, as the upstream expects.
func OutputTypeFor(callType string) string {
	if callType == TypeCustomToolCall {
		return TypeCustomToolCallOutput
	}
	return TypeFunctionCallOutput
}

// Item is one element of the input array: its exact bytes plus the few fields rules read.
// Raw is never modified; a mutated request builds new items instead.
type Item struct {
	Raw    []byte
	Type   string
	ID     string
	CallID string
	Role   string
	// EncryptedContent is true when the item carries a non-null encrypted_content.
	EncryptedContent bool
}

// IsCall reports whether the item is a tool call.
func (it *Item) IsCall() bool { return IsCall(it.Type) }

// IsOutput reports whether the item is a tool output.
func (it *Item) IsOutput() bool { return IsOutput(it.Type) }

// Key identifies an item across turns: by its id when it has one, by call id for calls and
// outputs, else by a digest of its bytes.
func (it *Item) Key() string {
	switch {
	case it.ID != "":
		return it.Type + ":" + it.ID
	case it.CallID != "":
		return it.Type + ":" + it.CallID
	default:
		// it.Type + "#" + the digest in 16 hex digits, in one allocation.
		var sb strings.Builder
		sb.Grow(len(it.Type) + 17)
		sb.WriteString(it.Type)
		var hex [17]byte
		hex[0] = '#'
		d := xxhash.Sum64(it.Raw)
		for i := 16; i > 0; i-- {
			hex[i] = hexDigit(byte(d))
			d >>= 4
		}
		sb.Write(hex[:])
		return sb.String()
	}
}

// ParseItem reads one input item. A non-object element is kept as an item with an empty type
// so that it passes through untouched.
func ParseItem(raw []byte) (Item, error) {
	var it Item
	end, err := parseItem(raw, skipWS(raw, 0), 0, func(v Item) { it = v })
	if err != nil {
		return Item{Raw: raw}, err
	}
	if skipWS(raw, end) != len(raw) {
		return Item{Raw: raw}, synErr(end, "trailing data after item")
	}
	it.Raw = raw
	return it, nil
}

// parseItem validates the item at b[i], reading its typed fields on the way, and hands it
// to add.
func parseItem(b []byte, i, depth int, add func(Item)) (int, error) {
	if i >= len(b) || b[i] != '{' {
		end, err := skipValue(b, i, depth)
		if err == nil {
			add(Item{Raw: b[i:end]})
		}
		return end, err
	}
	var it Item
	// The string fields are decoded once the item is read (the last of each counts), so that
	// an id and a call id can share one allocation.
	var typ, id, callID, role []byte
	end, err := scanObject(b, i, func(key []byte, vs int) (int, error) {
		ve, err := skipValue(b, vs, depth+1)
		if err != nil {
			return ve, err
		}
		val := b[vs:ve]
		isStr := val[0] == '"'
		switch {
		case keyIs(key, "type") && isStr:
			typ = val
		case keyIs(key, "id") && isStr:
			id = val
		case keyIs(key, "call_id") && isStr:
			callID = val
		case keyIs(key, "role") && isStr:
			role = val
		case keyIs(key, "encrypted_content"):
			it.EncryptedContent = string(val) != "null"
		}
		return ve, nil
	})
	if err != nil {
		return end, err
	}
	it.Type, it.Role = unquoteWord(typ), unquoteWord(role)
	it.ID, it.CallID = unquotePair(id, callID)
	// An "easy input message" ({"role":"user","content":…}) has no type; the API treats it
	// as a message.
	if it.Type == "" && it.Role != "" {
		it.Type = TypeMessage
	}
	it.Raw = b[i:end]
	add(it)
	return end, nil
}

// NewOutputItem builds an output item answering callID, of the type that matches callType.
func NewOutputItem(callType, callID, output string) Item {
	t := OutputTypeFor(callType)
	raw := make([]byte, 0, 64+len(callID)+len(output))
	raw = append(raw, `{"type":`...)
	raw = appendQuoted(raw, t)
	raw = append(raw, `,"call_id":`...)
	raw = appendQuoted(raw, callID)
	raw = append(raw, `,"output":`...)
	raw = appendQuoted(raw, output)
	raw = append(raw, '}')
	return Item{Raw: raw, Type: t, CallID: callID}
}

// NewCreate builds the response.create a server acted on without a client frame (a steer's
// successor): input chained to previous. Items keep their bytes.
func NewCreate(previous string, input []Item) *Request {
	n := 80 + len(previous)
	for i := range input {
		n += len(input[i].Raw) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, `{"type":"response.create"`...)
	if previous != "" {
		b = append(b, `,"previous_response_id":`...)
		b = appendQuoted(b, previous)
	}
	b = append(b, `,"input":[`...)
	for i := range input {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, input[i].Raw...)
	}
	b = append(b, "]}"...)
	r, err := Parse(b)
	if err != nil {
		// Items came from parsed frames; only a caller's hand-made item can fail here.
		r, _ = Parse([]byte(`{"type":"response.create","input":[]}`))
	}
	return r
}

// field is one top-level member. member holds the original `"key": value` text when it was
// not changed, so untouched fields go out byte for byte.
type field struct {
	key     string
	member  []byte
	val     []byte
	deleted bool
}

// Request is a byte-preserving view of a response.create frame (or an HTTP request body).
// A Request is not safe for concurrent mutation.
type Request struct {
	raw    []byte
	fields []field
	items  []Item
	// inputField is the index of the last "input" member (the one a JSON decoder keeps), or -1.
	inputField int
	// inputArray is false when input is absent or a string.
	inputArray bool
	dirty      bool
	itemsDirty bool
	version    uint64
	facts      *Facts
}

// ErrTooDeep is wrapped by Parse errors caused by excessive nesting.
var ErrTooDeep = errors.New("nesting too deep")

// Parse reads a response.create frame. Opaque content is validated but not decoded.
func Parse(frame []byte) (*Request, error) {
	r := &Request{raw: frame, inputField: -1}
	start := skipWS(frame, 0)
	if start >= len(frame) {
		return nil, synErr(start, "empty frame")
	}
	if frame[start] != '{' {
		if _, err := skipValue(frame, start, 0); err != nil {
			return nil, err
		}
		return nil, ErrNotObject
	}
	r.fields = make([]field, 0, 20)
	end, err := scanObject(frame, start, func(keyTok []byte, vs int) (int, error) {
		key := unquote(keyTok)
		var ve int
		var err error
		if key == "input" {
			ve, err = r.parseInput(frame, vs)
		} else {
			ve, err = skipValue(frame, vs, 1)
		}
		if err != nil {
			return ve, err
		}
		// keyTok is a sub-slice of frame, so its offset is the difference of capacities.
		keyStart := cap(frame) - cap(keyTok)
		r.fields = append(r.fields, field{key: key, member: frame[keyStart:ve], val: frame[vs:ve]})
		if key == "input" {
			r.inputField = len(r.fields) - 1
		}
		return ve, nil
	})
	if err != nil {
		return nil, err
	}
	if skipWS(frame, end) != len(frame) {
		return nil, synErr(end, "trailing data after object")
	}
	return r, nil
}

// parseInput reads the input value at b[i]: an array is split into items while it is
// validated; anything else (a string input) is only validated.
func (r *Request) parseInput(b []byte, i int) (int, error) {
	r.items = r.items[:0]
	r.inputArray = false
	if i >= len(b) || b[i] != '[' {
		return skipValue(b, i, 1)
	}
	r.inputArray = true
	if r.items == nil {
		r.items = make([]Item, 0, 8)
	}
	add := func(it Item) { r.items = append(r.items, it) }
	return scanArray(b, i, func(start int) (int, error) { return parseItem(b, start, 2, add) })
}

// Raw returns the frame as it was parsed.
func (r *Request) Raw() []byte { return r.raw }

// Modified reports whether any mutation was applied.
func (r *Request) Modified() bool { return r.dirty }

// Version changes after every mutation; callers cache derived values against it.
func (r *Request) Version() uint64 { return r.version }

func (r *Request) lastField(key string) *field {
	for i := len(r.fields) - 1; i >= 0; i-- {
		if !r.fields[i].deleted && r.fields[i].key == key {
			return &r.fields[i]
		}
	}
	return nil
}

// Field returns the raw JSON value of a top-level field (the last one if duplicated).
func (r *Request) Field(key string) ([]byte, bool) {
	if f := r.lastField(key); f != nil {
		return f.val, true
	}
	return nil, false
}

// String returns a top-level string field, or "" when absent or not a string.
func (r *Request) String(key string) string {
	v, ok := r.Field(key)
	if !ok || len(v) == 0 || v[0] != '"' {
		return ""
	}
	return unquote(v)
}

// Bool returns a top-level boolean field and whether it was present as a boolean.
func (r *Request) Bool(key string) (value, present bool) {
	v, ok := r.Field(key)
	if !ok {
		return false, false
	}
	switch string(v) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

// Type returns the frame's "type" field.
func (r *Request) Type() string { return r.String("type") }

// PreviousResponseID returns previous_response_id, or "" when absent or null.
func (r *Request) PreviousResponseID() string { return r.String("previous_response_id") }

// StoreDisabled reports whether the request carries store:false.
func (r *Request) StoreDisabled() bool {
	v, ok := r.Bool("store")
	return ok && !v
}

// Generate reports the generate flag; absent means true.
func (r *Request) Generate() bool {
	v, ok := r.Bool("generate")
	return !ok || v
}

// Items returns the input items. The slice must not be modified; use the mutation methods.
func (r *Request) Items() []Item { return r.items }

// HasInput reports whether the request has an input field.
func (r *Request) HasInput() bool { return r.inputField >= 0 }

// NumFields returns the number of top-level fields, duplicates included.
func (r *Request) NumFields() int {
	n := 0
	for i := range r.fields {
		if !r.fields[i].deleted {
			n++
		}
	}
	return n
}

// Keys returns the top-level field names in order, duplicates included.
func (r *Request) Keys() []string {
	keys := make([]string, 0, len(r.fields))
	for _, f := range r.fields {
		if !f.deleted {
			keys = append(keys, f.key)
		}
	}
	return keys
}

// FieldDigests returns a digest of every top-level field except input, keyed by name, so a
// later turn can tell which non-input fields changed without keeping their bytes.
func (r *Request) FieldDigests() map[string]uint64 {
	d := make(map[string]uint64, len(r.fields))
	for _, f := range r.fields {
		if f.deleted || f.key == "input" {
			continue
		}
		d[f.key] = xxhash.Sum64(f.val)
	}
	return d
}

func (r *Request) touch() {
	r.dirty = true
	r.version++
	r.facts = nil
}

// SetString sets a top-level string field. Duplicates are collapsed into one.
func (r *Request) SetString(key, value string) {
	val := appendQuoted(nil, value)
	kept := false
	for i := len(r.fields) - 1; i >= 0; i-- {
		f := &r.fields[i]
		if f.deleted || f.key != key {
			continue
		}
		if !kept {
			f.val, f.member = val, nil
			kept = true
			continue
		}
		f.deleted = true
	}
	if !kept {
		r.fields = append(r.fields, field{key: key, val: val})
	}
	r.touch()
}

// Delete removes every occurrence of a top-level field and reports whether one existed.
func (r *Request) Delete(key string) bool {
	found := false
	for i := range r.fields {
		if !r.fields[i].deleted && r.fields[i].key == key {
			r.fields[i].deleted = true
			found = true
		}
	}
	if found {
		if key == "input" {
			r.inputField, r.inputArray, r.items = -1, false, nil
		}
		r.touch()
	}
	return found
}

func (r *Request) itemsChanged() {
	if r.inputField < 0 {
		r.fields = append(r.fields, field{key: "input"})
		r.inputField = len(r.fields) - 1
	}
	for i := range r.fields {
		if i != r.inputField && r.fields[i].key == "input" {
			r.fields[i].deleted = true
		}
	}
	r.inputArray = true
	r.itemsDirty = true
	r.touch()
}

// InsertItems inserts items before index at (clamped to the input's bounds).
func (r *Request) InsertItems(at int, items ...Item) {
	if len(items) == 0 {
		return
	}
	at = max(0, min(at, len(r.items)))
	r.items = slices.Insert(slices.Clip(r.items), at, items...)
	r.itemsChanged()
}

// RemoveItems removes the items for which drop returns true and returns how many it removed.
func (r *Request) RemoveItems(drop func(*Item) bool) int {
	kept := make([]Item, 0, len(r.items))
	for i := range r.items {
		if !drop(&r.items[i]) {
			kept = append(kept, r.items[i])
		}
	}
	n := len(r.items) - len(kept)
	if n > 0 {
		r.items = kept
		r.itemsChanged()
	}
	return n
}

// ReplaceInput replaces the whole input array.
func (r *Request) ReplaceInput(items []Item) {
	r.items = slices.Clone(items)
	r.itemsChanged()
}

// Clone returns an independent view sharing the immutable bytes.
func (r *Request) Clone() *Request {
	c := *r
	c.fields = slices.Clone(r.fields)
	c.items = slices.Clone(r.items)
	c.facts = nil
	return &c
}

// Size returns the length of the encoded request without building it.
func (r *Request) Size() int {
	if !r.dirty {
		return len(r.raw)
	}
	n, first := 2, true
	for i := range r.fields {
		if r.fields[i].deleted {
			continue
		}
		if !first {
			n++
		}
		first = false
		n += r.fieldSize(i)
	}
	return n
}

// Bytes returns the encoded request. An unmodified request returns its original bytes;
// a modified one reuses every untouched member and item verbatim.
func (r *Request) Bytes() []byte {
	if !r.dirty {
		return r.raw
	}
	out := make([]byte, 0, r.Size())
	out = append(out, '{')
	first := true
	for i := range r.fields {
		if r.fields[i].deleted {
			continue
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		out = r.encodeField(out, i)
	}
	return append(out, '}')
}

// fieldSize is the length of what encodeField appends for field i.
func (r *Request) fieldSize(i int) int {
	f := &r.fields[i]
	switch {
	case f.deleted:
		return 0
	case i == r.inputField && r.itemsDirty:
		n := len(`"input":[]`)
		for j := range r.items {
			if j > 0 {
				n++
			}
			n += len(r.items[j].Raw)
		}
		return n
	case f.member != nil:
		return len(f.member)
	}
	return quotedLen(f.key) + 1 + len(f.val)
}

func (r *Request) encodeField(out []byte, i int) []byte {
	f := &r.fields[i]
	if f.deleted {
		return out
	}
	if i == r.inputField && r.itemsDirty {
		out = append(out, `"input":[`...)
		for j, it := range r.items {
			if j > 0 {
				out = append(out, ',')
			}
			out = append(out, it.Raw...)
		}
		return append(out, ']')
	}
	if f.member != nil {
		return append(out, f.member...)
	}
	out = appendQuoted(out, f.key)
	out = append(out, ':')
	return append(out, f.val...)
}
