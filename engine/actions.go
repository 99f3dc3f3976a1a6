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
	// ActReplay turns the request into a full create: input becomes the session's replay
	// transcript followed by the request's own items, and previous_response_id is dropped.
	ActReplay ActionKind = "replay"
	// ActReject refuses the turn with an error frame; it ends the stage.
	ActReject ActionKind = "reject"
	// ActClearAnchor clears the session anchor (session.expected reads "" afterwards).
	ActClearAnchor ActionKind = "clear_anchor"
	// ActRunStage evaluates the rules of another stage, then continues with this one.
	ActRunStage ActionKind = "run_stage"
	// ActClassify sets error.class for the rules that follow.
	ActClassify ActionKind = "classify"
	// ActRetry sends the (possibly rewritten) request again on a fresh upstream connection;
	// it ends the stage.
	ActRetry ActionKind = "retry"
	// ActForward forwards the upstream error to the client unchanged; it ends the stage.
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

var listOfStrings = cel.ListType(cel.StringType)

var actionSpecs = map[ActionKind]actionSpec{
	ActSetPrev:  {kind: ActSetPrev, args: map[string]*cel.Type{"value": cel.StringType}, required: []string{"value"}, single: "value"},
	ActDropPrev: {kind: ActDropPrev},
	ActInsertOutputs: {
		kind:     ActInsertOutputs,
		args:     map[string]*cel.Type{"calls": listOfStrings, "output": cel.StringType},
		required: []string{"calls", "output"},
		words:    map[string][]string{"placement": {PlaceAuto, PlaceAfterCall, PlaceBeforeNewItem}},
	},
	ActRemoveOutputs: {kind: ActRemoveOutputs, args: map[string]*cel.Type{"calls": listOfStrings}, required: []string{"calls"}, single: "calls"},
	ActReplay:        {kind: ActReplay},
	ActReject: {
		kind: ActReject,
		args: map[string]*cel.Type{
			"status": cel.IntType, "code": cel.StringType, "message": cel.StringType,
			"type": cel.StringType, "param": cel.StringType,
		},
		required: []string{"code", "message"},
		stages:   []string{StagePreSend},
		terminal: true,
	},
	ActClearAnchor: {kind: ActClearAnchor},
	ActRunStage:    {kind: ActRunStage, word: true},
	ActClassify:    {kind: ActClassify, args: map[string]*cel.Type{"class": cel.StringType}, required: []string{"class"}, single: "class", stages: []string{StageOnUpstreamError}},
	ActRetry:       {kind: ActRetry, stages: []string{StageOnUpstreamError}, terminal: true},
	ActForward:     {kind: ActForward, stages: []string{StageOnUpstreamError}, terminal: true},
}

func knownActions() string {
	names := make([]string, 0, len(actionSpecs))
	for k := range actionSpecs {
		names = append(names, string(k))
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}
