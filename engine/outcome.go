package engine

import "time"

// Verdict is what the gateway does with the turn after a stage.
type Verdict string

// Verdicts. pre_send ends in send or reject; on_upstream_error in retry, forward or reject;
// post_response always in send.
const (
	VerdictSend    Verdict = "send"
	VerdictReject  Verdict = "reject"
	VerdictRetry   Verdict = "retry"
	VerdictForward Verdict = "forward"
)

// Rejection is the error frame a reject action produces.
type Rejection struct {
	Status  int    `json:"status"`
	Type    string `json:"type"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Param   string `json:"param,omitempty"`
}

// Fired is one rule that fired.
type Fired struct {
	Policy string `json:"policy"`
	Rule   string `json:"rule"`
	Reason string `json:"reason"`
	Stage  string `json:"stage"`
	Shadow bool   `json:"shadow,omitempty"`
}

// Step is the trace of one rule: whether it was evaluated, its value, and what it did.
type Step struct {
	Policy    string       `json:"policy"`
	Rule      string       `json:"rule"`
	Stage     string       `json:"stage"`
	Reason    string       `json:"reason"`
	Pos       Pos          `json:"-"`
	Evaluated bool         `json:"evaluated"`
	Value     bool         `json:"value"`
	Err       string       `json:"error,omitempty"`
	Fired     bool         `json:"fired"`
	Shadow    bool         `json:"shadow,omitempty"`
	Skipped   string       `json:"skipped,omitempty"`
	Actions   []ActionStep `json:"actions,omitempty"`
	// Parts are the values of the when's sub-expressions (WithExplain only).
	Parts []Part `json:"parts,omitempty"`
	// Before and After are the request bytes around the rule's actions (WithDiffs only).
	Before []byte `json:"-"`
	After  []byte `json:"-"`
}

// ActionStep is the trace of one action.
type ActionStep struct {
	Kind    ActionKind `json:"kind"`
	Applied bool       `json:"applied"`
	Note    string     `json:"note,omitempty"`
}

// Outcome is the result of evaluating one stage for one turn.
type Outcome struct {
	Stage   string
	Verdict Verdict
	// Reject is set when Verdict is VerdictReject.
	Reject *Rejection
	// Effects are the state changes the gateway applies after the stage.
	Effects Effects
	// Fired lists the rules that fired, in order.
	Fired []Fired
	// Trace lists every rule considered (WithTrace only).
	Trace []Step
	// Cost is the runtime CEL cost spent.
	Cost uint64
	// Err is set when evaluation stopped early (turn cost limit); the request keeps the
	// mutations made before, so the gateway fails open.
	Err error
	// Hash is the snapshot the turn was evaluated against.
	Hash     string
	Duration time.Duration
}

// ClearsAnchor reports whether the stage cleared the session anchor.
func (o *Outcome) ClearsAnchor() bool {
	return o.Effects.Anchor != nil && *o.Effects.Anchor == ""
}

// Reasons returns the reasons of the fired rules, in order.
func (o *Outcome) Reasons() []string {
	out := make([]string, len(o.Fired))
	for i, f := range o.Fired {
		out[i] = f.Reason
	}
	return out
}
