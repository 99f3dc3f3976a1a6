package engine

import (
	"slices"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"

	"chainmend/responses"
)

// Modes of the normalizer (SPEC §3): repair fixes violations, strict rejects them.
const (
	ModeRepair = "repair"
	ModeStrict = "strict"
)

// Transports a turn can arrive on.
const (
	TransportWebSocket = "websocket"
	TransportHTTP      = "http"
)

// Turn is the turn context: the request and every fact the gateway knows about the session.
// Evaluation mutates Request, Expected (clear_anchor) and Error.Class (classify); everything
// else is read-only. A Turn must not be shared between goroutines while it is evaluated.
type Turn struct {
	Request *responses.Request
	// Mode is ModeRepair or ModeStrict.
	Mode string
	// Transport is TransportWebSocket or TransportHTTP.
	Transport string
	// Number counts the turns of this client connection, from 1.
	Number int
	// Expected is the session anchor: the last response id of the session (connection
	// memory, else the store); "" when none.
	Expected string
	// Pending are the unanswered calls of Expected.
	Pending Pending
	// Cached is the id of the last response completed on the current upstream connection;
	// "" on a fresh connection.
	Cached string
	// Replay describes the session's replay transcript.
	Replay Replay
	// Previous is the previous turn's payload on this connection; nil when there is none.
	Previous *Previous
	// Error is the upstream error being recovered (on_upstream_error only).
	Error *UpstreamError
	// Recovery is the recovery state of the turn (on_upstream_error only).
	Recovery Recovery
	// Replayed is set once the replay action rewrote the request into a full create.
	Replayed bool
}

// Pending are the pending calls of a response.
type Pending struct {
	// Known is false when the store could not answer (miss, Redis down): rules must then
	// decide explicitly (SPEC R3).
	Known      bool
	ResponseID string
	Calls      []PendingCall
}

// PendingCall is one unanswered call: its id and its item type.
type PendingCall struct {
	ID   string
	Kind string
}

// Replay describes the replay transcript of the session (SPEC §6).
type Replay struct {
	// Available is true when a transcript exists.
	Available bool
	// LastResponseID is the response whose output items end the transcript.
	LastResponseID string
	// Trimmed is true when the transcript lost its oldest units to the byte cap.
	Trimmed bool
	// Items holds the transcript. When nil and Load is set, Load is called the first time
	// the replay action needs it, so turns that never replay never fetch it.
	Items []responses.Item
	Load  func() ([]responses.Item, error)
}

// Previous is what the gateway remembers of the previous turn on a connection.
type Previous struct {
	// FieldDigests are the previous request's non-input field digests.
	FieldDigests map[string]uint64
	// ItemKeys are the keys (responses.Item.Key) of the previous turn's full logical input:
	// its context, its input and its response's output items.
	ItemKeys []string

	// keySet indexes ItemKeys; built on first use and kept, since the next turns of the
	// connection ask again (a Previous is used by one turn at a time).
	keySet map[string]struct{}
}

func (p *Previous) keys() map[string]struct{} {
	if p.keySet == nil {
		p.keySet = make(map[string]struct{}, len(p.ItemKeys))
		for _, k := range p.ItemKeys {
			p.keySet[k] = struct{}{}
		}
	}
	return p.keySet
}

// UpstreamError is the upstream's rejection of a turn.
type UpstreamError struct {
	Status  int
	Type    string
	Code    string
	Message string
	Param   string
	// Transport is true for a transport failure (closed connection, connection limit)
	// rather than an error frame.
	Transport bool
	// Class is set by the classify action.
	Class string
}

// Recovery is the recovery state of a turn.
type Recovery struct {
	Enabled bool
	// Attempted is true once a recovery was tried in this turn.
	Attempted bool
	// ClientWritten is true once anything of this turn reached the client.
	ClientWritten bool
}

// variable declares one name of the turn context.
type variable struct {
	name string
	typ  *cel.Type
	// size is a static size hint (list length, string length) for cost estimation.
	size uint64
	// errorOnly variables exist only where an upstream error is being recovered.
	errorOnly bool
	doc       string
}

// Size hints for cost estimation: generous bounds of what a real turn carries.
const (
	hintIDList  = 256
	hintItems   = 4096
	hintFields  = 64
	hintString  = 8192
	hintIDChars = 256
)

// Variables of the turn context, as CEL sees them. Keep DOC.md-style text in doc: policyctl
// prints it.
var variables = []variable{
	{name: "request.type", typ: cel.StringType, size: hintIDChars, doc: "the frame type (response.create)"},
	{name: "request.model", typ: cel.StringType, size: hintIDChars, doc: "the model"},
	{name: "request.previous_response_id", typ: cel.StringType, size: hintIDChars, doc: `previous_response_id, "" when absent`},
	{name: "request.store", typ: cel.BoolType, doc: "store, true when absent"},
	{name: "request.store_disabled", typ: cel.BoolType, doc: "store:false is set"},
	{name: "request.generate", typ: cel.BoolType, doc: "generate, true when absent (false: a warm-up)"},
	{name: "request.has_input", typ: cel.BoolType, doc: "the request has an input field"},
	{name: "request.calls", typ: listOfStrings, size: hintIDList, doc: "call ids of call items in the input"},
	{name: "request.outputs", typ: listOfStrings, size: hintIDList, doc: "call ids of output items in the input"},
	{name: "request.unanswered_calls", typ: listOfStrings, size: hintIDList, doc: "calls in the input without an output in the input"},
	{name: "request.orphan_outputs", typ: listOfStrings, size: hintIDList, doc: "outputs whose call is not in the input"},
	{name: "request.duplicate_outputs", typ: listOfStrings, size: hintIDList, doc: "call ids answered more than once"},
	{name: "request.roles", typ: listOfStrings, size: hintItems, doc: "roles of the input's messages, in order"},
	{name: "request.item_types", typ: listOfStrings, size: hintItems, doc: "types of the input items, in order"},
	{name: "request.fields", typ: listOfStrings, size: hintFields, doc: "top-level field names"},
	{name: "request.changed_fields", typ: listOfStrings, size: hintFields, doc: "top-level fields (input excluded) that differ from the previous turn's"},
	{name: "request.edits_history", typ: cel.BoolType, doc: "the input repeats items of the previous turn's context but does not extend it"},
	{name: "turn.mode", typ: cel.StringType, size: 16, doc: `"repair" or "strict"`},
	{name: "turn.transport", typ: cel.StringType, size: 16, doc: `"websocket" or "http"`},
	{name: "turn.number", typ: cel.IntType, doc: "turn number on this client connection, from 1"},
	{name: "turn.replayed", typ: cel.BoolType, doc: "the replay action already rewrote this request"},
	{name: "session.expected", typ: cel.StringType, size: hintIDChars, doc: `the session anchor (last response id), "" when none`},
	{name: "pending.known", typ: cel.BoolType, doc: "the pending calls of session.expected are known"},
	{name: "pending.response_id", typ: cel.StringType, size: hintIDChars, doc: "the response the pending calls belong to"},
	{name: "pending.calls", typ: listOfStrings, size: hintIDList, doc: "pending call ids"},
	{name: "pending.kinds", typ: cel.MapType(cel.StringType, cel.StringType), size: hintIDList, doc: "pending call id → call item type"},
	{name: "replay.available", typ: cel.BoolType, doc: "a replay transcript exists"},
	{name: "replay.complete", typ: cel.BoolType, doc: "the transcript ends with the output of request.previous_response_id"},
	{name: "replay.last_response_id", typ: cel.StringType, size: hintIDChars, doc: "the response whose output ends the transcript"},
	{name: "replay.trimmed", typ: cel.BoolType, doc: "the transcript lost its oldest units to the byte cap"},
	{name: "upstream.cached", typ: cel.StringType, size: hintIDChars, doc: `last response completed on the current upstream connection, "" when fresh`},
	{name: "upstream.fresh", typ: cel.BoolType, doc: "the upstream connection has completed no response yet"},
	{name: "previous.present", typ: cel.BoolType, doc: "the previous turn's payload is known on this connection"},
	{name: "error.status", typ: cel.IntType, errorOnly: true, doc: "upstream HTTP-style status"},
	{name: "error.type", typ: cel.StringType, size: hintIDChars, errorOnly: true, doc: "upstream error type"},
	{name: "error.code", typ: cel.StringType, size: hintIDChars, errorOnly: true, doc: "upstream error code"},
	{name: "error.message", typ: cel.StringType, size: hintString, errorOnly: true, doc: "upstream error message"},
	{name: "error.param", typ: cel.StringType, size: hintIDChars, errorOnly: true, doc: "upstream error param"},
	{name: "error.transport", typ: cel.BoolType, errorOnly: true, doc: "a transport failure, not an error frame"},
	{name: "error.class", typ: cel.StringType, size: hintIDChars, errorOnly: true, doc: "the class set by classify"},
	{name: "recovery.enabled", typ: cel.BoolType, errorOnly: true, doc: "recovery is enabled"},
	{name: "recovery.attempted", typ: cel.BoolType, errorOnly: true, doc: "a recovery was already tried in this turn"},
	{name: "recovery.client_written", typ: cel.BoolType, errorOnly: true, doc: "something of this turn already reached the client"},
}

// Variables returns the names, types and meaning of the turn context, for documentation.
func Variables() [][3]string {
	out := make([][3]string, 0, len(variables))
	for _, v := range variables {
		out = append(out, [3]string{v.name, v.typ.String(), v.doc})
	}
	return out
}

var variableByName = func() map[string]*variable {
	m := make(map[string]*variable, len(variables))
	for i := range variables {
		m[variables[i].name] = &variables[i]
	}
	return m
}()

// activation resolves context names lazily against the live turn, caching what it derived
// until the request changes.
type activation struct {
	t       *Turn
	version uint64
	valid   bool
	// within is true while every sized value is within its static size hint.
	within bool
	prev   ref.Val
	facts  *responses.Facts
	// cache holds resolved values by variable index until the request or the turn changes
	// (invalidate): rules read the same few names over and over, and boxing a Go string
	// into a CEL value allocates.
	cache []ref.Val
}

// invalidate forgets every cached value; actions call it after changing the turn.
func (a *activation) invalidate() {
	a.valid = false
}

var _ interpreter.Activation = (*activation)(nil)

func (a *activation) Parent() interpreter.Activation { return nil }

func (a *activation) refresh() {
	if a.valid && a.version == a.t.Request.Version() {
		return
	}
	a.valid = true
	a.version = a.t.Request.Version()
	a.prev = nil
	a.facts = nil
	if a.cache == nil {
		a.cache = make([]ref.Val, len(variables))
	}
	clear(a.cache)
	a.within = a.checkHints()
}

// withinHints reports whether the static cost estimates bound this turn's evaluation.
func (a *activation) withinHints() bool {
	a.refresh()
	return a.within
}

func (a *activation) checkHints() bool {
	t, r := a.t, a.t.Request
	f := r.Facts()
	a.facts = f
	if len(f.Calls) > hintIDList || len(f.Outputs) > hintIDList || len(f.Types) > hintItems ||
		len(t.Pending.Calls) > hintIDList || r.NumFields() > hintFields {
		return false
	}
	for _, s := range [...]string{r.PreviousResponseID(), r.Type(), r.String("model"), t.Expected,
		t.Pending.ResponseID, t.Replay.LastResponseID, t.Cached} {
		if len(s) > hintIDChars {
			return false
		}
	}
	for _, c := range t.Pending.Calls {
		if len(c.ID) > hintIDChars || len(c.Kind) > hintIDChars {
			return false
		}
	}
	for i := range r.Items() {
		it := &r.Items()[i]
		if len(it.CallID) > hintIDChars || len(it.Role) > hintIDChars || len(it.Type) > hintIDChars {
			return false
		}
	}
	if e := t.Error; e != nil {
		if len(e.Message) > hintString || len(e.Code) > hintIDChars || len(e.Type) > hintIDChars ||
			len(e.Param) > hintIDChars || len(e.Class) > hintIDChars {
			return false
		}
	}
	return true
}

func (a *activation) list(f func(*responses.Facts) []string) ref.Val {
	if a.facts == nil {
		a.facts = a.t.Request.Facts()
	}
	return stringList(f(a.facts))
}

func (a *activation) prevID() ref.Val {
	if a.prev == nil {
		a.prev = types.String(a.t.Request.PreviousResponseID())
	}
	return a.prev
}

var variableIndex = func() map[string]int {
	m := make(map[string]int, len(variables))
	for i, v := range variables {
		m[v.name] = i
	}
	return m
}()

var emptyList = types.NewRefValList(types.DefaultTypeAdapter, nil)

// stringList boxes each element once: CEL's own string list boxes on every Get, and list
// membership tests call Get a lot.
func stringList(s []string) ref.Val {
	if len(s) == 0 {
		return emptyList
	}
	vals := make([]ref.Val, len(s))
	for i, e := range s {
		vals[i] = types.String(e)
	}
	return types.NewRefValList(types.DefaultTypeAdapter, vals)
}

func boolVal(b bool) ref.Val {
	if b {
		return types.True
	}
	return types.False
}

// ResolveName implements interpreter.Activation.
func (a *activation) ResolveName(name string) (any, bool) {
	idx, ok := variableIndex[name]
	if !ok {
		return nil, false
	}
	a.refresh()
	if v := a.cache[idx]; v != nil {
		return v, true
	}
	v, ok := a.resolve(name)
	if ok {
		a.cache[idx] = v
	}
	return v, ok
}

func (a *activation) resolve(name string) (ref.Val, bool) {
	t := a.t
	r := t.Request
	switch name {
	case "request.type":
		return types.String(r.Type()), true
	case "request.model":
		return types.String(r.String("model")), true
	case "request.previous_response_id":
		return a.prevID(), true
	case "request.store":
		v, ok := r.Bool("store")
		return boolVal(!ok || v), true
	case "request.store_disabled":
		return boolVal(r.StoreDisabled()), true
	case "request.generate":
		return boolVal(r.Generate()), true
	case "request.has_input":
		return boolVal(r.HasInput()), true
	case "request.calls":
		return a.list(func(f *responses.Facts) []string { return f.Calls }), true
	case "request.outputs":
		return a.list(func(f *responses.Facts) []string { return f.Outputs }), true
	case "request.unanswered_calls":
		return a.list(func(f *responses.Facts) []string { return f.Unanswered }), true
	case "request.orphan_outputs":
		return a.list(func(f *responses.Facts) []string { return f.Orphans }), true
	case "request.duplicate_outputs":
		return a.list(func(f *responses.Facts) []string { return f.Duplicates }), true
	case "request.roles":
		return a.list(func(f *responses.Facts) []string { return f.Roles }), true
	case "request.item_types":
		return a.list(func(f *responses.Facts) []string { return f.Types }), true
	case "request.fields":
		return stringList(r.Keys()), true
	case "request.changed_fields":
		return stringList(changedFields(r, t.Previous)), true
	case "request.edits_history":
		return boolVal(editsHistory(r, t.Previous)), true
	case "turn.mode":
		return types.String(t.Mode), true
	case "turn.transport":
		return types.String(t.Transport), true
	case "turn.number":
		return types.Int(t.Number), true
	case "turn.replayed":
		return boolVal(t.Replayed), true
	case "session.expected":
		return types.String(t.Expected), true
	case "pending.known":
		return boolVal(t.Pending.Known), true
	case "pending.response_id":
		return types.String(t.Pending.ResponseID), true
	case "pending.calls":
		ids := make([]string, len(t.Pending.Calls))
		for i, c := range t.Pending.Calls {
			ids[i] = c.ID
		}
		return stringList(ids), true
	case "pending.kinds":
		m := make(map[string]string, len(t.Pending.Calls))
		for _, c := range t.Pending.Calls {
			m[c.ID] = c.Kind
		}
		return types.NewStringStringMap(types.DefaultTypeAdapter, m), true
	case "replay.available":
		return boolVal(t.Replay.Available), true
	case "replay.complete":
		p := r.PreviousResponseID()
		return boolVal(t.Replay.Available && p != "" && t.Replay.LastResponseID == p), true
	case "replay.last_response_id":
		return types.String(t.Replay.LastResponseID), true
	case "replay.trimmed":
		return boolVal(t.Replay.Trimmed), true
	case "upstream.cached":
		return types.String(t.Cached), true
	case "upstream.fresh":
		return boolVal(t.Cached == ""), true
	case "previous.present":
		return boolVal(t.Previous != nil), true
	case "recovery.enabled":
		return boolVal(t.Recovery.Enabled), true
	case "recovery.attempted":
		return boolVal(t.Recovery.Attempted), true
	case "recovery.client_written":
		return boolVal(t.Recovery.ClientWritten), true
	}
	e := t.Error
	if e == nil {
		e = &UpstreamError{}
	}
	switch name {
	case "error.status":
		return types.Int(e.Status), true
	case "error.type":
		return types.String(e.Type), true
	case "error.code":
		return types.String(e.Code), true
	case "error.message":
		return types.String(e.Message), true
	case "error.param":
		return types.String(e.Param), true
	case "error.transport":
		return boolVal(e.Transport), true
	case "error.class":
		return types.String(e.Class), true
	}
	return nil, false
}

// changedFields lists the top-level fields, input excluded, whose bytes differ from the
// previous turn's. Which of them matter is the policy's decision.
func changedFields(r *responses.Request, prev *Previous) []string {
	if prev == nil {
		return nil
	}
	cur := r.FieldDigests()
	var out []string
	for k, v := range cur {
		if pv, ok := prev.FieldDigests[k]; !ok || pv != v {
			out = append(out, k)
		}
	}
	for k := range prev.FieldDigests {
		if _, ok := cur[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// editsHistory reports whether the input repeats items of the previous turn's context
// without extending it: a client that resent an edited history while chaining.
func editsHistory(r *responses.Request, prev *Previous) bool {
	if prev == nil || len(prev.ItemKeys) == 0 {
		return false
	}
	items := r.Items()
	known := prev.keys()
	// Items with an identity (an id or a call id) show that the client resent the previous
	// context. Items without one only count when the input starts where the previous context
	// started: two identical id-less messages ("continue", twice) are new input.
	repeats := len(items) > 1 && items[0].Key() == prev.ItemKeys[0]
	for i := range items {
		if repeats {
			break
		}
		if items[i].ID == "" && items[i].CallID == "" {
			continue
		}
		if _, ok := known[items[i].Key()]; ok {
			repeats = true
			break
		}
	}
	if !repeats {
		return false
	}
	if len(items) < len(prev.ItemKeys) {
		return true
	}
	for i, k := range prev.ItemKeys {
		if items[i].Key() != k {
			return true
		}
	}
	return false
}
