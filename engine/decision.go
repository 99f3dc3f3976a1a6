package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"strconv"
	"strings"
	"unsafe"

	"chainmend/responses"
)

// Decision records: the facts of a turn context without its content, as the decision log
// keeps them, and a turn context rebuilt from them, as policyctl replay evaluates it.

// TurnFacts are the facts of a turn context: everything its variables are derived from, and
// nothing else. There is no message text, tool output, call argument, encrypted content or
// credential in them: request items are their structure (type, id, call_id, role, key),
// request fields their names, digests and, for the few scalar fields that carry no content,
// their values.
type TurnFacts struct {
	Mode      string `json:"mode"`
	Transport string `json:"transport"`
	Number    int    `json:"number"`
	Lane      string `json:"lane,omitempty"`
	Anchor    string `json:"anchor,omitempty"`
	// Pending are the pending calls of Anchor.
	Pending  PendingFacts   `json:"pending"`
	Cached   string         `json:"cached,omitempty"`
	Replay   ReplayFacts    `json:"replay"`
	Replayed bool           `json:"replayed,omitempty"`
	Recovery RecoveryFacts  `json:"recovery"`
	Error    *ErrorFacts    `json:"error,omitempty"`
	Response *ResponseFacts `json:"response,omitempty"`
	Request  RequestFacts   `json:"request"`
	// Previous is nil when the previous turn's payload is unknown (previous.present false).
	Previous *PreviousFacts `json:"previous,omitempty"`
}

// PendingFacts are Pending with JSON names.
type PendingFacts struct {
	Known      bool               `json:"known"`
	ResponseID string             `json:"response_id,omitempty"`
	Calls      []PendingCallFacts `json:"calls,omitempty"`
}

// PendingCallFacts is one pending call: its id and its item type.
type PendingCallFacts struct {
	ID   string `json:"id"`
	Kind string `json:"kind"`
}

// ReplayFacts describe the replay transcript. Items is its structure, present only when a
// stage loaded it (the replay action); a transcript nobody loaded is not logged.
type ReplayFacts struct {
	Known          bool        `json:"known"`
	Available      bool        `json:"available,omitempty"`
	LastResponseID string      `json:"last_response_id,omitempty"`
	Trimmed        bool        `json:"trimmed,omitempty"`
	Items          []ItemFacts `json:"items,omitempty"`
}

// RecoveryFacts are Recovery with JSON names.
type RecoveryFacts struct {
	Enabled       bool `json:"enabled,omitempty"`
	Attempted     bool `json:"attempted,omitempty"`
	ClientWritten bool `json:"client_written,omitempty"`
}

// ErrorFacts are the upstream error of on_upstream_error. Message is the upstream's own
// wording (rules match it), with anything that looks like a credential masked.
type ErrorFacts struct {
	Status    int    `json:"status,omitempty"`
	Type      string `json:"type,omitempty"`
	Code      string `json:"code,omitempty"`
	Message   string `json:"message,omitempty"`
	Param     string `json:"param,omitempty"`
	Transport bool   `json:"transport,omitempty"`
	Timeout   bool   `json:"timeout,omitempty"`
	Class     string `json:"class,omitempty"`
}

// ResponseFacts are the response of post_response, its output items as structure.
type ResponseFacts struct {
	ID               string      `json:"id,omitempty"`
	Status           string      `json:"status,omitempty"`
	Event            string      `json:"event,omitempty"`
	Items            []ItemFacts `json:"items,omitempty"`
	IncompleteReason string      `json:"incomplete_reason,omitempty"`
	ServerStarted    bool        `json:"server_started,omitempty"`
	Injected         []string    `json:"injected,omitempty"`
	Interrupted      bool        `json:"interrupted,omitempty"`
	InterruptMode    string      `json:"interrupt_mode,omitempty"`
	TerminalCalls    []string    `json:"terminal_calls,omitempty"`
	TerminalOutput   bool        `json:"terminal_output,omitempty"`
}

// PreviousFacts are the previous turn's field digests (hex) and item keys.
type PreviousFacts struct {
	FieldDigests map[string]string `json:"field_digests,omitempty"`
	ItemKeys     []string          `json:"item_keys,omitempty"`
}

// RequestFacts are a request's structure: its top-level fields in order and its input items.
type RequestFacts struct {
	Fields []FieldFacts `json:"fields"`
	// Input is the JSON kind of the input field: "array", "string", "null" or "other"; ""
	// when there is none.
	Input string      `json:"input,omitempty"`
	Items []ItemFacts `json:"items,omitempty"`
}

// FieldFacts is one top-level field: its name, the digest of its value (what
// request.changed_fields compares) and, for scalars that carry no content (booleans,
// numbers, null, and the strings of recordedStrings), the value itself.
type FieldFacts struct {
	Name   string          `json:"name"`
	Value  json.RawMessage `json:"value,omitempty"`
	Digest string          `json:"digest,omitempty"`
}

// ItemFacts is one item's structure. Key is responses.Item.Key: for an item without id or
// call id it is a digest of the item's bytes, never the bytes.
type ItemFacts struct {
	Type      string `json:"type"`
	ID        string `json:"id,omitempty"`
	CallID    string `json:"call_id,omitempty"`
	Role      string `json:"role,omitempty"`
	Key       string `json:"key"`
	Encrypted bool   `json:"encrypted,omitempty"`
	// Made is a digest of an item the gateway made (the output insert_outputs added), so
	// that a replay tells an "aborted" output from a "cancelled" one without logging either.
	Made string `json:"made,omitempty"`
}

// EffectsFacts are an Outcome's Effects with JSON names.
type EffectsFacts struct {
	Anchor         *string          `json:"anchor,omitempty"`
	PutPending     *PendingPutFacts `json:"put_pending,omitempty"`
	DeletePending  []string         `json:"delete_pending,omitempty"`
	Transcript     string           `json:"transcript,omitempty"`
	UpstreamCached *string          `json:"upstream_cached,omitempty"`
}

// PendingPutFacts is a record_pending effect.
type PendingPutFacts struct {
	ResponseID string             `json:"response_id"`
	Calls      []PendingCallFacts `json:"calls"`
}

// recordedStrings are the top-level string fields whose values are logged: identifiers and
// settings, never text a person or a model wrote. Every other string is a digest only.
var recordedStrings = map[string]bool{
	"type": true, "model": true, "previous_response_id": true, "service_tier": true,
	"truncation": true, "tool_choice": true, "stream_id": true,
}

// maxErrorMessage bounds error.message in a record: the rules match phrases, not essays.
const maxErrorMessage = 2048

// FactsOf returns the facts of t as it is now. Called after a stage, they are what the
// stage left; the decision log works out the facts a stage began with from them (see
// gateway/decisionlog.go). A Turn without a Request gives facts without one.
func FactsOf(t *Turn) TurnFacts {
	f := TurnFacts{
		Mode: t.Mode, Transport: t.Transport, Number: t.Number, Lane: t.Lane, Anchor: t.Anchor,
		Pending: PendingFactsOf(t.Pending), Cached: t.Cached, Replayed: t.Replayed,
		Replay: ReplayFacts{Known: t.Replay.Known, Available: t.Replay.Available,
			LastResponseID: t.Replay.LastResponseID, Trimmed: t.Replay.Trimmed},
		Recovery: RecoveryFacts{Enabled: t.Recovery.Enabled, Attempted: t.Recovery.Attempted, ClientWritten: t.Recovery.ClientWritten},
	}
	if t.Replay.Items != nil {
		f.Replay.Items = itemFacts(t.Replay.Items, nil, nil)
	}
	if e := t.Error; e != nil {
		f.Error = &ErrorFacts{Status: e.Status, Type: e.Type, Code: e.Code, Message: ScrubMessage(e.Message),
			Param: e.Param, Transport: e.Transport, Timeout: e.Timeout, Class: e.Class}
	}
	if r := t.Response; r != nil {
		f.Response = &ResponseFacts{ID: r.ID, Status: r.Status, Event: r.Event, Items: itemFacts(r.Items, nil, nil),
			IncompleteReason: r.IncompleteReason, ServerStarted: r.ServerStarted, Injected: r.Injected,
			Interrupted: r.Interrupted, InterruptMode: r.InterruptMode, TerminalCalls: r.TerminalCalls,
			TerminalOutput: r.TerminalOutput}
	}
	if t.Request != nil {
		f.Request = RequestFactsOf(t.Request, t.Replay.Items)
	}
	if t.Previous != nil {
		f.Previous = PreviousFactsOf(t.Previous)
	}
	return f
}

// PendingFactsOf returns p's facts.
func PendingFactsOf(p Pending) PendingFacts {
	f := PendingFacts{Known: p.Known, ResponseID: p.ResponseID}
	if len(p.Calls) > 0 {
		f.Calls = make([]PendingCallFacts, len(p.Calls))
		for i, c := range p.Calls {
			f.Calls[i] = PendingCallFacts{ID: c.ID, Kind: c.Kind}
		}
	}
	return f
}

// Pending returns the Pending the facts describe.
func (f PendingFacts) Pending() Pending {
	p := Pending{Known: f.Known, ResponseID: f.ResponseID}
	if len(f.Calls) > 0 {
		p.Calls = make([]PendingCall, len(f.Calls))
		for i, c := range f.Calls {
			p.Calls[i] = PendingCall{ID: c.ID, Kind: c.Kind}
		}
	}
	return p
}

// PreviousFactsOf returns p's facts. ItemKeys shares p's slice, which is never changed
// below its length.
func PreviousFactsOf(p *Previous) *PreviousFacts {
	f := &PreviousFacts{ItemKeys: p.ItemKeys}
	if len(p.FieldDigests) > 0 {
		f.FieldDigests = make(map[string]string, len(p.FieldDigests))
		for k, d := range p.FieldDigests {
			f.FieldDigests[k] = hexDigest(d)
		}
	}
	return f
}

// EffectsFactsOf returns e's facts.
func EffectsFactsOf(e *Effects) EffectsFacts {
	f := EffectsFacts{Anchor: e.Anchor, DeletePending: e.DeletePending, UpstreamCached: e.UpstreamCached}
	if e.Transcript != TranscriptKeep {
		f.Transcript = e.Transcript.String()
	}
	if p := e.PutPending; p != nil {
		f.PutPending = &PendingPutFacts{ResponseID: p.ResponseID, Calls: []PendingCallFacts{}}
		for _, c := range p.Calls {
			f.PutPending.Calls = append(f.PutPending.Calls, PendingCallFacts{ID: c.ID, Kind: c.Kind})
		}
	}
	return f
}

// RequestFactsOf returns r's structure. An item that is neither part of the frame r was
// parsed from nor one of transcript (the loaded replay transcript) was made by the gateway
// (insert_outputs) and gets a Made digest.
func RequestFactsOf(r *responses.Request, transcript []responses.Item) RequestFacts {
	digests := r.FieldDigests()
	keys := r.Keys()
	f := RequestFacts{Fields: make([]FieldFacts, 0, len(keys)), Input: inputKind(r)}
	for _, k := range keys {
		if k == "input" {
			f.Fields = append(f.Fields, FieldFacts{Name: k})
			continue
		}
		ff := FieldFacts{Name: k, Digest: hexDigest(digests[k])}
		if v, ok := r.Field(k); ok && recordable(k, v) {
			ff.Value = json.RawMessage(bytes.Clone(v))
		}
		f.Fields = append(f.Fields, ff)
	}
	var inTranscript map[*byte]bool
	if len(transcript) > 0 {
		inTranscript = make(map[*byte]bool, len(transcript))
		for i := range transcript {
			if len(transcript[i].Raw) > 0 {
				inTranscript[&transcript[i].Raw[0]] = true
			}
		}
	}
	made := func(it *responses.Item) bool {
		return len(it.Raw) > 0 && !within(it.Raw, r.Raw()) && !inTranscript[&it.Raw[0]]
	}
	f.Items = itemFacts(r.Items(), made, nil)
	return f
}

// ParseRequestFacts returns the structure of the request frame holds: what a stage that
// changed its request began with, from the bytes the request was parsed from.
func ParseRequestFacts(frame []byte) (RequestFacts, error) {
	r, err := responses.Parse(frame)
	if err != nil {
		return RequestFacts{}, fmt.Errorf("parse request: %w", err)
	}
	return RequestFactsOf(r, nil), nil
}

// PreviousResponseID returns the request's previous_response_id as request.previous_response_id
// reads it: "" when absent or not a string.
func (f *RequestFacts) PreviousResponseID() string {
	v := ""
	for _, ff := range f.Fields {
		if ff.Name != "previous_response_id" {
			continue
		}
		v = ""
		var s string
		if json.Unmarshal(ff.Value, &s) == nil {
			v = s
		}
	}
	return v
}

func itemFacts(items []responses.Item, made func(*responses.Item) bool, orig map[*byte]ItemFacts) []ItemFacts {
	if items == nil {
		return nil
	}
	out := make([]ItemFacts, len(items))
	for i := range items {
		it := &items[i]
		if len(it.Raw) > 0 && orig != nil {
			if f, ok := orig[&it.Raw[0]]; ok {
				out[i] = f
				continue
			}
		}
		out[i] = ItemFacts{Type: it.Type, ID: it.ID, CallID: it.CallID, Role: it.Role, Key: it.Key(), Encrypted: it.EncryptedContent}
		if made != nil && made(it) {
			out[i].Made = madeDigest(it.Raw)
		}
	}
	return out
}

// within reports whether b lies inside frame's bytes. Parsed items are sub-slices of the
// frame they were parsed from, and the gateway makes new items in buffers of their own, so
// where an item's bytes live tells a client's item from one a rule added, without keeping
// a copy of either. It compares addresses only and never dereferences them.
func within(b, frame []byte) bool {
	if len(b) == 0 || len(frame) == 0 {
		return false
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	start := uintptr(unsafe.Pointer(unsafe.SliceData(frame)))
	return p >= start && p < start+uintptr(len(frame))
}

func inputKind(r *responses.Request) string {
	if !r.HasInput() {
		return ""
	}
	if len(r.Items()) > 0 {
		return "array"
	}
	v, _ := r.Field("input")
	v = bytes.TrimSpace(v)
	switch {
	case len(v) == 0 || v[0] == '[':
		// A rewritten input has no bytes of its own until it is encoded: an array.
		return "array"
	case v[0] == '"':
		return "string"
	case string(v) == "null":
		return "null"
	}
	return "other"
}

// recordable reports whether a top-level field's value may be logged: booleans, numbers and
// null always, strings only for recordedStrings.
func recordable(name string, v []byte) bool {
	v = bytes.TrimSpace(v)
	if len(v) == 0 {
		return false
	}
	switch c := v[0]; {
	case c == '"':
		return recordedStrings[name] && len(v) <= 2*hintIDChars
	case c == 't', c == 'f', c == 'n', c == '-', c >= '0' && c <= '9':
		return len(v) <= 64
	}
	return false
}

// hexDigest spells a digest as 16 hex digits; fmt would cost more than the rest of a stage's
// facts.
func hexDigest(d uint64) string {
	const digits = "0123456789abcdef"
	var b [16]byte
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = digits[d&0xf]
		d >>= 4
	}
	return string(b[:])
}

func madeDigest(raw []byte) string {
	h := fnv.New64a()
	_, _ = h.Write(raw)
	return hexDigest(h.Sum64())
}

// secretPattern matches what looks like a credential in an upstream error message: a bearer
// token, or an OpenAI-style key (the upstream echoes a masked one on a 401).
var secretPattern = regexp.MustCompile(`(?i)bearer\s+\S+|\b(sk|rk)-[A-Za-z0-9_*.\-]{6,}`)

// ScrubMessage masks what looks like a credential in an upstream error message and bounds
// its length; the phrases rules match ("previous response … not found") are left alone.
func ScrubMessage(s string) string {
	if s == "" {
		return s
	}
	s = secretPattern.ReplaceAllStringFunc(s, func(m string) string {
		if strings.HasPrefix(strings.ToLower(m), "bearer") {
			return m[:len("bearer")] + " [redacted]"
		}
		return "[redacted]"
	})
	if len(s) > maxErrorMessage {
		s = s[:maxErrorMessage]
	}
	return s
}

// errTranscriptNotLogged is what a rebuilt turn's transcript answers when the recorded
// stage never loaded it: a replay of a rule that now replays cannot know its items.
var errTranscriptNotLogged = errors.New("the transcript was not loaded when the turn was logged")

// Rebuilt is a turn context rebuilt from facts, for re-evaluating a logged stage against
// another policy set. Items are stubs with their logged structure; fields without a logged
// value are stubs whose digests keep request.changed_fields as it was.
type Rebuilt struct {
	Turn *Turn
	// version is the request's version as rebuilt: a stage that leaves it changed nothing.
	version uint64
	// orig maps each stub item, by the address of its bytes, to its logged facts, so that
	// the request a stage leaves reads in the logged keys and digests.
	orig map[*byte]ItemFacts
	// stubs maps a field name to the stub value that stands for its logged digest.
	stubs map[string]fieldStub
}

type fieldStub struct {
	value []byte
	facts FieldFacts
}

// Rebuild builds the turn context the facts describe.
func (f *TurnFacts) Rebuild() (*Rebuilt, error) {
	rb := &Rebuilt{orig: map[*byte]ItemFacts{}, stubs: map[string]fieldStub{}}
	req, err := rb.request(&f.Request)
	if err != nil {
		return nil, err
	}
	rb.version = req.Version()
	t := &Turn{
		Request: req, Mode: f.Mode, Transport: f.Transport, Number: f.Number, Lane: f.Lane,
		Anchor: f.Anchor, Pending: f.Pending.Pending(), Cached: f.Cached, Replayed: f.Replayed,
		Replay: Replay{Known: f.Replay.Known, Available: f.Replay.Available,
			LastResponseID: f.Replay.LastResponseID, Trimmed: f.Replay.Trimmed},
		Recovery: Recovery{Enabled: f.Recovery.Enabled, Attempted: f.Recovery.Attempted, ClientWritten: f.Recovery.ClientWritten},
	}
	if f.Replay.Items != nil {
		t.Replay.Items = rb.items(f.Replay.Items)
	} else if f.Replay.Available {
		t.Replay.Load = func() ([]responses.Item, error) { return nil, errTranscriptNotLogged }
	}
	if e := f.Error; e != nil {
		t.Error = &UpstreamError{Status: e.Status, Type: e.Type, Code: e.Code, Message: e.Message,
			Param: e.Param, Transport: e.Transport, Timeout: e.Timeout, Class: e.Class}
	}
	if r := f.Response; r != nil {
		t.Response = &Response{ID: r.ID, Status: r.Status, Event: r.Event, Items: rb.items(r.Items),
			IncompleteReason: r.IncompleteReason, ServerStarted: r.ServerStarted, Injected: r.Injected,
			Interrupted: r.Interrupted, InterruptMode: r.InterruptMode, TerminalCalls: r.TerminalCalls,
			TerminalOutput: r.TerminalOutput}
	}
	if p := f.Previous; p != nil {
		t.Previous = rb.previous(p, &f.Request, req.FieldDigests())
	}
	rb.Turn = t
	return rb, nil
}

// Changed reports whether the request differs from the one rebuilt.
func (rb *Rebuilt) Changed() bool { return rb.Turn.Request.Version() != rb.version }

// Request returns the structure of the rebuilt turn's request as it is now, in the logged
// keys and digests: a stub reads as the item or field it stands for, an item a rule made
// as RequestFactsOf would read it.
func (rb *Rebuilt) Request() RequestFacts {
	r := rb.Turn.Request
	digests := r.FieldDigests()
	keys := r.Keys()
	f := RequestFacts{Fields: make([]FieldFacts, 0, len(keys)), Input: inputKind(r)}
	for _, k := range keys {
		if k == "input" {
			f.Fields = append(f.Fields, FieldFacts{Name: k})
			continue
		}
		v, _ := r.Field(k)
		if s, ok := rb.stubs[k]; ok && bytes.Equal(v, s.value) {
			f.Fields = append(f.Fields, s.facts)
			continue
		}
		ff := FieldFacts{Name: k, Digest: hexDigest(digests[k])}
		if recordable(k, v) {
			ff.Value = json.RawMessage(bytes.Clone(v))
		}
		f.Fields = append(f.Fields, ff)
	}
	// Every item that is no stub was made by a rule of the replayed stage.
	f.Items = itemFacts(r.Items(), func(*responses.Item) bool { return true }, rb.orig)
	return f
}

// request builds the request: the logged fields in order (a stub for each value not
// logged), then the input as stub items.
func (rb *Rebuilt) request(rf *RequestFacts) (*responses.Request, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	hasInput := false
	for i, ff := range rf.Fields {
		if i > 0 {
			b.WriteByte(',')
		}
		name, err := json.Marshal(ff.Name)
		if err != nil {
			return nil, fmt.Errorf("field name %q: %w", ff.Name, err)
		}
		b.Write(name)
		b.WriteByte(':')
		switch {
		case ff.Name == "input":
			hasInput = true
			switch rf.Input {
			case "array", "":
				b.WriteString("[]")
			case "string":
				b.WriteString(`""`)
			case "null":
				b.WriteString("null")
			default:
				b.WriteString("{}")
			}
		case len(ff.Value) > 0:
			b.Write(ff.Value)
		default:
			stub := []byte(strconv.Quote("#" + ff.Digest))
			rb.stubs[ff.Name] = fieldStub{value: stub, facts: ff}
			b.Write(stub)
		}
	}
	b.WriteByte('}')
	req, err := responses.Parse(b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("rebuild request: %w", err)
	}
	if hasInput && len(rf.Items) > 0 {
		req.ReplaceInput(rb.items(rf.Items))
	}
	return req, nil
}

// items builds stub items. A stub's bytes name only its logged key, so an item keyed by a
// digest of its bytes gets the key stubKey(logged key), the same for every stub of that key
// (previous.item_keys is mapped alike).
func (rb *Rebuilt) items(facts []ItemFacts) []responses.Item {
	out := make([]responses.Item, len(facts))
	for i, f := range facts {
		raw := stubBytes(f.Key)
		out[i] = responses.Item{Raw: raw, Type: f.Type, ID: f.ID, CallID: f.CallID, Role: f.Role, EncryptedContent: f.Encrypted}
		rb.orig[&raw[0]] = f
	}
	return out
}

func stubBytes(key string) []byte {
	b, _ := json.Marshal(struct {
		Key string `json:"stub_key"`
	}{key})
	return b
}

// stubKey returns the key a stub item gets for a logged key: an id or call-id key is its
// own; a digest key ("type#…") becomes the digest key of the stub's bytes.
func stubKey(key string) string {
	i := strings.IndexByte(key, '#')
	if i < 0 || strings.IndexByte(key[:i], ':') >= 0 {
		return key
	}
	it := responses.Item{Type: key[:i], Raw: stubBytes(key)}
	return it.Key()
}

// previous rebuilds the previous turn's facts against the rebuilt request: keys as stubKey
// maps them, and each field digest equal to the logged current one becomes the rebuilt
// request's digest of that field, so that request.changed_fields reads as logged.
func (rb *Rebuilt) previous(p *PreviousFacts, rf *RequestFacts, rebuilt map[string]uint64) *Previous {
	out := &Previous{}
	if len(p.ItemKeys) > 0 {
		out.ItemKeys = make([]string, len(p.ItemKeys))
		for i, k := range p.ItemKeys {
			out.ItemKeys[i] = stubKey(k)
		}
	}
	current := map[string]string{}
	for _, ff := range rf.Fields {
		if ff.Name != "input" {
			current[ff.Name] = ff.Digest
		}
	}
	out.FieldDigests = make(map[string]uint64, len(p.FieldDigests))
	for k, h := range p.FieldDigests {
		d, err := strconv.ParseUint(h, 16, 64)
		if err != nil {
			// A digest that does not parse can equal nothing: the field reads as changed.
			d = 0
		}
		if cur, ok := current[k]; ok && cur == h {
			out.FieldDigests[k] = rebuilt[k]
			continue
		}
		if r, ok := rebuilt[k]; ok && r == d {
			d++
		}
		out.FieldDigests[k] = d
	}
	return out
}
