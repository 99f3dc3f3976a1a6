package engine

import (
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"
)

// CEL resolves a variable by its name: the interpreter asks the activation for
// "request.previous_response_id", which costs a map lookup and a value adaptation on every
// read, and rules read variables all the time. resolveByIndex replaces, in the programs of
// the fast path, every plain read of a turn-context variable with a varNode that knows the
// variable's index and reads the activation's cache directly.

// resolveByIndex is a CEL planner decorator (cel.CustomDecoratorV2).
func resolveByIndex(i interpreter.InterpretableV2) (interpreter.InterpretableV2, error) {
	ia, ok := i.(interpreter.InterpretableAttribute)
	if !ok {
		return i, nil
	}
	na, ok := ia.Attr().(interpreter.NamespacedAttribute)
	if !ok || len(na.Qualifiers()) > 0 {
		return i, nil
	}
	names := na.CandidateVariableNames()
	if len(names) != 1 {
		return i, nil
	}
	idx, ok := variableIndex[names[0]]
	if !ok {
		return i, nil
	}
	return &varNode{idx: idx, attr: ia}, nil
}

// varNode reads one variable of the turn context by index.
type varNode struct {
	idx int
	// attr is the node CEL planned, for a read from inside a nested scope.
	attr interpreter.InterpretableAttribute
}

// ID implements interpreter.Interpretable.
func (n *varNode) ID() int64 { return n.attr.ID() }

// Eval implements interpreter.Interpretable.
func (n *varNode) Eval(vars interpreter.Activation) ref.Val {
	return interpreter.EvalActivation(vars, n.Exec)
}

// Exec implements interpreter.InterpretableV2. The frame's scope is the activation at the top
// level of an expression, and its parent one scope down (a cel.bind, a macro's body); the
// names of the turn context are dotted, so no local variable can hide them. Deeper scopes
// take CEL's own path.
func (n *varNode) Exec(frame *interpreter.ExecutionFrame) ref.Val {
	if a, ok := frame.Scope().(*activation); ok {
		return a.value(n.idx)
	}
	if a, ok := frame.Parent().(*activation); ok {
		return a.value(n.idx)
	}
	return n.attr.Exec(frame)
}
