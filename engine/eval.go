package engine

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"

	"chainmend/responses"
)

// Verdict is what the gateway does with the turn after a stage.
type Verdict string

// Verdicts. pre_send ends in send or reject; on_upstream_error in retry or forward.
const (
	VerdictSend    Verdict = "send"
	VerdictReject  Verdict = "reject"
	VerdictRetry   Verdict = "retry"
	VerdictForward Verdict = "forward"
)

// maxStageDepth bounds run_stage nesting at run time (cycles are refused at compile time).
const maxStageDepth = 8

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
	// ClearAnchor is set when a rule cleared the session anchor.
	ClearAnchor bool
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

// Reasons returns the reasons of the fired rules, in order.
func (o *Outcome) Reasons() []string {
	out := make([]string, len(o.Fired))
	for i, f := range o.Fired {
		out[i] = f.Reason
	}
	return out
}

// EvalOption configures one evaluation.
type EvalOption func(*evalConfig)

type evalConfig struct {
	trace, diffs bool
}

// WithTrace records a Step for every rule considered.
func WithTrace() EvalOption { return func(c *evalConfig) { c.trace = true } }

// WithDiffs records the request bytes before and after every fired rule (implies WithTrace).
func WithDiffs() EvalOption { return func(c *evalConfig) { c.trace, c.diffs = true, true } }

type evaluator struct {
	s      *Snapshot
	t      *Turn
	act    activation
	out    *Outcome
	cfg    evalConfig
	groups []string
	done   bool
}

// ErrTurnCost is wrapped by Outcome.Err when a turn exceeds its CEL cost budget.
var ErrTurnCost = errors.New("turn cost limit exceeded")

// Evaluate runs the rules of stage in order against the turn, applying their actions.
func (s *Snapshot) Evaluate(stage string, t *Turn, opts ...EvalOption) *Outcome {
	start := time.Now()
	ev := evaluator{s: s, t: t, act: activation{t: t}}
	for _, o := range opts {
		o(&ev.cfg)
	}
	ev.out = &Outcome{Stage: stage, Verdict: VerdictSend, Hash: s.Hash}
	if stage == StageOnUpstreamError {
		ev.out.Verdict = VerdictForward
		if t.Error == nil {
			t.Error = &UpstreamError{}
		}
	}
	ev.runStage(stage, 0)
	ev.out.Duration = time.Since(start)
	if s.observer != nil {
		for _, f := range ev.out.Fired {
			s.observer.RuleFired(f, t.Mode)
		}
		s.observer.StageEvaluated(stage, ev.out.Verdict, ev.out.Duration)
	}
	return ev.out
}

func (ev *evaluator) runStage(stage string, depth int) {
	if depth > maxStageDepth {
		ev.fail(fmt.Errorf("run_stage nested deeper than %d", maxStageDepth))
		return
	}
	for _, r := range ev.s.stages[stage] {
		if ev.done {
			return
		}
		var step *Step
		if ev.cfg.trace {
			ev.out.Trace = append(ev.out.Trace, Step{Policy: r.policy, Rule: r.ID, Stage: stage, Reason: r.Reason, Pos: r.Pos, Shadow: r.Shadow})
			step = &ev.out.Trace[len(ev.out.Trace)-1]
		}
		if r.Group != "" && contains(ev.groups, r.Group) {
			if step != nil {
				step.Skipped = "group " + r.Group + " already matched"
			}
			continue
		}
		val, err := ev.evalBool(r.when)
		if step != nil {
			step.Evaluated = true
			step.Value = val
		}
		if err != nil {
			ev.ruleError(r, step, err)
			if ev.done {
				return
			}
			continue
		}
		if !val {
			continue
		}
		ev.out.Fired = append(ev.out.Fired, Fired{Policy: r.policy, Rule: r.ID, Reason: r.Reason, Stage: stage, Shadow: r.Shadow})
		if step != nil {
			step.Fired = true
		}
		if r.Group != "" && !r.Shadow {
			// A shadow rule is watched, not enforced: its match must not decide the group.
			ev.groups = append(ev.groups, r.Group)
		}
		if r.Shadow {
			// A shadow rule is counted but changes nothing, stop included.
			continue
		}
		var before []byte
		if ev.cfg.diffs {
			before = ev.t.Request.Bytes()
		}
		idx := len(ev.out.Trace) - 1
		for i := range r.actions {
			note, applied := ev.apply(r, &r.actions[i], depth)
			if ev.cfg.trace {
				// run_stage appends steps, so address this rule's step by index.
				ev.out.Trace[idx].Actions = append(ev.out.Trace[idx].Actions, ActionStep{Kind: r.actions[i].Kind, Applied: applied, Note: note})
			}
			if ev.done {
				break
			}
		}
		if ev.cfg.diffs {
			ev.out.Trace[idx].Before = before
			ev.out.Trace[idx].After = ev.t.Request.Bytes()
		}
		if ev.done || r.Then == ThenStop {
			return
		}
	}
}

func (ev *evaluator) fail(err error) {
	if ev.out.Err == nil {
		ev.out.Err = err
	}
	ev.done = true
}

// exprError is a runtime error of one expression, with the expression's position.
type exprError struct {
	pos Pos
	err error
}

func (e *exprError) Error() string { return e.pos.String() + ": " + e.err.Error() }
func (e *exprError) Unwrap() error { return e.err }

func (ev *evaluator) ruleError(r *compiledRule, step *Step, err error) {
	pos := r.When.Pos
	var ee *exprError
	if errors.As(err, &ee) {
		pos, err = ee.pos, ee.err
	}
	msg := fmt.Sprintf("%s: rule %s: %v", pos, r.ID, err)
	if step != nil {
		step.Err = msg
	}
	if ev.s.observer != nil {
		ev.s.observer.RuleError(r.policy, r.ID, r.Stage)
	}
	if errors.Is(err, ErrTurnCost) {
		ev.fail(fmt.Errorf("%s: %w", r.When.Pos, err))
	}
}

func (ev *evaluator) eval(p *program) (ref.Val, error) {
	if !ev.cfg.trace && ev.out.Cost+p.max <= ev.s.TurnCost && ev.act.withinHints() {
		v, _, err := p.fast.Eval(&ev.act)
		if err != nil {
			return nil, &exprError{pos: p.pos, err: err}
		}
		// The static bound stands in for the cost the fast build does not track.
		ev.out.Cost += p.max
		return v, nil
	}
	v, det, err := p.tracked.Eval(&ev.act)
	if det != nil {
		if c := det.ActualCost(); c != nil {
			ev.out.Cost += *c
		}
	}
	if err != nil {
		return nil, &exprError{pos: p.pos, err: err}
	}
	if ev.out.Cost > ev.s.TurnCost {
		return nil, fmt.Errorf("%w: %d > %d", ErrTurnCost, ev.out.Cost, ev.s.TurnCost)
	}
	return v, nil
}

func (ev *evaluator) evalBool(p *program) (bool, error) {
	v, err := ev.eval(p)
	if err != nil {
		return false, err
	}
	b, ok := v.(types.Bool)
	if !ok {
		return false, fmt.Errorf("expected bool, got %s", v.Type())
	}
	return bool(b), nil
}

func (ev *evaluator) evalString(p *program) (string, error) {
	v, err := ev.eval(p)
	if err != nil {
		return "", err
	}
	s, ok := v.(types.String)
	if !ok {
		return "", fmt.Errorf("expected string, got %s", v.Type())
	}
	return string(s), nil
}

func (ev *evaluator) evalList(p *program) ([]string, error) {
	v, err := ev.eval(p)
	if err != nil {
		return nil, err
	}
	l, ok := v.(traits.Lister)
	if !ok {
		return nil, fmt.Errorf("expected list, got %s", v.Type())
	}
	n := int(l.Size().(types.Int))
	out := make([]string, 0, n)
	for i := 0; i < n; i++ {
		if s, ok := l.Get(types.Int(i)).(types.String); ok && !contains(out, string(s)) {
			out = append(out, string(s))
		}
	}
	return out, nil
}

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
		return fmt.Sprintf("inserted %d output(s) %q for %s", n, text, strings.Join(calls, ", ")), n > 0
	case ActRemoveOutputs:
		calls, err := ev.evalList(a.args["calls"])
		if err != nil {
			return argErr(err)
		}
		n := req.RemoveItems(func(it *responses.Item) bool { return it.IsOutput() && contains(calls, it.CallID) })
		return fmt.Sprintf("removed %d output(s) for %s", n, strings.Join(calls, ", ")), n > 0
	case ActReplay:
		return ev.replay()
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
		t.Expected = ""
		t.Pending = Pending{}
		ev.act.invalidate()
		ev.out.ClearAnchor = true
		return "anchor cleared", true
	case ActRunStage:
		ev.runStage(a.Word, depth+1)
		return "ran " + a.Word, true
	case ActClassify:
		v, err := ev.evalString(a.args["class"])
		if err != nil {
			return argErr(err)
		}
		t.Error.Class = v
		ev.act.invalidate()
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
	ev.act.invalidate()
	return fmt.Sprintf("full create: %d replayed + %d new item(s)", len(items), len(own)), true
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
