package engine

import (
	"fmt"
	"slices"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"

	"chainmend/responses"
)

// dep says what a variable's value is derived from, and so which change makes a cached
// value stale. Everything else of the Turn is fixed while a stage is evaluated.
type dep uint8

const (
	// depRequest: the request; stale when its version changes.
	depRequest dep = 1 << iota
	// depAnchor: session.anchor and its pending calls (set_anchor, clear_anchor).
	depAnchor
	// depCached: what the upstream connection holds (set_upstream_cached).
	depCached
	// depReplayed: whether the replay action rewrote the request (replay).
	depReplayed
	// depClass: the upstream error's class (classify).
	depClass
)

// resolver derives one variable of the turn context.
type resolver struct {
	// deps is what the value depends on; 0 means nothing an action changes.
	deps dep
	get  func(a *activation) ref.Val
}

// resolvers holds the resolver of every variable, by its index in variables.
var resolvers = func() []resolver {
	out := make([]resolver, len(variables))
	for i, v := range variables {
		r, ok := resolverByName[v.name]
		if !ok {
			panic(fmt.Sprintf("engine: variable %s has no resolver", v.name))
		}
		out[i] = r
	}
	for name := range resolverByName {
		if _, ok := variableIndex[name]; !ok {
			panic(fmt.Sprintf("engine: resolver for undeclared variable %s", name))
		}
	}
	return out
}()

// dependents maps each dep to the variables whose value depends on it.
var dependents = func() map[dep]varSet {
	m := map[dep]varSet{}
	for _, d := range []dep{depRequest, depAnchor, depCached, depReplayed, depClass} {
		var vs varSet
		for i, r := range resolvers {
			if r.deps&d != 0 {
				vs.add(i)
			}
		}
		m[d] = vs
	}
	return m
}()

// resolverByName derives each variable from the turn. Values are computed on first read
// and cached by the activation until what they depend on changes.
var resolverByName = map[string]resolver{
	"request.type":  {depRequest, func(a *activation) ref.Val { return boxString(a.t.Request.Type()) }},
	"request.model": {depRequest, func(a *activation) ref.Val { return boxString(a.t.Request.String("model")) }},
	"request.previous_response_id": {depRequest, func(a *activation) ref.Val {
		return a.boxID(a.prevID())
	}},
	"request.store": {depRequest, func(a *activation) ref.Val {
		v, ok := a.t.Request.Bool("store")
		return boolVal(!ok || v)
	}},
	"request.store_disabled": {depRequest, func(a *activation) ref.Val { return boolVal(a.t.Request.StoreDisabled()) }},
	"request.generate":       {depRequest, func(a *activation) ref.Val { return boolVal(a.t.Request.Generate()) }},
	"request.has_input":      {depRequest, func(a *activation) ref.Val { return boolVal(a.t.Request.HasInput()) }},
	"request.calls":          {depRequest, func(a *activation) ref.Val { return stringList(a.requestFacts().Calls) }},
	"request.outputs":        {depRequest, func(a *activation) ref.Val { return stringList(a.requestFacts().Outputs) }},
	"request.unanswered_calls": {depRequest, func(a *activation) ref.Val {
		return stringList(a.requestFacts().Unanswered)
	}},
	"request.orphan_outputs":    {depRequest, func(a *activation) ref.Val { return stringList(a.requestFacts().Orphans) }},
	"request.duplicate_outputs": {depRequest, func(a *activation) ref.Val { return stringList(a.requestFacts().Duplicates) }},
	"request.roles":             {depRequest, func(a *activation) ref.Val { return stringList(a.requestFacts().Roles) }},
	"request.item_types":        {depRequest, func(a *activation) ref.Val { return stringList(a.requestFacts().Types) }},
	"request.item_keys": {depRequest, func(a *activation) ref.Val {
		all, _ := a.itemKeys()
		return stringList(all)
	}},
	"request.identified_keys": {depRequest, func(a *activation) ref.Val {
		_, ids := a.itemKeys()
		return stringList(ids)
	}},
	"request.fields": {depRequest, func(a *activation) ref.Val { return stringList(a.t.Request.Keys()) }},
	"request.changed_fields": {depRequest, func(a *activation) ref.Val {
		return stringList(changedFields(a.t.Request, a.t.Previous))
	}},

	"turn.mode":      {0, func(a *activation) ref.Val { return boxString(a.t.Mode) }},
	"turn.transport": {0, func(a *activation) ref.Val { return boxString(a.t.Transport) }},
	"turn.number":    {0, func(a *activation) ref.Val { return types.Int(a.t.Number) }},
	"turn.lane":      {0, func(a *activation) ref.Val { return boxString(a.t.Lane) }},
	"turn.replayed":  {depReplayed, func(a *activation) ref.Val { return boolVal(a.t.Replayed) }},

	"session.anchor":      {depAnchor, func(a *activation) ref.Val { return a.boxID(a.t.Anchor) }},
	"pending.known":       {depAnchor, func(a *activation) ref.Val { return boolVal(a.t.Pending.Known) }},
	"pending.response_id": {depAnchor, func(a *activation) ref.Val { return a.boxID(a.t.Pending.ResponseID) }},
	"pending.calls": {depAnchor, func(a *activation) ref.Val {
		calls := a.t.Pending.Calls
		if len(calls) == 0 {
			return emptyList
		}
		ids := make([]string, len(calls))
		for i, c := range calls {
			ids[i] = c.ID
		}
		return stringList(ids)
	}},
	"pending.kinds": {depAnchor, func(a *activation) ref.Val {
		m := make(map[string]string, len(a.t.Pending.Calls))
		for _, c := range a.t.Pending.Calls {
			m[c.ID] = c.Kind
		}
		return types.NewStringStringMap(types.DefaultTypeAdapter, m)
	}},

	"replay.known":     {0, func(a *activation) ref.Val { return boolVal(a.t.Replay.Known) }},
	"replay.available": {0, func(a *activation) ref.Val { return boolVal(a.t.Replay.Available) }},
	"replay.complete": {depRequest, func(a *activation) ref.Val {
		p := a.prevID()
		return boolVal(a.t.Replay.Available && p != "" && a.t.Replay.LastResponseID == p)
	}},
	"replay.last_response_id": {0, func(a *activation) ref.Val { return a.boxID(a.t.Replay.LastResponseID) }},
	"replay.trimmed":          {0, func(a *activation) ref.Val { return boolVal(a.t.Replay.Trimmed) }},

	"upstream.cached": {depCached, func(a *activation) ref.Val { return a.boxID(a.t.Cached) }},
	"upstream.fresh":  {depCached, func(a *activation) ref.Val { return boolVal(a.t.Cached == "") }},

	"previous.present": {0, func(a *activation) ref.Val { return boolVal(a.t.Previous != nil) }},
	"previous.item_keys": {0, func(a *activation) ref.Val {
		p := a.t.Previous
		if p == nil || len(p.ItemKeys) == 0 {
			return emptyList
		}
		return &keyList{strList: &strList{s: p.ItemKeys}, prev: p}
	}},

	"recovery.enabled":        {0, func(a *activation) ref.Val { return boolVal(a.t.Recovery.Enabled) }},
	"recovery.attempted":      {0, func(a *activation) ref.Val { return boolVal(a.t.Recovery.Attempted) }},
	"recovery.client_written": {0, func(a *activation) ref.Val { return boolVal(a.t.Recovery.ClientWritten) }},

	"error.status":    {0, func(a *activation) ref.Val { return types.Int(a.upstreamError().Status) }},
	"error.type":      {0, func(a *activation) ref.Val { return boxString(a.upstreamError().Type) }},
	"error.code":      {0, func(a *activation) ref.Val { return boxString(a.upstreamError().Code) }},
	"error.message":   {0, func(a *activation) ref.Val { return boxString(a.upstreamError().Message) }},
	"error.param":     {0, func(a *activation) ref.Val { return boxString(a.upstreamError().Param) }},
	"error.transport": {0, func(a *activation) ref.Val { return boolVal(a.upstreamError().Transport) }},
	"error.timeout":   {0, func(a *activation) ref.Val { return boolVal(a.upstreamError().Timeout) }},
	"error.class":     {depClass, func(a *activation) ref.Val { return boxString(a.upstreamError().Class) }},

	"response.id":     {0, func(a *activation) ref.Val { return a.boxID(a.response().ID) }},
	"response.status": {0, func(a *activation) ref.Val { return boxString(a.response().Status) }},
	"response.event":  {0, func(a *activation) ref.Val { return boxString(a.response().Event) }},
	"response.calls":  {0, func(a *activation) ref.Val { return stringList(a.responseCalls().calls) }},
	"response.unanswered_calls": {0, func(a *activation) ref.Val {
		return stringList(a.responseCalls().unanswered)
	}},
	"response.item_types": {0, func(a *activation) ref.Val {
		items := a.response().Items
		ts := make([]string, len(items))
		for i := range items {
			ts[i] = items[i].Type
		}
		return stringList(ts)
	}},
	"response.incomplete_reason": {0, func(a *activation) ref.Val { return boxString(a.response().IncompleteReason) }},
	"response.server_started":    {0, func(a *activation) ref.Val { return boolVal(a.response().ServerStarted) }},
	"response.injected_outputs":  {0, func(a *activation) ref.Val { return stringList(a.response().Injected) }},
	"response.interrupted":       {0, func(a *activation) ref.Val { return boolVal(a.response().Interrupted) }},
	"response.interrupt_mode":    {0, func(a *activation) ref.Val { return boxString(a.response().InterruptMode) }},
	"response.terminal_calls":    {0, func(a *activation) ref.Val { return stringList(a.response().TerminalCalls) }},
	"response.terminal_output":   {0, func(a *activation) ref.Val { return boolVal(a.response().TerminalOutput) }},
}

// noError and noResponse stand in for a Turn without them; they are never written to.
var (
	noError    = &UpstreamError{}
	noResponse = &Response{}
)

func (a *activation) upstreamError() *UpstreamError {
	if a.t.Error == nil {
		return noError
	}
	return a.t.Error
}

func (a *activation) response() *Response {
	if a.t.Response == nil {
		return noResponse
	}
	return a.t.Response
}

// responseCalls are the pairing facts of a response's output items.
type responseCalls struct {
	calls, unanswered []string
}

func newResponseCalls(items []responses.Item) responseCalls {
	var f responseCalls
	var outputs []string
	for i := range items {
		it := &items[i]
		switch {
		case it.IsCall() && it.CallID != "" && !slices.Contains(f.calls, it.CallID):
			f.calls = append(f.calls, it.CallID)
		case it.IsOutput():
			outputs = append(outputs, it.CallID)
		}
	}
	if len(outputs) == 0 {
		// Nothing answered: every call is unanswered, and the list can be shared.
		f.unanswered = f.calls
		return f
	}
	for _, c := range f.calls {
		if !slices.Contains(outputs, c) {
			f.unanswered = append(f.unanswered, c)
		}
	}
	return f
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

// Boxing a Go string into a CEL value allocates; the words most turns carry (modes,
// transports, roles, statuses, event types) are boxed once.
var (
	boxedRepair, boxedStrict        ref.Val = types.String(ModeRepair), types.String(ModeStrict)
	boxedWebSocket, boxedHTTP       ref.Val = types.String(TransportWebSocket), types.String(TransportHTTP)
	boxedUser, boxedAssistant       ref.Val = types.String("user"), types.String("assistant")
	boxedDeveloper, boxedSystem     ref.Val = types.String("developer"), types.String("system")
	boxedCompleted, boxedIncomplete ref.Val = types.String("completed"), types.String("incomplete")
	boxedEvCompleted                ref.Val = types.String("response.completed")
	boxedEvIncomplete               ref.Val = types.String("response.incomplete")
	boxedCreate                     ref.Val = types.String("response.create")
)

// boxString returns s as a CEL string, without allocating for "" and the common words.
func boxString(s string) ref.Val {
	switch s {
	case "":
		return types.String("")
	case ModeRepair:
		return boxedRepair
	case ModeStrict:
		return boxedStrict
	case TransportWebSocket:
		return boxedWebSocket
	case TransportHTTP:
		return boxedHTTP
	case "user":
		return boxedUser
	case "assistant":
		return boxedAssistant
	case "developer":
		return boxedDeveloper
	case "system":
		return boxedSystem
	case "completed":
		return boxedCompleted
	case "incomplete":
		return boxedIncomplete
	case "response.completed":
		return boxedEvCompleted
	case "response.incomplete":
		return boxedEvIncomplete
	case "response.create":
		return boxedCreate
	}
	return types.String(s)
}

func boolVal(b bool) ref.Val {
	if b {
		return types.True
	}
	return types.False
}
