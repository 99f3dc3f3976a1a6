package engine

import (
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"

	"chainmend/responses"
)

// activation resolves the turn context against the live turn for one evaluation. A value is
// derived on first read and cached until what it depends on changes (resolver.deps): a
// change of the request version drops the request's values, an action drops the values of
// what it changed (changed), and the rest holds for the whole evaluation. Rules read the
// same few names over and over, and deriving a value allocates.
type activation struct {
	t *Turn
	// version is the request version the request-derived state belongs to; reqValid is
	// false until that state is set up.
	version  uint64
	reqValid bool
	// cache holds resolved values by variable index; filled says which slots hold one.
	cache  []ref.Val
	filled varSet

	// Request-derived state, reset with the version.
	facts *responses.Facts
	prev  string
	// prevDone is true once prev holds the request's previous_response_id.
	prevDone bool
	// keys and identified are the item keys of the request's input (request.item_keys,
	// request.identified_keys), derived on first use.
	keys, identified []string
	keysDone         bool

	// resp holds the pairing facts of t.Response, derived on first use.
	resp     responseCalls
	respDone bool

	// hints caches whether the turn is within its static size hints, in three parts that go
	// stale at different times (see withinHints).
	hints sizeHints

	// ids are the response ids boxed so far (see boxID).
	ids [4]ref.Val
}

// reset prepares a, released or new, for an evaluation of t.
func (a *activation) reset(t *Turn) {
	if a.cache == nil {
		a.cache = make([]ref.Val, len(variables))
	}
	a.t = t
}

// release drops every reference into the turn, so that a pooled activation keeps nothing
// of it alive, and keeps the cache's storage. Only the slots in use are cleared: clearing
// the whole cache costs more than a short stage.
func (a *activation) release() {
	a.filled.each(func(i int) { a.cache[i] = nil })
	*a = activation{cache: a.cache}
}

// changed drops the cached values that depend on d; actions call it after changing the turn.
func (a *activation) changed(d dep) {
	a.drop(dependents[d])
	a.hints.turnChanged(d)
}

// drop forgets the cached values of the variables in vs.
func (a *activation) drop(vs varSet) {
	stale := a.filled.and(vs)
	stale.each(func(i int) { a.cache[i] = nil })
	a.filled = a.filled.andNot(stale)
}

var _ interpreter.Activation = (*activation)(nil)

// Parent implements interpreter.Activation; the turn context has no parent.
func (a *activation) Parent() interpreter.Activation { return nil }

// ResolveName implements interpreter.Activation. Programs built for the fast path do not
// call it: they resolve variables by index (varnode.go).
func (a *activation) ResolveName(name string) (any, bool) {
	idx, ok := variableIndex[name]
	if !ok {
		return nil, false
	}
	return a.value(idx), true
}

// value returns the variable with index i.
func (a *activation) value(i int) ref.Val {
	a.refresh()
	if v := a.cache[i]; v != nil {
		return v
	}
	v := resolvers[i].get(a)
	a.cache[i] = v
	a.filled.add(i)
	return v
}

// refresh drops the request-derived state when the request changed since it was derived.
func (a *activation) refresh() {
	v := a.t.Request.Version()
	if a.reqValid && a.version == v {
		return
	}
	if a.reqValid {
		a.drop(dependents[depRequest])
	}
	a.reqValid, a.version = true, v
	a.facts = nil
	a.prev, a.prevDone = "", false
	a.keys, a.identified, a.keysDone = nil, nil, false
	a.hints.requestChanged()
}

func (a *activation) requestFacts() *responses.Facts {
	if a.facts == nil {
		a.facts = a.t.Request.Facts()
	}
	return a.facts
}

// prevID is the request's previous_response_id; decoding it allocates, and most rules read it.
func (a *activation) prevID() string {
	if !a.prevDone {
		a.prev, a.prevDone = a.t.Request.PreviousResponseID(), true
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

func (a *activation) responseCalls() *responseCalls {
	if !a.respDone {
		a.resp, a.respDone = newResponseCalls(a.response().Items), true
	}
	return &a.resp
}

// boxID boxes a response id. The same id is often the anchor, previous_response_id, the
// pending calls' response and what the upstream connection holds: it is boxed once.
func (a *activation) boxID(id string) ref.Val {
	if id == "" {
		return boxString(id)
	}
	for i, v := range a.ids {
		if v == nil {
			a.ids[i] = types.String(id)
			return a.ids[i]
		}
		if string(v.(types.String)) == id {
			return v
		}
	}
	return types.String(id)
}

// withinHints reports whether the static cost estimates bound this turn's evaluation.
func (a *activation) withinHints() bool {
	a.refresh()
	return a.hints.within(a)
}
