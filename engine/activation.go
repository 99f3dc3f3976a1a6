package engine

import (
	"slices"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"

	"chainmend/responses"
)

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
	// keys and identified are the item keys of the request's input (request.item_keys,
	// request.identified_keys), derived on first use.
	keys, identified []string
	keysDone         bool
	// resp holds the facts of t.Response, derived on first use.
	resp *responseFacts
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

// Parent implements interpreter.Activation; the turn context has no parent.
func (a *activation) Parent() interpreter.Activation { return nil }

func (a *activation) refresh() {
	if a.valid && a.version == a.t.Request.Version() {
		return
	}
	a.valid = true
	a.version = a.t.Request.Version()
	a.prev = nil
	a.facts = nil
	a.keys, a.identified, a.keysDone = nil, nil, false
	a.resp = nil
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

// checkHints reports whether every sized value of the turn is within its static size hint.
// The keys of previous.item_keys are only counted: they come from items the gateway parsed,
// and measuring 20,000 of them on every turn would cost more than the rules.
func (a *activation) checkHints() bool {
	t, r := a.t, a.t.Request
	f := r.Facts()
	a.facts = f
	if len(f.Calls) > hintIDList || len(f.Outputs) > hintIDList || len(f.Types) > hintItems ||
		len(t.Pending.Calls) > hintIDList || r.NumFields() > hintFields {
		return false
	}
	if t.Previous != nil && len(t.Previous.ItemKeys) > hintPrevKeys {
		return false
	}
	for _, s := range [...]string{r.PreviousResponseID(), r.Type(), r.String("model"), t.Anchor,
		t.Pending.ResponseID, t.Replay.LastResponseID, t.Cached, t.Lane} {
		if len(s) > hintIDChars {
			return false
		}
	}
	for _, c := range t.Pending.Calls {
		if len(c.ID) > hintIDChars || len(c.Kind) > hintIDChars {
			return false
		}
	}
	if !itemsWithinHints(r.Items()) {
		return false
	}
	if e := t.Error; e != nil {
		if len(e.Message) > hintString || len(e.Code) > hintIDChars || len(e.Type) > hintIDChars ||
			len(e.Param) > hintIDChars || len(e.Class) > hintIDChars {
			return false
		}
	}
	if resp := t.Response; resp != nil {
		if len(resp.ID) > hintIDChars || len(resp.Status) > hintIDChars || len(resp.Event) > hintIDChars ||
			len(resp.IncompleteReason) > hintIDChars || len(resp.InterruptMode) > hintIDChars ||
			len(resp.Items) > hintItems || !itemsWithinHints(resp.Items) ||
			!idsWithinHints(resp.Injected) || !idsWithinHints(resp.TerminalCalls) {
			return false
		}
	}
	return true
}

// idsWithinHints reports whether a list of ids fits hintIDList ids of hintIDChars each.
func idsWithinHints(ids []string) bool {
	if len(ids) > hintIDList {
		return false
	}
	for _, id := range ids {
		if len(id) > hintIDChars {
			return false
		}
	}
	return true
}

func itemsWithinHints(items []responses.Item) bool {
	for i := range items {
		it := &items[i]
		if len(it.CallID) > hintIDChars || len(it.ID) > hintIDChars || len(it.Role) > hintIDChars || len(it.Type) > hintIDChars {
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

// itemKeys derives request.item_keys and request.identified_keys together.
func (a *activation) itemKeys() (all, identified []string) {
	if !a.keysDone {
		a.keysDone = true
		items := a.t.Request.Items()
		a.keys = make([]string, len(items))
		for i := range items {
			a.keys[i] = items[i].Key()
			if items[i].ID != "" || items[i].CallID != "" {
				a.identified = append(a.identified, a.keys[i])
			}
		}
	}
	return a.keys, a.identified
}

func (a *activation) responseFacts() *responseFacts {
	if a.resp == nil {
		var items []responses.Item
		if a.t.Response != nil {
			items = a.t.Response.Items
		}
		a.resp = newResponseFacts(items)
	}
	return a.resp
}

// responseFacts are the pairing facts of a response's output items.
type responseFacts struct {
	calls, unanswered, types []string
}

func newResponseFacts(items []responses.Item) *responseFacts {
	f := &responseFacts{types: make([]string, 0, len(items))}
	var outputs []string
	for i := range items {
		it := &items[i]
		f.types = append(f.types, it.Type)
		switch {
		case it.IsCall() && it.CallID != "" && !slices.Contains(f.calls, it.CallID):
			f.calls = append(f.calls, it.CallID)
		case it.IsOutput():
			outputs = append(outputs, it.CallID)
		}
	}
	for _, c := range f.calls {
		if !slices.Contains(outputs, c) {
			f.unanswered = append(f.unanswered, c)
		}
	}
	return f
}

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

// lazyList wraps s without boxing it: an element becomes a CEL value only when read, and
// the domain helpers (starts_with, overlaps) compare the Go strings directly. It suits long
// lists that rules mostly pass to those helpers.
func lazyList(s []string) ref.Val {
	if len(s) == 0 {
		return emptyList
	}
	return types.NewStringList(types.DefaultTypeAdapter, s)
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
	case "request.item_keys":
		all, _ := a.itemKeys()
		return lazyList(all), true
	case "request.identified_keys":
		_, ids := a.itemKeys()
		return lazyList(ids), true
	case "request.fields":
		return stringList(r.Keys()), true
	case "request.changed_fields":
		return stringList(changedFields(r, t.Previous)), true
	case "turn.mode":
		return types.String(t.Mode), true
	case "turn.transport":
		return types.String(t.Transport), true
	case "turn.number":
		return types.Int(t.Number), true
	case "turn.lane":
		return types.String(t.Lane), true
	case "turn.replayed":
		return boolVal(t.Replayed), true
	case "session.anchor":
		return types.String(t.Anchor), true
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
	case "replay.known":
		return boolVal(t.Replay.Known), true
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
	case "previous.item_keys":
		if t.Previous == nil || len(t.Previous.ItemKeys) == 0 {
			return emptyList, true
		}
		return &keyList{Lister: types.NewStringList(types.DefaultTypeAdapter, t.Previous.ItemKeys), prev: t.Previous}, true
	case "recovery.enabled":
		return boolVal(t.Recovery.Enabled), true
	case "recovery.attempted":
		return boolVal(t.Recovery.Attempted), true
	case "recovery.client_written":
		return boolVal(t.Recovery.ClientWritten), true
	}
	if v, ok := a.resolveResponse(name); ok {
		return v, true
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
	case "error.timeout":
		return boolVal(e.Timeout), true
	case "error.class":
		return types.String(e.Class), true
	}
	return nil, false
}

func (a *activation) resolveResponse(name string) (ref.Val, bool) {
	resp := a.t.Response
	if resp == nil {
		resp = &Response{}
	}
	switch name {
	case "response.id":
		return types.String(resp.ID), true
	case "response.status":
		return types.String(resp.Status), true
	case "response.event":
		return types.String(resp.Event), true
	case "response.calls":
		return stringList(a.responseFacts().calls), true
	case "response.unanswered_calls":
		return stringList(a.responseFacts().unanswered), true
	case "response.item_types":
		return stringList(a.responseFacts().types), true
	case "response.incomplete_reason":
		return types.String(resp.IncompleteReason), true
	case "response.server_started":
		return boolVal(resp.ServerStarted), true
	case "response.injected_outputs":
		return stringList(resp.Injected), true
	case "response.interrupted":
		return boolVal(resp.Interrupted), true
	case "response.interrupt_mode":
		return types.String(resp.InterruptMode), true
	case "response.terminal_calls":
		return stringList(resp.TerminalCalls), true
	case "response.terminal_output":
		return boolVal(resp.TerminalOutput), true
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
