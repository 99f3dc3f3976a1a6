package engine

import "chainmend/responses"

// sizeHints caches whether every sized value of the turn is within its static size hint
// (vars.go), the condition under which the static cost estimates bound an evaluation and
// the untracked programs may run. The check has three parts, each redone only when what
// it reads can have changed: the request's (a new request version), the mutable turn
// state's (an action: anchor, pending calls, upstream.cached, error.class) and the rest of
// the turn's, fixed for the whole evaluation.
type sizeHints struct {
	reqDone, reqOK     bool
	turnDone, turnOK   bool
	fixedDone, fixedOK bool
}

// requestChanged forgets the request's part.
func (h *sizeHints) requestChanged() { h.reqDone = false }

// turnChanged forgets the mutable turn state's part when an action changed it.
func (h *sizeHints) turnChanged(d dep) {
	if d&(depAnchor|depCached|depClass) != 0 {
		h.turnDone = false
	}
}

func (h *sizeHints) within(a *activation) bool {
	if !h.reqDone {
		h.reqOK, h.reqDone = requestWithinHints(a), true
	}
	if !h.turnDone {
		h.turnOK, h.turnDone = mutableWithinHints(a.t), true
	}
	if !h.fixedDone {
		h.fixedOK, h.fixedDone = fixedWithinHints(a.t), true
	}
	return h.reqOK && h.turnOK && h.fixedOK
}

// requestWithinHints checks the request.
func requestWithinHints(a *activation) bool {
	r := a.t.Request
	f := a.requestFacts()
	if len(f.Calls) > hintIDList || len(f.Outputs) > hintIDList || len(f.Types) > hintItems ||
		r.NumFields() > hintFields {
		return false
	}
	if !fieldWithin(r, "previous_response_id") || !fieldWithin(r, "type") || !fieldWithin(r, "model") {
		return false
	}
	return itemsWithinHints(r.Items())
}

// fieldWithin reports whether a top-level string field is at most hintIDChars long. A
// decoded JSON string is never longer than its token, so only a long token is decoded.
func fieldWithin(r *responses.Request, key string) bool {
	raw, _ := r.Field(key)
	return len(raw) <= hintIDChars || len(r.String(key)) <= hintIDChars
}

// mutableWithinHints checks what actions change: the anchor and its pending calls, what
// the upstream connection holds and the error's class.
func mutableWithinHints(t *Turn) bool {
	if len(t.Anchor) > hintIDChars || len(t.Pending.ResponseID) > hintIDChars || len(t.Cached) > hintIDChars ||
		len(t.Pending.Calls) > hintIDList {
		return false
	}
	for _, c := range t.Pending.Calls {
		if len(c.ID) > hintIDChars || len(c.Kind) > hintIDChars {
			return false
		}
	}
	return t.Error == nil || len(t.Error.Class) <= hintIDChars
}

// fixedWithinHints checks the rest of the turn. The keys of previous.item_keys are only
// counted: they come from items the gateway parsed, and measuring 20,000 of them on every
// turn would cost more than the rules.
func fixedWithinHints(t *Turn) bool {
	if t.Previous != nil && len(t.Previous.ItemKeys) > hintPrevKeys {
		return false
	}
	if len(t.Replay.LastResponseID) > hintIDChars || len(t.Lane) > hintIDChars {
		return false
	}
	if e := t.Error; e != nil {
		if len(e.Message) > hintString || len(e.Code) > hintIDChars || len(e.Type) > hintIDChars ||
			len(e.Param) > hintIDChars {
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
