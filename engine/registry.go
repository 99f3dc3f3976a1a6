package engine

import (
	"slices"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/ext"
)

// ActionInfo describes one action of the closed set, for documentation and tools.
type ActionInfo struct {
	Name string
	// Doc says what the action does, in one or two sentences.
	Doc  string
	Args []ArgInfo
	// Short names the argument that the short form `- action: EXPR` sets, "" when the
	// action has no short form with an argument.
	Short string
	// Stages are the entry stages whose rules, and the sub-stages they enter, may use the
	// action; nil means every stage.
	Stages []string
	// Terminal actions end the stage's evaluation.
	Terminal bool
}

// ArgInfo describes one argument of an action.
type ArgInfo struct {
	Name string
	// Type is the CEL type of the argument's expression, or "word" for a literal word.
	Type     string
	Required bool
	// Default is what an omitted optional argument means.
	Default string
	// Values are the words a literal-word argument accepts.
	Values []string
}

// actionDocs documents every action; a test requires an entry for each one.
var actionDocs = map[ActionKind]string{
	ActSetPrev:           "Sets previous_response_id. An empty value leaves the field as it is.",
	ActDropPrev:          "Removes previous_response_id (every duplicate key too).",
	ActInsertOutputs:     "Inserts an output whose text is output for each call id in calls that has no output yet, of the item type that answers the call's kind (function_call_output, custom_tool_call_output). placement auto puts it right after its call when the call is in the input, else before the turn's first new non-output item; after_call inserts only for calls in the input; before_first_new_item always uses that place.",
	ActRemoveOutputs:     "Removes every output item answering one of the call ids.",
	ActDedupeItems:       "Removes every input item whose non-empty id repeats the id of an earlier item, keeping the first (a replay followed by a client's resent items).",
	ActReplay:            "Turns the request into a full create: the session's replay transcript followed by the request's own items, without previous_response_id. Does nothing when there is no transcript or the request was already replayed (turn.replayed).",
	ActReject:            "Refuses the turn with an error frame built from its arguments and ends the stage (verdict reject). In on_upstream_error the client gets this error instead of the upstream's.",
	ActClearAnchor:       "Clears the session anchor and its pending calls; session.anchor reads \"\" for the rules that follow.",
	ActSetAnchor:         "Makes value the session anchor; an empty value clears it like clear_anchor.",
	ActRecordPending:     "Records calls as the pending calls of response.id, each with the kind of its call item among the response's output items; ids that are no call of the response are left out. An empty list is recorded too: the response leaves nothing pending.",
	ActDeletePending:     "Deletes the pending entries of the given response ids.",
	ActAppendTranscript:  "Appends this turn's input as sent and the response's output items to the replay transcript.",
	ActResetTranscript:   "Replaces the replay transcript with this turn's input as sent and the response's output items.",
	ActClearTranscript:   "Empties the replay transcript.",
	ActSetUpstreamCached: "Records what the upstream connection holds (\"\" for nothing); upstream.cached reads it afterwards.",
	ActRunStage:          "Evaluates the rules of another stage (a sub-stage), then continues with this one. Its value is the stage's name, a literal word, not CEL.",
	ActClassify:          "Sets error.class for the rules that follow.",
	ActRetry:             "Sends the (possibly rewritten) request again on a fresh upstream connection and ends the stage (verdict retry).",
	ActForward:           "Forwards the upstream error to the client unchanged (for a transport failure, an error built from error.*) and ends the stage (verdict forward).",
}

// argDefaults are what the optional arguments mean when omitted (apply.go applies them).
var argDefaults = map[string]string{
	"reject.status":            "400",
	"reject.type":              `"invalid_request_error"`,
	"reject.param":             `"" (no param)`,
	"insert_outputs.placement": PlaceAuto,
}

// Actions returns the closed set of actions in name order.
func Actions() []ActionInfo {
	out := make([]ActionInfo, 0, len(actionSpecs))
	for kind, spec := range actionSpecs {
		a := ActionInfo{Name: string(kind), Doc: actionDocs[kind], Short: spec.single, Stages: slices.Clone(spec.stages), Terminal: spec.terminal}
		if spec.word {
			a.Args = append(a.Args, ArgInfo{Name: "stage", Type: "word", Required: true})
		}
		for name, typ := range spec.args {
			a.Args = append(a.Args, ArgInfo{Name: name, Type: typ.String(), Required: slices.Contains(spec.required, name),
				Default: argDefaults[string(kind)+"."+name]})
		}
		for name, values := range spec.words {
			a.Args = append(a.Args, ArgInfo{Name: name, Type: "word", Values: slices.Clone(values),
				Default: argDefaults[string(kind)+"."+name]})
		}
		slices.SortFunc(a.Args, func(x, y ArgInfo) int {
			// Required arguments first, then by name.
			if x.Required != y.Required {
				if x.Required {
					return -1
				}
				return 1
			}
			return strings.Compare(x.Name, y.Name)
		})
		out = append(out, a)
	}
	slices.SortFunc(out, func(x, y ActionInfo) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// Helpers returns the names of the domain functions the policy environment adds to CEL's
// standard library and the strings, sets, lists and bindings extensions, sorted.
func Helpers() []string {
	env, err := newEnv(nil)
	if err != nil {
		return nil
	}
	base, err := cel.NewEnv(ext.Strings(), ext.Sets(), ext.Lists(), ext.Bindings())
	if err != nil {
		return nil
	}
	known := base.Functions()
	var out []string
	for name := range env.Functions() {
		if _, ok := known[name]; !ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// EntryStages returns the stages the gateway evaluates, in the order a turn meets them.
func EntryStages() []string { return slices.Clone(entryStages) }
