package engine

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
)

type compiledRule struct {
	*Rule
	policy  string
	when    *program
	actions []compiledAction
}

type compiledAction struct {
	*Action
	spec  actionSpec
	guard *program
	args  map[string]*program
}

// CompileOption configures Compile.
type CompileOption func(*compileConfig)

type compileConfig struct {
	observer Observer
}

// WithObserver reports fired rules and evaluation times of the snapshot to o.
func WithObserver(o Observer) CompileOption {
	return func(c *compileConfig) { c.observer = o }
}

// Compile parses, type-checks and cost-checks a policy set. It returns every finding sorted
// by position; the snapshot is nil when any finding is an error.
func Compile(srcs []Source, opts ...CompileOption) (*Snapshot, Diagnostics) {
	var cfg compileConfig
	for _, o := range opts {
		o(&cfg)
	}
	var sink diagSink
	snap := &Snapshot{stages: map[string][]*compiledRule{}, observer: cfg.observer, TurnCost: DefaultTurnCost}
	h := sha256.New()
	for _, src := range srcs {
		fmt.Fprintf(h, "%s\x00%d\x00", filepath.Base(src.Name), len(src.Data))
		h.Write(src.Data)
		if p := parsePolicy(src, &sink); p != nil {
			snap.Policies = append(snap.Policies, p)
		}
	}
	snap.Hash = hex.EncodeToString(h.Sum(nil))[:16]
	if sink.list.HasErrors() {
		return nil, sink.list.sorted()
	}
	ids := map[string]Pos{}
	declared := map[string]Pos{}
	for _, p := range snap.Policies {
		if p.Limits.TurnCost > 0 {
			snap.TurnCost = min(snap.TurnCost, p.Limits.TurnCost)
		}
		for _, r := range p.Reasons {
			declared[r.Name] = r.Pos
		}
	}
	// Stages entered by run_stage, to tell a sub-stage from a typo, and the entry stages
	// that reach each stage, which decide its variables and actions.
	entered := map[string][]Pos{}
	for _, p := range snap.Policies {
		for _, r := range p.Rules {
			for _, a := range r.Actions {
				if a.Kind == ActRunStage {
					entered[a.Word] = append(entered[a.Word], a.Pos)
				}
			}
		}
	}
	reachedFrom := entriesReaching(snap.Policies)
	envs := envCache{}
	for _, p := range snap.Policies {
		limit := DefaultExpressionCost
		if p.Limits.ExpressionCost > 0 {
			limit = p.Limits.ExpressionCost
		}
		for _, r := range p.Rules {
			if first, dup := ids[r.ID]; dup {
				// Keep checking the rule: its other errors should not wait for the rename.
				sink.errorf(r.Pos, "duplicate rule id %q (first defined at %s)", r.ID, first)
			} else {
				ids[r.ID] = r.Pos
			}
			entry := isEntryStage(r.Stage)
			if !entry && len(entered[r.Stage]) == 0 {
				sink.errorf(r.stagePos, "unknown stage %q%s (entry stages: %s; other stages must be entered with run_stage)",
					r.Stage, unknownStageHint(r.Stage, entered), strings.Join(entryStages, ", "))
				continue
			}
			if len(declared) > 0 {
				if _, ok := declared[r.Reason]; !ok {
					sink.lintf(r.reasonPos, "reason %q is not declared in any policy's reasons list", r.Reason)
				}
			}
			env, err := envs.get(reachedFrom[r.Stage])
			if err != nil {
				sink.errorf(Pos{}, "build CEL environment: %v", err)
				return nil, sink.list.sorted()
			}
			cr := &compiledRule{Rule: r, policy: p.Name}
			ctx := exprContext{what: "when", stage: r.Stage, entries: reachedFrom[r.Stage]}
			cr.when = compileExpr(env, r.When, cel.BoolType, limit, &sink, ctx)
			if cr.when != nil && isConstFalse(env, r.When) {
				sink.lintf(r.When.Pos, "rule %q can never fire: its when is always false", r.ID)
			}
			for _, a := range r.Actions {
				spec := actionSpecs[a.Kind]
				checkActionStage(r, a, spec, reachedFrom[r.Stage], &sink)
				ca := compiledAction{Action: a, spec: spec, args: map[string]*program{}}
				if a.If != nil {
					ctx.what = "if"
					ca.guard = compileExpr(env, *a.If, cel.BoolType, limit, &sink, ctx)
				}
				names := make([]string, 0, len(a.Args))
				for n := range a.Args {
					names = append(names, n)
				}
				sort.Strings(names)
				for _, n := range names {
					ctx.what, ctx.arg = string(a.Kind)+"."+n, n
					ca.args[n] = compileExpr(env, a.Args[n], spec.args[n], limit, &sink, ctx)
					ctx.arg = ""
				}
				if a.Kind == ActRunStage && isEntryStage(a.Word) {
					sink.errorf(a.Pos, "run_stage cannot enter the entry stage %s", a.Word)
				}
				cr.actions = append(cr.actions, ca)
			}
			snap.rules = append(snap.rules, cr)
			snap.stages[r.Stage] = append(snap.stages[r.Stage], cr)
		}
	}
	var ruleStages []string
	for _, p := range snap.Policies {
		for _, r := range p.Rules {
			if !isEntryStage(r.Stage) && !slices.Contains(ruleStages, r.Stage) {
				ruleStages = append(ruleStages, r.Stage)
			}
		}
	}
	for stage, poss := range entered {
		if len(snap.stages[stage]) == 0 && !isEntryStage(stage) {
			hint := ""
			if s := Suggest(stage, ruleStages); s != "" {
				hint = fmt.Sprintf(": did you mean %s?", s)
			}
			for _, p := range poss {
				sink.errorf(p, "run_stage enters stage %q, which has no rules%s", stage, hint)
			}
		}
	}
	checkCycles(snap, &sink)
	lintReachability(snap, &sink)
	for name, pos := range declared {
		used := slices.ContainsFunc(snap.rules, func(r *compiledRule) bool { return r.Reason == name })
		if !used {
			sink.lintf(pos, "reason %q is declared but no rule uses it", name)
		}
	}
	diags := sink.list.sorted()
	if diags.HasErrors() {
		return nil, diags
	}
	return snap, diags
}

// program is one compiled expression in two builds. fast runs without cost tracking: it is
// used while every context value is within the size hints, where the static estimate bounds
// the runtime cost, so tracking would only repeat what the compiler proved; it reads the
// variables by index (varnode.go). tracked enforces the runtime limit for everything else,
// and for traces.
type program struct {
	fast, tracked cel.Program
	// max is the static cost estimate's upper bound.
	max uint64
	pos Pos

	// For explanations only (WithExplain): the checked expression, its environment and
	// cost limit, and the state-tracking program built from them on first use.
	checked   *cel.Ast
	env       *cel.Env
	limit     uint64
	stateOnce sync.Once
	state     cel.Program
	stateErr  error
}

// compileExpr compiles one expression, checks its type and its static cost, and maps every
// CEL error back into the policy file.
func compileExpr(env *cel.Env, e Expr, want *cel.Type, limit uint64, sink *diagSink, ctx exprContext) *program {
	what := ctx.what
	if strings.TrimSpace(e.Text) == "" {
		sink.errorf(e.Pos, "%s: empty expression", what)
		return nil
	}
	checked, iss := env.Compile(e.Text)
	if iss != nil && iss.Err() != nil {
		checkMessages(env, e, want, ctx, iss.Errors(), sink)
		return nil
	}
	if !checked.OutputType().IsAssignableType(want) {
		sink.errorf(e.Pos, "%s must be %s, but the expression is %s", what, want, checked.OutputType())
		return nil
	}
	est, err := env.EstimateCost(checked, estimator{})
	if err != nil {
		sink.errorf(e.Pos, "%s: estimate cost: %v", what, err)
		return nil
	}
	if est.Max > limit {
		sink.errorf(e.Pos, "%s: estimated cost %d exceeds the expression cost limit %d (limits.expression_cost)", what, est.Max, limit)
		return nil
	}
	tracked, err := env.Program(checked,
		cel.EvalOptions(cel.OptOptimize),
		cel.CostLimit(limit),
		cel.CostTracking(estimator{}),
	)
	if err != nil {
		sink.errorf(e.Pos, "%s: %v", what, err)
		return nil
	}
	fast, err := env.Program(checked, cel.EvalOptions(cel.OptOptimize), cel.CustomDecoratorV2(resolveByIndex))
	if err != nil {
		sink.errorf(e.Pos, "%s: %v", what, err)
		return nil
	}
	return &program{fast: fast, tracked: tracked, max: est.Max, pos: e.Pos, checked: checked, env: env, limit: limit}
}

// unknownStageHint suggests the entry stage a typo meant, or names a run_stage whose target
// looks like this stage (the typo may be on the other side).
func unknownStageHint(stage string, entered map[string][]Pos) string {
	if s := Suggest(stage, entryStages); s != "" {
		return fmt.Sprintf(": did you mean %s?", s)
	}
	targets := make([]string, 0, len(entered))
	for t := range entered {
		targets = append(targets, t)
	}
	if s := Suggest(stage, targets); s != "" {
		return fmt.Sprintf(": no rule enters it, and run_stage enters %q at %s; a typo?", s, entered[s][0])
	}
	return ""
}
