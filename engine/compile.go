package engine

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/ast"
)

// Snapshot is an immutable compiled policy set. It is safe for concurrent use: a turn
// evaluates against one snapshot from start to end, whatever reloads happen meanwhile.
type Snapshot struct {
	// Hash identifies the policy set's content (sha256 of names and bytes).
	Hash string
	// Policies are the parsed files, in load order.
	Policies []*Policy
	// TurnCost is the runtime cost limit of one stage evaluation.
	TurnCost uint64

	stages   map[string][]*compiledRule
	rules    []*compiledRule
	observer Observer
}

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

// LoadDir reads every *.yaml and *.yml file of dir (sorted by name, hidden entries skipped)
// and compiles them as one policy set.
func LoadDir(dir string, opts ...CompileOption) (*Snapshot, Diagnostics, error) {
	srcs, err := ReadSources(dir)
	if err != nil {
		return nil, nil, err
	}
	snap, diags := Compile(srcs, opts...)
	return snap, diags, nil
}

// ReadSources reads policy files: each argument is a file or a directory whose *.yaml and
// *.yml files (hidden ones skipped) are read in name order.
func ReadSources(paths ...string) ([]Source, error) {
	var srcs []Source
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		if !st.IsDir() {
			data, err := readBounded(p)
			if err != nil {
				return nil, err
			}
			srcs = append(srcs, Source{Name: p, Data: data})
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		root, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		for _, e := range entries {
			name := e.Name()
			if strings.HasPrefix(name, ".") || e.IsDir() {
				continue
			}
			if ext := filepath.Ext(name); ext != ".yaml" && ext != ".yml" {
				continue
			}
			// Links may point inside the directory (a ConfigMap's ..data layout) but not out
			// of it: a policy directory is a trust boundary.
			real, err := filepath.EvalSymlinks(filepath.Join(p, name))
			if err != nil {
				return nil, fmt.Errorf("read policies: %w", err)
			}
			if rel, err := filepath.Rel(root, real); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				return nil, fmt.Errorf("read policies: %s resolves to %s, outside %s", filepath.Join(p, name), real, p)
			}
			data, err := readBounded(filepath.Join(p, name))
			if err != nil {
				return nil, err
			}
			srcs = append(srcs, Source{Name: filepath.Join(p, name), Data: data})
		}
	}
	if len(srcs) == 0 {
		return nil, fmt.Errorf("read policies: no *.yaml files in %s", strings.Join(paths, ", "))
	}
	return srcs, nil
}

func readBounded(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read policies: %w", err)
	}
	if st.Size() > maxPolicyBytes {
		return nil, fmt.Errorf("read policies: %s is %d bytes, over the limit of %d", path, st.Size(), maxPolicyBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		return nil, fmt.Errorf("read policies: %w", err)
	}
	return data, nil
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
	envPre, err := newEnv(false)
	if err != nil {
		sink.errorf(Pos{}, "build CEL environment: %v", err)
		return nil, sink.list.sorted()
	}
	envErr, err := newEnv(true)
	if err != nil {
		sink.errorf(Pos{}, "build CEL environment: %v", err)
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
	// Stages entered by run_stage, to tell a sub-stage from a typo.
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
			entry := r.Stage == StagePreSend || r.Stage == StageOnUpstreamError
			if !entry && len(entered[r.Stage]) == 0 {
				sink.errorf(r.stagePos, "unknown stage %q (entry stages: %s, %s; other stages must be entered with run_stage)", r.Stage, StagePreSend, StageOnUpstreamError)
				continue
			}
			if len(declared) > 0 {
				if _, ok := declared[r.Reason]; !ok {
					sink.lintf(r.reasonPos, "reason %q is not declared in any policy's reasons list", r.Reason)
				}
			}
			env := envErr
			if r.Stage == StagePreSend {
				env = envPre
			}
			cr := &compiledRule{Rule: r, policy: p.Name}
			cr.when = compileExpr(env, r.When, cel.BoolType, limit, &sink, "when")
			if cr.when != nil && isConstFalse(env, r.When) {
				sink.lintf(r.When.Pos, "rule %q can never fire: its when is always false", r.ID)
			}
			for _, a := range r.Actions {
				spec := actionSpecs[a.Kind]
				if entry && spec.stages != nil && !slices.Contains(spec.stages, r.Stage) {
					sink.errorf(a.Pos, "action %s is not allowed in stage %s (only in %s)", a.Kind, r.Stage, strings.Join(spec.stages, ", "))
				}
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
				if a.Kind == ActRunStage {
					if a.Word == StagePreSend || a.Word == StageOnUpstreamError {
						sink.errorf(a.Pos, "run_stage cannot enter the entry stage %s", a.Word)
					}
				}
				cr.actions = append(cr.actions, ca)
			}
			snap.rules = append(snap.rules, cr)
			snap.stages[r.Stage] = append(snap.stages[r.Stage], cr)
		}
	}
	for stage, poss := range entered {
		if len(snap.stages[stage]) == 0 && stage != StagePreSend && stage != StageOnUpstreamError {
			for _, p := range poss {
				sink.errorf(p, "run_stage enters stage %q, which has no rules", stage)
			}
		}
	}
	checkCycles(snap, &sink)
	checkSubStageActions(snap, &sink)
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
			sink.errorf(e.errorPos(loc.Line(), loc.Column(), ce.Message), "%s: %s", what, ce.Message)
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

// isConstFalse reports whether a when expression reads no context and evaluates to false.
func isConstFalse(env *cel.Env, e Expr) bool {
	checked, iss := env.Compile(e.Text)
	if iss != nil && iss.Err() != nil {
		return false
	}
	if refersToContext(checked.NativeRep()) {
		return false
	}
	prg, err := env.Program(checked)
	if err != nil {
		return false
	}
	v, _, err := prg.Eval(map[string]any{})
	return err == nil && v.Value() == false
}

func refersToContext(a *ast.AST) bool {
	for _, ref := range a.ReferenceMap() {
		if ref.Value == nil && ref.Name != "" {
			return true
		}
	}
	return false
}

type stageEdge struct {
	to  string
	pos Pos
}

func stageEdges(s *Snapshot) map[string][]stageEdge {
	edges := map[string][]stageEdge{}
	for _, r := range s.rules {
		for _, a := range r.actions {
			if a.Kind == ActRunStage {
				edges[r.Stage] = append(edges[r.Stage], stageEdge{to: a.Word, pos: a.Pos})
			}
		}
	}
	return edges
}

// checkCycles refuses run_stage loops, which would never end, at the run_stage that closes
// the loop.
func checkCycles(s *Snapshot, sink *diagSink) {
	edges := stageEdges(s)
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[string]int{}
	var visit func(string) bool
	visit = func(n string) bool {
		state[n] = visiting
		for _, e := range edges[n] {
			switch state[e.to] {
			case visiting:
				sink.errorf(e.pos, "run_stage %q forms a cycle", e.to)
				return true
			case unvisited:
				if visit(e.to) {
					return true
				}
			}
		}
		state[n] = done
		return false
	}
	stages := make([]string, 0, len(edges))
	for st := range edges {
		stages = append(stages, st)
	}
	sort.Strings(stages)
	for _, st := range stages {
		if state[st] == unvisited && visit(st) {
			return
		}
	}
}

// checkSubStageActions applies the entry-stage limits of actions (retry only where an
// upstream error is recovered, reject only before sending) to the sub-stages each entry
// stage reaches through run_stage.
func checkSubStageActions(s *Snapshot, sink *diagSink) {
	edges := stageEdges(s)
	for _, entry := range []string{StagePreSend, StageOnUpstreamError} {
		seen := map[string]bool{entry: true}
		queue := []string{entry}
		for len(queue) > 0 {
			st := queue[0]
			queue = queue[1:]
			for _, e := range edges[st] {
				if !seen[e.to] {
					seen[e.to] = true
					queue = append(queue, e.to)
				}
			}
		}
		for st := range seen {
			if st == entry {
				continue
			}
			for _, r := range s.stages[st] {
				for _, a := range r.actions {
					if a.spec.stages != nil && !slices.Contains(a.spec.stages, entry) && !allowedElsewhere(a.spec, entry) {
						sink.errorf(a.Pos, "action %s is not allowed in stage %s (entered from %s; only in %s)",
							a.Kind, st, entry, strings.Join(a.spec.stages, ", "))
					}
				}
			}
		}
	}
}

// allowedElsewhere exempts reject under on_upstream_error: a shared pairing stage may
// reject in strict mode, and the gateway answers the client with that rejection.
func allowedElsewhere(spec actionSpec, entry string) bool {
	return spec.kind == ActReject && entry == StageOnUpstreamError
}

// lintReachability finds rules that follow an unconditional stop in their stage, or an
// unconditional rule of their group.
func lintReachability(s *Snapshot, sink *diagSink) {
	for _, rules := range s.stages {
		stopped := ""
		groupDone := map[string]string{}
		for _, r := range rules {
			if stopped != "" {
				sink.lintf(r.Pos, "rule %q can never fire: rule %q before it always stops the stage", r.ID, stopped)
				continue
			}
			if g := groupDone[r.Group]; r.Group != "" && g != "" {
				sink.lintf(r.Pos, "rule %q can never fire: rule %q before it always matches group %q", r.ID, g, r.Group)
				continue
			}
			always := strings.TrimSpace(r.When.Text) == "true" && !r.Shadow
			if !always {
				continue
			}
			if r.Group != "" {
				groupDone[r.Group] = r.ID
			}
			terminal := r.Then == ThenStop
			for _, a := range r.actions {
				if a.spec.terminal && a.If == nil {
					terminal = true
				}
			}
			if terminal {
				stopped = r.ID
			}
		}
	}
}

// Rules returns the ids of every rule in evaluation order, stage by stage.
func (s *Snapshot) Rules() []RuleInfo {
	out := make([]RuleInfo, 0, len(s.rules))
	for _, r := range s.rules {
		out = append(out, RuleInfo{Policy: r.policy, ID: r.ID, Stage: r.Stage, Reason: r.Reason, Shadow: r.Shadow, Pos: r.Pos})
	}
	return out
}

// RuleInfo describes one compiled rule.
type RuleInfo struct {
	Policy, ID, Stage, Reason string
	Shadow                    bool
	Pos                       Pos
}

// HasRule reports whether a rule id exists in the snapshot.
func (s *Snapshot) HasRule(id string) bool {
	return slices.ContainsFunc(s.rules, func(r *compiledRule) bool { return r.ID == id })
}

// Reasons returns every reason label a rule of the snapshot can report.
func (s *Snapshot) Reasons() []string {
	var out []string
	for _, r := range s.rules {
		if !slices.Contains(out, r.Reason) {
			out = append(out, r.Reason)
		}
	}
	slices.Sort(out)
	return out
}
