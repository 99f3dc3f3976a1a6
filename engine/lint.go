package engine

import (
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/ast"
)

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

// refersToContext reports whether a checked expression reads a variable of the turn context.
func refersToContext(a *ast.AST) bool {
	for _, ref := range a.ReferenceMap() {
		if ref.Value == nil && ref.Name != "" {
			return true
		}
	}
	return false
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
