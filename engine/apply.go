package engine

import (
	"fmt"
	"slices"
	"strings"

	"cel.dev/cel-go/common/types"

	"chainmend/responses"
)

// apply runs one action and returns a note for the trace and whether it changed anything.
func (ev *evaluator) apply(r *compiledRule, a *compiledAction, depth int) (string, bool) {
	if a.guard != nil {
		ok, err := ev.evalBool(a.guard)
		if err != nil {
			ev.ruleError(r, nil, err)
			return "if: " + err.Error(), false
		}
		if !ok {
			return "if is false", false
		}
	}
	t, req := ev.t, ev.t.Request
	argErr := func(err error) (string, bool) {
		ev.ruleError(r, nil, err)
		return fmt.Sprintf("action %s: %v", a.Kind, err), false
	}
	switch a.Kind {
	case ActSetPrev:
		v, err := ev.evalString(a.args["value"])
		if err != nil {
			return argErr(err)
		}
		if v == "" {
			return "value is empty: previous_response_id left as is", false
		}
		if req.PreviousResponseID() == v {
			return "already " + v, false
		}
		req.SetString("previous_response_id", v)
		if !ev.cfg.trace {
			return "", true
		}
		return "set to " + v, true
	case ActDropPrev:
		if !req.Delete("previous_response_id") {
			return "no previous_response_id", false
		}
		return "dropped", true
	case ActInsertOutputs:
		calls, err := ev.evalList(a.args["calls"])
		if err != nil {
			return argErr(err)
		}
		text, err := ev.evalString(a.args["output"])
		if err != nil {
			return argErr(err)
		}
		n := insertOutputs(t, calls, text, a.Word)
		if !ev.cfg.trace {
			return "", n > 0
		}
		return fmt.Sprintf("inserted %d output(s) %q for %s", n, text, strings.Join(calls, ", ")), n > 0
	case ActRemoveOutputs:
		calls, err := ev.evalList(a.args["calls"])
		if err != nil {
			return argErr(err)
		}
		n := req.RemoveItems(func(it *responses.Item) bool { return it.IsOutput() && contains(calls, it.CallID) })
		if !ev.cfg.trace {
			return "", n > 0
		}
		return fmt.Sprintf("removed %d output(s) for %s", n, strings.Join(calls, ", ")), n > 0
	case ActReplay:
		return ev.replay()
	case ActDedupeItems:
		n := dedupeItems(req)
		if !ev.cfg.trace {
			return "", n > 0
		}
		return fmt.Sprintf("removed %d item(s) repeating an earlier id", n), n > 0
	case ActReject:
		rej := &Rejection{Status: 400, Type: "invalid_request_error"}
		for name, p := range a.args {
			if name == "status" {
				v, err := ev.eval(p)
				if err != nil {
					return argErr(err)
				}
				rej.Status = int(v.(types.Int))
				continue
			}
			s, err := ev.evalString(p)
			if err != nil {
				return argErr(err)
			}
			switch name {
			case "code":
				rej.Code = s
			case "message":
				rej.Message = s
			case "type":
				rej.Type = s
			case "param":
				rej.Param = s
			}
		}
		ev.out.Verdict, ev.out.Reject = VerdictReject, rej
		ev.done = true
		return rej.Code + ": " + rej.Message, true
	case ActClearAnchor:
		ev.setAnchor("")
		return "anchor cleared", true
	case ActSetAnchor:
		v, err := ev.evalString(a.args["value"])
		if err != nil {
			return argErr(err)
		}
		ev.setAnchor(v)
		if v == "" {
			return "anchor cleared", true
		}
		if !ev.cfg.trace {
			return "", true
		}
		return "anchor " + v, true
	case ActRecordPending:
		calls, err := ev.evalList(a.args["calls"])
		if err != nil {
			return argErr(err)
		}
		return ev.recordPending(calls)
	case ActDeletePending:
		ids, err := ev.evalList(a.args["responses"])
		if err != nil {
			return argErr(err)
		}
		n := 0
		fx := &ev.out.Effects
		for _, id := range ids {
			if id != "" && !contains(fx.DeletePending, id) {
				if fx.DeletePending == nil {
					fx.DeletePending = ev.buf.deletes[:0]
				}
				fx.DeletePending = append(fx.DeletePending, id)
				n++
			}
		}
		if !ev.cfg.trace {
			return "", n > 0
		}
		return fmt.Sprintf("delete pending of %s", strings.Join(ids, ", ")), n > 0
	case ActAppendTranscript:
		ev.out.Effects.Transcript = TranscriptAppend
		return "append this turn to the transcript", true
	case ActResetTranscript:
		ev.out.Effects.Transcript = TranscriptReset
		return "reset the transcript to this turn", true
	case ActClearTranscript:
		ev.out.Effects.Transcript = TranscriptClear
		return "clear the transcript", true
	case ActSetUpstreamCached:
		v, err := ev.evalString(a.args["value"])
		if err != nil {
			return argErr(err)
		}
		t.Cached = v
		ev.buf.cached = v
		ev.out.Effects.UpstreamCached = &ev.buf.cached
		ev.act.changed(depCached)
		if v == "" {
			return "the upstream connection holds nothing", true
		}
		if !ev.cfg.trace {
			return "", true
		}
		return "the upstream connection holds " + v, true
	case ActRunStage:
		ev.runStage(a.Word, depth+1)
		if !ev.cfg.trace {
			return "", true
		}
		return "ran " + a.Word, true
	case ActClassify:
		v, err := ev.evalString(a.args["class"])
		if err != nil {
			return argErr(err)
		}
		t.Error.Class = v
		ev.act.changed(depClass)
		if !ev.cfg.trace {
			return "", true
		}
		return "class " + v, true
	case ActRetry:
		ev.out.Verdict = VerdictRetry
		ev.done = true
		return "retry on a fresh upstream connection", true
	case ActForward:
		ev.out.Verdict = VerdictForward
		ev.done = true
		return "forward the upstream error", true
	}
	return "unknown action", false
}

// setAnchor changes the session anchor for the rules that follow and for the gateway. The
// pending calls follow the anchor: none for a cleared one, the calls record_pending put for
// the new one, else unknown.
func (ev *evaluator) setAnchor(v string) {
	t := ev.t
	switch put := ev.out.Effects.PutPending; {
	case v == "":
		t.Pending = Pending{}
	case put != nil && put.ResponseID == v:
		t.Pending = Pending{Known: true, ResponseID: v, Calls: slices.Clone(put.Calls)}
	case v != t.Anchor:
		t.Pending = Pending{ResponseID: v}
	}
	t.Anchor = v
	ev.buf.anchor = v
	ev.out.Effects.Anchor = &ev.buf.anchor
	ev.act.changed(depAnchor)
}

// recordPending records calls as the pending calls of the response being bookkept, each
// with the kind of its call item; an id that is no call of the response is left out.
func (ev *evaluator) recordPending(calls []string) (string, bool) {
	resp := ev.t.Response
	if resp == nil || resp.ID == "" {
		return "no response id: nothing recorded", false
	}
	put := ev.buf.newPut(resp.ID)
	var skipped []string
	for _, id := range calls {
		kind := ""
		for i := range resp.Items {
			if it := &resp.Items[i]; it.IsCall() && it.CallID == id {
				kind = it.Type
				break
			}
		}
		if kind == "" {
			skipped = append(skipped, id)
			continue
		}
		put.Calls = append(put.Calls, PendingCall{ID: id, Kind: kind})
	}
	ev.out.Effects.PutPending = put
	if !ev.cfg.trace {
		return "", true
	}
	note := fmt.Sprintf("pending of %s: %d call(s)", resp.ID, len(put.Calls))
	if len(skipped) > 0 {
		note += "; not calls of the response: " + strings.Join(skipped, ", ")
	}
	return note, true
}

// replay rewrites the request into a full create: the transcript, then the request's own
// items, without previous_response_id.
func (ev *evaluator) replay() (string, bool) {
	t := ev.t
	if t.Replayed {
		// The request is already a full create; a second replay would send the context twice.
		return "already replayed", false
	}
	if !t.Replay.Available {
		return "no replay transcript", false
	}
	items := t.Replay.Items
	if items == nil && t.Replay.Load != nil {
		var err error
		if items, err = t.Replay.Load(); err != nil {
			return "load replay: " + err.Error(), false
		}
		t.Replay.Items = items
	}
	own := t.Request.Items()
	full := make([]responses.Item, 0, len(items)+len(own))
	full = append(full, items...)
	full = append(full, own...)
	t.Request.ReplaceInput(full)
	t.Request.Delete("previous_response_id")
	t.Replayed = true
	ev.act.changed(depReplayed)
	return fmt.Sprintf("full create: %d replayed + %d new item(s)", len(items), len(own)), true
}

// dedupeItems removes the input items whose non-empty id an earlier item already has and
// returns how many it removed. Items without an id are never duplicates of each other: two
// identical id-less messages are two messages.
func dedupeItems(req *responses.Request) int {
	seen := make(map[string]struct{}, len(req.Items()))
	return req.RemoveItems(func(it *responses.Item) bool {
		if it.ID == "" {
			return false
		}
		if _, dup := seen[it.ID]; dup {
			return true
		}
		seen[it.ID] = struct{}{}
		return false
	})
}

// insertOutputs answers each call id that has no output yet. Placement auto puts an output
// right after its call when the call is in the input, else before the first new non-output
// item (SPEC §4).
func insertOutputs(t *Turn, calls []string, text, placement string) int {
	req := t.Request
	n := 0
	for _, id := range calls {
		if contains(req.Facts().Outputs, id) {
			continue
		}
		kind := req.CallType(id)
		if kind == "" {
			for _, pc := range t.Pending.Calls {
				if pc.ID == id {
					kind = pc.Kind
				}
			}
		}
		item := responses.NewOutputItem(kind, id, text)
		at := req.CallIndex(id)
		switch {
		case placement == PlaceBeforeNewItem || at < 0:
			at = req.FirstNewItem()
		default:
			at++
		}
		if placement == PlaceAfterCall && req.CallIndex(id) < 0 {
			continue
		}
		req.InsertItems(at, item)
		n++
	}
	return n
}
