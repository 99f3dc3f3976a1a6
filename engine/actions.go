package engine

import (
	"slices"
	"sort"
	"strings"

	"cel.dev/cel-go/cel"
)

// ActionKind names one of the closed set of actions a rule can take.
type ActionKind string

// The actions. Their arguments are CEL expressions evaluated against the turn context at
// the moment the action runs (after the mutations of earlier actions).
const (
	// ActSetPrev sets previous_response_id to its string argument.
	ActSetPrev ActionKind = "set_previous_response_id"
	// ActDropPrev removes previous_response_id (every duplicate key too).
	ActDropPrev ActionKind = "drop_previous_response_id"
	// ActInsertOutputs inserts an output with the given text for each call id, of the type
	// that answers the call's kind, placed after the call when it is in the input, else
	// before the first new non-output item (placement auto; or forced by placement).
	ActInsertOutputs ActionKind = "insert_outputs"
	// ActRemoveOutputs removes the outputs answering the given call ids.
	ActRemoveOutputs ActionKind = "remove_outputs"
	// ActDedupeItems removes every input item whose non-empty id repeats the id of an
	// earlier item, keeping the first (a replay followed by a client's resent items).
	ActDedupeItems ActionKind = "dedupe_items"
	// ActReplay turns the request into a full create: input becomes the session's replay
	// transcript followed by the request's own items, and previous_response_id is dropped.
	ActReplay ActionKind = "replay"
	// ActReject refuses the turn with an error frame; it ends the stage. In
	// on_upstream_error the client gets this error instead of the upstream's.
	ActReject ActionKind = "reject"
	// ActClearAnchor clears the session anchor and its pending calls (session.anchor reads ""
	// afterwards); the gateway forgets the anchor (Effects.Anchor is "").
	ActClearAnchor ActionKind = "clear_anchor"
	// ActSetAnchor makes its string argument the session anchor (Effects.Anchor); an empty
	// value clears it like clear_anchor.
	ActSetAnchor ActionKind = "set_anchor"
	// ActRecordPending records the given call ids as the pending calls of response.id, each
	// with the kind of its call item among the response's output items (Effects.PutPending).
	// An empty list is recorded too: the response is known to leave nothing pending.
	ActRecordPending ActionKind = "record_pending"
	// ActDeletePending deletes the pending entries of the given response ids
	// (Effects.DeletePending).
	ActDeletePending ActionKind = "delete_pending"
	// ActAppendTranscript appends this turn's input as sent and the response's output items
	// to the replay transcript (Effects.Transcript).
	ActAppendTranscript ActionKind = "append_transcript"
	// ActResetTranscript replaces the replay transcript with this turn's input as sent and
	// the response's output items.
	ActResetTranscript ActionKind = "reset_transcript"
	// ActClearTranscript empties the replay transcript.
	ActClearTranscript ActionKind = "clear_transcript"
	// ActSetUpstreamCached records what the upstream connection holds: its string argument,
	// "" for nothing (Effects.UpstreamCached); upstream.cached reads it afterwards.
	ActSetUpstreamCached ActionKind = "set_upstream_cached"
	// ActRunStage evaluates the rules of another stage, then continues with this one.
	ActRunStage ActionKind = "run_stage"
	// ActClassify sets error.class for the rules that follow.
	ActClassify ActionKind = "classify"
	// ActRetry sends the (possibly rewritten) request again on a fresh upstream connection;
	// it ends the stage.
	ActRetry ActionKind = "retry"
	// ActForward forwards the upstream error to the client unchanged (for a transport
	// failure, an error built from error.*); it ends the stage.
	ActForward ActionKind = "forward"
)

// Placements of insert_outputs.
const (
	PlaceAuto          = "auto"
	PlaceAfterCall     = "after_call"
	PlaceBeforeNewItem = "before_first_new_item"
)

type actionSpec struct {
	kind     ActionKind
	args     map[string]*cel.Type
	required []string
	// single names the argument the short form `- kind: EXPR` sets.
	single string
	// word is true when the action's value is a literal word rather than CEL.
	word bool
	// words lists literal-word arguments inside the argument mapping and their values.
	words map[string][]string
	// stages limits the entry stages the action may appear in; nil means any.
	stages []string
	// terminal actions end the stage.
	terminal bool
}

func (s actionSpec) argNames() string {
	names := make([]string, 0, len(s.args)+len(s.words))
	for n := range s.args {
		names = append(names, n)
	}
	for n := range s.words {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// Where actions may appear: rules of these entry stages, and the sub-stages they enter.
var (
	requestStages = []string{StagePreSend, StageOnUpstreamError}
	cacheStages   = []string{StageOnUpstreamError, StagePostResponse}
)

// actionSpecs is the closed set of actions. The actions that edit the request exist where
// a request is still to be sent (pre_send, on_upstream_error); bookkeeping actions that need
// a response exist in post_response only.
var actionSpecs = map[ActionKind]actionSpec{
	ActSetPrev:  {kind: ActSetPrev, args: map[string]*cel.Type{"value": cel.StringType}, required: []string{"value"}, single: "value", stages: requestStages},
	ActDropPrev: {kind: ActDropPrev, stages: requestStages},
	ActInsertOutputs: {
		kind:     ActInsertOutputs,
		args:     map[string]*cel.Type{"calls": listOfStrings, "output": cel.StringType},
		required: []string{"calls", "output"},
		words:    map[string][]string{"placement": {PlaceAuto, PlaceAfterCall, PlaceBeforeNewItem}},
		stages:   requestStages,
	},
	ActRemoveOutputs: {kind: ActRemoveOutputs, args: map[string]*cel.Type{"calls": listOfStrings}, required: []string{"calls"}, single: "calls", stages: requestStages},
	ActReplay:        {kind: ActReplay, stages: requestStages},
	ActDedupeItems:   {kind: ActDedupeItems, stages: requestStages},
	ActReject: {
		kind: ActReject,
		args: map[string]*cel.Type{
			"status": cel.IntType, "code": cel.StringType, "message": cel.StringType,
			"type": cel.StringType, "param": cel.StringType,
		},
		required: []string{"code", "message"},
		stages:   requestStages,
		terminal: true,
	},
	ActClearAnchor:       {kind: ActClearAnchor},
	ActSetAnchor:         {kind: ActSetAnchor, args: map[string]*cel.Type{"value": cel.StringType}, required: []string{"value"}, single: "value"},
	ActRecordPending:     {kind: ActRecordPending, args: map[string]*cel.Type{"calls": listOfStrings}, required: []string{"calls"}, single: "calls", stages: onlyResponse},
	ActDeletePending:     {kind: ActDeletePending, args: map[string]*cel.Type{"responses": listOfStrings}, required: []string{"responses"}, single: "responses"},
	ActAppendTranscript:  {kind: ActAppendTranscript, stages: onlyResponse},
	ActResetTranscript:   {kind: ActResetTranscript, stages: onlyResponse},
	ActClearTranscript:   {kind: ActClearTranscript},
	ActSetUpstreamCached: {kind: ActSetUpstreamCached, args: map[string]*cel.Type{"value": cel.StringType}, required: []string{"value"}, single: "value", stages: cacheStages},
	ActRunStage:          {kind: ActRunStage, word: true},
	ActClassify:          {kind: ActClassify, args: map[string]*cel.Type{"class": cel.StringType}, required: []string{"class"}, single: "class", stages: onlyError},
	ActRetry:             {kind: ActRetry, stages: onlyError, terminal: true},
	ActForward:           {kind: ActForward, stages: onlyError, terminal: true},
}

func knownActions() string {
	names := make([]string, 0, len(actionSpecs))
	for k := range actionSpecs {
		names = append(names, string(k))
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}
