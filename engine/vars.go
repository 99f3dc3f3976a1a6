package engine

import (
	"slices"

	"cel.dev/cel-go/cel"
)

// variable declares one name of the turn context.
type variable struct {
	name string
	typ  *cel.Type
	// size is a static size hint (list length, string length) for cost estimation.
	size uint64
	// stages lists the entry stages where the variable exists; nil means every stage. A
	// rule of another stage that reads it fails to compile.
	stages []string
	doc    string
}

// existsIn reports whether the variable is declared for an entry stage.
func (v *variable) existsIn(stage string) bool {
	return v.stages == nil || slices.Contains(v.stages, stage)
}

// Size hints for cost estimation: generous bounds of what a real turn carries.
const (
	hintIDList  = 256
	hintItems   = 4096
	hintFields  = 64
	hintString  = 8192
	hintIDChars = 256
	// hintPrevKeys bounds previous.item_keys: the gateway keeps at most this many keys of
	// a connection's previous turn.
	hintPrevKeys = 20000
)

var (
	onlyError    = []string{StageOnUpstreamError}
	onlyResponse = []string{StagePostResponse}
)

// Variables of the turn context, as CEL sees them. Keep doc a short sentence: policyctl vars
// prints it, and the variable table of docs/policies.md is generated from it.
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
	{name: "request.item_keys", typ: listOfStrings, size: hintItems, doc: "keys of the input items, in order (type:id, type:call_id, else type#content hash)"},
	{name: "request.identified_keys", typ: listOfStrings, size: hintItems, doc: "keys of the input items that have an id or a call_id, in order"},
	{name: "request.fields", typ: listOfStrings, size: hintFields, doc: "top-level field names"},
	{name: "request.changed_fields", typ: listOfStrings, size: hintFields, doc: "top-level fields (input excluded) that differ from the previous turn's"},
	{name: "turn.mode", typ: cel.StringType, size: 16, doc: `"repair" or "strict"`},
	{name: "turn.transport", typ: cel.StringType, size: 16, doc: `"websocket" or "http"`},
	{name: "turn.number", typ: cel.IntType, doc: "turn number on this client connection, from 1"},
	{name: "turn.lane", typ: cel.StringType, size: hintIDChars, doc: `the lane (stream_id) of the turn, "" for the default lane`},
	{name: "turn.replayed", typ: cel.BoolType, doc: "the replay action already rewrote this request"},
	{name: "session.anchor", typ: cel.StringType, size: hintIDChars, doc: `the session anchor (last response id), "" when none; in post_response, the anchor at the start of the turn until a rule changes it`},
	{name: "pending.known", typ: cel.BoolType, doc: "the pending calls of session.anchor are known"},
	{name: "pending.response_id", typ: cel.StringType, size: hintIDChars, doc: "the response the pending calls belong to"},
	{name: "pending.calls", typ: listOfStrings, size: hintIDList, doc: "pending call ids"},
	{name: "pending.kinds", typ: cel.MapType(cel.StringType, cel.StringType), size: hintIDList, doc: "pending call id → call item type"},
	{name: "replay.known", typ: cel.BoolType, doc: "the store answered about the replay transcript (false: unknown, e.g. Redis down)"},
	{name: "replay.available", typ: cel.BoolType, doc: "a replay transcript exists"},
	{name: "replay.complete", typ: cel.BoolType, doc: "the transcript ends with the output of request.previous_response_id"},
	{name: "replay.last_response_id", typ: cel.StringType, size: hintIDChars, doc: "the response whose output ends the transcript"},
	{name: "replay.trimmed", typ: cel.BoolType, doc: "the transcript lost its oldest units to the byte cap"},
	{name: "upstream.cached", typ: cel.StringType, size: hintIDChars, doc: `the response the current upstream connection holds, "" when none (a fresh connection)`},
	{name: "upstream.fresh", typ: cel.BoolType, doc: "the upstream connection holds no response"},
	{name: "previous.present", typ: cel.BoolType, doc: "the previous turn's payload is known on this connection"},
	{name: "previous.item_keys", typ: listOfStrings, size: hintPrevKeys, doc: "keys of the previous turn's full logical input (its context, its input, its response's output items)"},
	{name: "error.status", typ: cel.IntType, stages: onlyError, doc: "upstream HTTP-style status"},
	{name: "error.type", typ: cel.StringType, size: hintIDChars, stages: onlyError, doc: "upstream error type"},
	{name: "error.code", typ: cel.StringType, size: hintIDChars, stages: onlyError, doc: "upstream error code"},
	{name: "error.message", typ: cel.StringType, size: hintString, stages: onlyError, doc: "upstream error message"},
	{name: "error.param", typ: cel.StringType, size: hintIDChars, stages: onlyError, doc: "upstream error param"},
	{name: "error.transport", typ: cel.BoolType, stages: onlyError, doc: "a transport failure (closed connection, timeout), not an error frame"},
	{name: "error.timeout", typ: cel.BoolType, stages: onlyError, doc: "the upstream sent no first event, or went idle, in time (error.transport is true too)"},
	{name: "error.class", typ: cel.StringType, size: hintIDChars, stages: onlyError, doc: "the class set by classify"},
	{name: "recovery.enabled", typ: cel.BoolType, stages: onlyError, doc: "recovery is enabled"},
	{name: "recovery.attempted", typ: cel.BoolType, stages: onlyError, doc: "a recovery was already tried in this turn"},
	{name: "recovery.client_written", typ: cel.BoolType, stages: onlyError, doc: "something of this turn already reached the client"},
	{name: "response.id", typ: cel.StringType, size: hintIDChars, stages: onlyResponse, doc: `the response id, "" when unknown`},
	{name: "response.status", typ: cel.StringType, size: hintIDChars, stages: onlyResponse, doc: `the response status ("completed", "incomplete", "failed", "cancelled", …), "" when unknown`},
	{name: "response.event", typ: cel.StringType, size: hintIDChars, stages: onlyResponse, doc: `the terminal event type ("response.completed", …), "" for a response object that was not streamed`},
	{name: "response.calls", typ: listOfStrings, size: hintIDList, stages: onlyResponse, doc: "call ids of call items among the response's output items"},
	{name: "response.unanswered_calls", typ: listOfStrings, size: hintIDList, stages: onlyResponse, doc: "calls of the response without an output item among its output items"},
	{name: "response.item_types", typ: listOfStrings, size: hintItems, stages: onlyResponse, doc: "types of the response's output items, in order"},
	{name: "response.incomplete_reason", typ: cel.StringType, size: hintIDChars, stages: onlyResponse, doc: `incomplete_details.reason of the terminal event ("steered", "interrupted", "max_output_tokens", …), "" when none`},
	{name: "response.server_started", typ: cel.BoolType, stages: onlyResponse, doc: "the server started this response by itself (a steer's successor); request is then a synthetic create chained to the steered response with the steer's input"},
	{name: "response.injected_outputs", typ: listOfStrings, size: hintIDList, stages: onlyResponse, doc: "call ids that response.inject frames answered while the response was in flight"},
	{name: "response.interrupted", typ: cel.BoolType, stages: onlyResponse, doc: "the client sent response.interrupt for this response"},
	{name: "response.interrupt_mode", typ: cel.StringType, size: hintIDChars, stages: onlyResponse, doc: `the interrupt's mode as the client sent it (e.g. "discard_partial_items"), "" when none`},
	{name: "response.terminal_calls", typ: listOfStrings, size: hintIDList, stages: onlyResponse, doc: "call ids of the call items in the terminal event's own response.output"},
	{name: "response.terminal_output", typ: cel.BoolType, stages: onlyResponse, doc: "the terminal event carried an output list at all (response.terminal_calls is then what it says, not \"not said\")"},
}

// entryStages are the stages the gateway evaluates; other stages are entered by run_stage.
var entryStages = []string{StagePreSend, StageOnUpstreamError, StagePostResponse}

func isEntryStage(s string) bool { return slices.Contains(entryStages, s) }

// Variables returns the names, types and meaning of the turn context, for documentation.
func Variables() [][3]string {
	out := make([][3]string, 0, len(variables))
	for _, v := range variables {
		out = append(out, [3]string{v.name, v.typ.String(), v.doc})
	}
	return out
}

// VariableStages returns the entry stages where a variable exists; nil means every stage,
// and ok is false for an unknown name.
func VariableStages(name string) (stages []string, ok bool) {
	v, ok := variableByName[name]
	if !ok {
		return nil, false
	}
	return slices.Clone(v.stages), true
}

var variableByName = func() map[string]*variable {
	m := make(map[string]*variable, len(variables))
	for i := range variables {
		m[variables[i].name] = &variables[i]
	}
	return m
}()

var variableIndex = func() map[string]int {
	m := make(map[string]int, len(variables))
	for i, v := range variables {
		m[v.name] = i
	}
	return m
}()
