package engine

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"
)

// maxStageDepth bounds run_stage nesting at run time (cycles are refused at compile time).
const maxStageDepth = 8

// EvalOption configures one evaluation.
type EvalOption func(*evalConfig)

type evalConfig struct {
	trace, diffs bool
	// explain records the values of each when's sub-expressions (WithExplain).
	explain bool
	// enforced lists shadow rules that act as if they were not shadow.
	enforced []string
}

// WithTrace records a Step for every rule considered.
func WithTrace() EvalOption { return func(c *evalConfig) { c.trace = true } }

// WithEnforced makes the listed shadow rules act as if they were not shadow in this
// evaluation: they take their group and apply their actions. An alternative reading shipped
// as a shadow rule can so be tested (fixtures' enforce:) before anyone enforces it. Ids of
// rules that do not exist, or are not shadow, change nothing.
func WithEnforced(ids ...string) EvalOption {
	return func(c *evalConfig) { c.enforced = append(c.enforced, ids...) }
}

// WithDiffs records the request bytes before and after every fired rule (implies WithTrace).
func WithDiffs() EvalOption { return func(c *evalConfig) { c.trace, c.diffs = true, true } }

// evaluator runs one stage evaluation. It is pooled: act keeps its storage from one
// evaluation to the next, evalState starts afresh.
type evaluator struct {
	act activation
	evalState
}

// evalState is what an evaluation starts afresh with.
type evalState struct {
	s      *Snapshot
	t      *Turn
	out    *Outcome
	buf    *outcomeBuf
	frame  *interpreter.ExecutionFrame
	cfg    evalConfig
	groups []string
	done   bool
}

// evaluators recycles evaluators with their activation's cache: a stage evaluation would
// otherwise allocate them every time.
var evaluators = sync.Pool{New: func() any { return new(evaluator) }}

// outcomeBuf is an Outcome with room for what a stage usually produces, so that one
// allocation holds it all: the fired rules (post_response fires five rules on a turn that
// continues the transcript), and what the effects point to. The Outcome the caller gets is
// out; the rest lives as long as it does. The whole stays within the 768-byte size class.
type outcomeBuf struct {
	out   Outcome
	fired [5]Fired
	// anchor and cached back Effects.Anchor and Effects.UpstreamCached.
	anchor, cached string
	// deletes backs Effects.DeletePending.
	deletes [2]string
	// put and putCalls back the first Effects.PutPending.
	put      PendingPut
	putCalls [3]PendingCall
	putUsed  bool
}

// newPut returns an empty PendingPut for a response, in the buffer the first time.
func (b *outcomeBuf) newPut(responseID string) *PendingPut {
	if b.putUsed {
		return &PendingPut{ResponseID: responseID, Calls: []PendingCall{}}
	}
	b.putUsed = true
	b.put = PendingPut{ResponseID: responseID, Calls: b.putCalls[:0]}
	return &b.put
}

// ErrTurnCost is wrapped by Outcome.Err when a turn exceeds its CEL cost budget.
var ErrTurnCost = errors.New("turn cost limit exceeded")

// Evaluate runs the rules of stage in order against the turn, applying their actions.
func (s *Snapshot) Evaluate(stage string, t *Turn, opts ...EvalOption) *Outcome {
	start := time.Now()
	ev := evaluators.Get().(*evaluator)
	defer ev.release()
	ev.s, ev.t = s, t
	ev.act.reset(t)
	for _, o := range opts {
		o(&ev.cfg)
	}
	ev.buf = new(outcomeBuf)
	ev.out = &ev.buf.out
	*ev.out = Outcome{Stage: stage, Verdict: VerdictSend, Hash: s.Hash, Fired: ev.buf.fired[:0]}
	switch stage {
	case StageOnUpstreamError:
		ev.out.Verdict = VerdictForward
		if t.Error == nil {
			t.Error = &UpstreamError{}
		}
	case StagePostResponse:
		if t.Response == nil {
			t.Response = &Response{}
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

// fastInput is what the fast programs of this evaluation evaluate against: one CEL
// execution frame for all of them, where passing the activation would make every Eval take
// a frame from CEL's pool and return it. The tracked programs keep their own frames, which
// carry their cost trackers.
func (ev *evaluator) fastInput() any {
	if ev.frame == nil {
		f, err := interpreter.NewExecutionFrame(&ev.act)
		if err != nil {
			// Only an activation that supplies functions can fail; CEL's own path remains.
			return &ev.act
		}
		ev.frame = f
	}
	return ev.frame
}

// release returns ev to the pool, holding nothing of the turn or the outcome.
func (ev *evaluator) release() {
	if ev.frame != nil {
		ev.frame.Close()
	}
	ev.act.release()
	clear(ev.groups)
	ev.evalState = evalState{groups: ev.groups[:0]}
	evaluators.Put(ev)
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
		shadow := r.Shadow && (len(ev.cfg.enforced) == 0 || !contains(ev.cfg.enforced, r.ID))
		var step *Step
		if ev.cfg.trace {
			ev.out.Trace = append(ev.out.Trace, Step{Policy: r.policy, Rule: r.ID, Stage: stage, Reason: r.Reason, Pos: r.Pos, Shadow: shadow})
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
			if ev.cfg.explain {
				step.Parts = ev.explainParts(r.when)
			}
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
		ev.out.Fired = append(ev.out.Fired, Fired{Policy: r.policy, Rule: r.ID, Reason: r.Reason, Stage: stage, Shadow: shadow})
		if step != nil {
			step.Fired = true
		}
		if r.Group != "" && !shadow {
			// A shadow rule is watched, not enforced: its match must not decide the group.
			ev.groups = append(ev.groups, r.Group)
		}
		if shadow {
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
		v, _, err := p.fast.Eval(ev.fastInput())
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
	if s, ok := nativeList(l); ok && !hasDuplicates(s) {
		// The list's own strings: the actions only read them.
		return s, nil
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

// hasDuplicates reports whether a string occurs twice in s; lists of ids are short.
func hasDuplicates(s []string) bool {
	for i := 1; i < len(s); i++ {
		if contains(s[:i], s[i]) {
			return true
		}
	}
	return false
}
