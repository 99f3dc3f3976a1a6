package engine

import (
	"fmt"
	"strconv"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"
	"cel.dev/cel-go/parser"
)

// Part is one sub-expression of a rule's when and the value it had when the rule was
// evaluated (WithExplain). Depth nests the parts: the operands of an && or || chain are at
// depth 0, the values they compare one level deeper.
type Part struct {
	Expr  string `json:"expr"`
	Value string `json:"value"`
	// Evaluated is false when evaluation never reached the part (an && that was already
	// false, a || that was already true).
	Evaluated bool `json:"evaluated"`
	Depth     int  `json:"depth"`
}

// WithExplain records, for every evaluated when, the values of its sub-expressions in
// Step.Parts (implies WithDiffs). It is for policyctl explain: each expression is compiled
// once more with CEL's state tracking, on first use, and evaluated a second time.
// Evaluations without it never pay for either.
func WithExplain() EvalOption {
	return func(c *evalConfig) { c.trace, c.diffs, c.explain = true, true, true }
}

// stateProgram builds, once, the expression's program that records every sub-expression's
// value. It is built lazily: a snapshot serving traffic never needs it.
func (p *program) stateProgram() (cel.Program, error) {
	p.stateOnce.Do(func() {
		p.state, p.stateErr = p.env.Program(p.checked,
			cel.EvalOptions(cel.OptTrackState),
			cel.CostLimit(p.limit),
			cel.CostTracking(estimator{}),
		)
	})
	return p.state, p.stateErr
}

// explainParts evaluates p again with state tracking and breaks its value down. Errors
// are left to the ordinary evaluation, which reports them with their position.
func (ev *evaluator) explainParts(p *program) []Part {
	if p == nil || p.checked == nil {
		return nil
	}
	prg, err := p.stateProgram()
	if err != nil {
		return nil
	}
	_, det, _ := prg.Eval(&ev.act)
	if det == nil {
		return nil
	}
	native := p.checked.NativeRep()
	x := explainer{state: det.State(), info: native.SourceInfo()}
	x.operands(native.Expr(), 0)
	return x.parts
}

type explainer struct {
	state interpreter.EvalState
	info  *ast.SourceInfo
	parts []Part
}

// operands lists the operands of a logical chain (a && b && c is one level, however CEL
// grouped it), each with its value, and breaks down each operand once more.
func (x *explainer) operands(e ast.Expr, depth int) {
	if e.Kind() == ast.ComprehensionKind && isBind(e.AsComprehension()) {
		// cel.bind(name, init, result): the bound value, then the result's parts.
		c := e.AsComprehension()
		if text, err := parser.Unparse(c.AccuInit(), x.info); err == nil {
			p := Part{Expr: c.AccuVar() + " := " + text, Depth: depth, Value: "not evaluated"}
			if v, ok := x.state.Value(c.AccuInit().ID()); ok {
				p.Value, p.Evaluated = FormatValue(v), true
			}
			x.parts = append(x.parts, p)
		}
		x.operands(c.Result(), depth)
		return
	}
	op := logicalOp(e)
	if op == "" {
		// Not a chain: the expression's own operands are what a reader wants to see.
		x.args(e, depth)
		return
	}
	for _, o := range flatten(e, op) {
		if !x.add(o, depth) {
			// Never reached: its parts were not either.
			continue
		}
		switch {
		case logicalOp(o) != "":
			x.operands(o, depth+1)
		case isCall(o, operators.LogicalNot) && logicalOp(o.AsCall().Args()[0]) != "":
			x.operands(o.AsCall().Args()[0], depth+1)
		default:
			x.args(o, depth+1)
		}
	}
}

// args adds the non-constant operands of a call (both sides of a comparison, the
// arguments of size or without) and of a conditional, one level deep.
func (x *explainer) args(e ast.Expr, depth int) {
	if e.Kind() != ast.CallKind {
		return
	}
	call := e.AsCall()
	var subs []ast.Expr
	if call.IsMemberFunction() {
		subs = append(subs, call.Target())
	}
	subs = append(subs, call.Args()...)
	for _, s := range subs {
		if s.Kind() == ast.LiteralKind {
			continue
		}
		if s.Kind() == ast.ListKind && allLiterals(s.AsList().Elements()) {
			continue
		}
		x.add(s, depth)
	}
}

// add appends the part for e and reports whether evaluation reached it.
func (x *explainer) add(e ast.Expr, depth int) bool {
	text, err := parser.Unparse(e, x.info)
	if err != nil {
		return false
	}
	p := Part{Expr: text, Depth: depth, Value: "not evaluated"}
	if v, ok := x.state.Value(e.ID()); ok {
		p.Value, p.Evaluated = FormatValue(v), true
	}
	x.parts = append(x.parts, p)
	return p.Evaluated
}

// isBind recognises the comprehension cel.bind expands to: no iteration, the bound value
// as the accumulator's initial value.
func isBind(c ast.ComprehensionExpr) bool {
	r := c.IterRange()
	return r.Kind() == ast.ListKind && len(r.AsList().Elements()) == 0 && c.AccuVar() != ""
}

// logicalOp returns the function name of an && or || call, else "".
func logicalOp(e ast.Expr) string {
	if e.Kind() != ast.CallKind {
		return ""
	}
	switch fn := e.AsCall().FunctionName(); fn {
	case operators.LogicalAnd, operators.LogicalOr:
		return fn
	}
	return ""
}

func isCall(e ast.Expr, fn string) bool {
	return e.Kind() == ast.CallKind && e.AsCall().FunctionName() == fn
}

// flatten returns the operands of a chain of one logical operator in source order.
func flatten(e ast.Expr, op string) []ast.Expr {
	if logicalOp(e) != op {
		return []ast.Expr{e}
	}
	var out []ast.Expr
	for _, a := range e.AsCall().Args() {
		out = append(out, flatten(a, op)...)
	}
	return out
}

func allLiterals(es []ast.Expr) bool {
	for _, e := range es {
		if e.Kind() != ast.LiteralKind {
			return false
		}
	}
	return true
}

// maxShown bounds how many elements of a list or map FormatValue prints.
const maxShown = 8

// FormatValue prints a CEL value the way a policy writes it: strings quoted, lists in
// brackets (the first few elements and a count), errors as such.
func FormatValue(v ref.Val) string {
	switch t := v.(type) {
	case types.String:
		s := string(t)
		if len(s) > 120 {
			s = s[:120] + "…"
		}
		return strconv.Quote(s)
	case *types.Err:
		return "error: " + t.Error()
	case traits.Lister:
		n := listSize(t)
		parts := make([]string, 0, min(n, maxShown))
		for i := 0; i < n && i < maxShown; i++ {
			parts = append(parts, FormatValue(t.Get(types.Int(i))))
		}
		if n > maxShown {
			parts = append(parts, fmt.Sprintf("… %d in all", n))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case traits.Mapper:
		it := t.Iterator()
		var parts []string
		for it.HasNext() == types.True {
			k := it.Next()
			if len(parts) == maxShown {
				parts = append(parts, "…")
				break
			}
			parts = append(parts, FormatValue(k)+": "+FormatValue(t.Get(k)))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return fmt.Sprint(v.Value())
}
