package engine

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"

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
				sink.errorf(r.stagePos, "unknown stage %q (entry stages: %s; other stages must be entered with run_stage)", r.Stage, strings.Join(entryStages, ", "))
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
			cr.when = compileExpr(env, r.When, cel.BoolType, limit, &sink, "when")
			if cr.when != nil && isConstFalse(env, r.When) {
				sink.lintf(r.When.Pos, "rule %q can never fire: its when is always false", r.ID)
			}
			for _, a := range r.Actions {
				spec := actionSpecs[a.Kind]
				checkActionStage(r, a, spec, reachedFrom[r.Stage], &sink)
				ca := compiledAction{Action: a, spec: spec, args: map[string]*program{}}
				if a.If != nil {
					ca.guard = compileExpr(env, *a.If, cel.BoolType, limit, &sink, "if")
				}
				names := make([]string, 0, len(a.Args))
				for n := range a.Args {
					names = append(names, n)
				}
				sort.Strings(names)
				for _, n := range names {
					ca.args[n] = compileExpr(env, a.Args[n], spec.args[n], limit, &sink, string(a.Kind)+"."+n)
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
	for stage, poss := range entered {
		if len(snap.stages[stage]) == 0 && !isEntryStage(stage) {
			for _, p := range poss {
				sink.errorf(p, "run_stage enters stage %q, which has no rules", stage)
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
// the runtime cost, so tracking would only repeat what the compiler proved. tracked enforces
// the runtime limit for everything else, and for traces.
type program struct {
	fast, tracked cel.Program
	// max is the static cost estimate's upper bound.
	max uint64
	pos Pos
}

// compileExpr compiles one expression, checks its type and its static cost, and maps every
// CEL error back into the policy file.
func compileExpr(env *cel.Env, e Expr, want *cel.Type, limit uint64, sink *diagSink, what string) *program {
	if strings.TrimSpace(e.Text) == "" {
		sink.errorf(e.Pos, "%s: empty expression", what)
		return nil
	}
	checked, iss := env.Compile(e.Text)
	if iss != nil && iss.Err() != nil {
		for _, ce := range iss.Errors() {
			loc := ce.Location
			sink.errorf(e.errorPos(loc.Line(), loc.Column(), ce.Message), "%s: %s%s", what, ce.Message, stageHint(ce.Message))
		}
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
	fast, err := env.Program(checked, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		sink.errorf(e.Pos, "%s: %v", what, err)
		return nil
	}
	return &program{fast: fast, tracked: tracked, max: est.Max, pos: e.Pos}
}
