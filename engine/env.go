package engine

import (
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/decls"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/ext"
)

// Default cost limits, the ones Kubernetes uses, for policy files that declare none.
const (
	DefaultExpressionCost uint64 = 1_000_000
	DefaultTurnCost       uint64 = 10_000_000
)

// newEnv builds the CEL environment of a stage. Error variables exist only where an upstream
// error is recovered, so a pre_send rule that reads error.code fails to compile.
func newEnv(withError bool) (*cel.Env, error) {
	opts := []cel.EnvOption{
		ext.Strings(),
		ext.Sets(),
		ext.Lists(),
		ext.Bindings(),
		cel.CrossTypeNumericComparisons(true),
		// The checker proves both arguments are lists of strings; the runtime guard would
		// walk every element again on every call.
		cel.Function("without",
			cel.Overload("without_list_list", []*cel.Type{listOfStrings, listOfStrings}, listOfStrings,
				cel.BinaryBinding(withoutImpl)), decls.DisableTypeGuards(true)),
		cel.Function("intersect",
			cel.Overload("intersect_list_list", []*cel.Type{listOfStrings, listOfStrings}, listOfStrings,
				cel.BinaryBinding(intersectImpl)), decls.DisableTypeGuards(true)),
		cel.Function("is_response_id",
			cel.Overload("is_response_id_string", []*cel.Type{cel.StringType}, cel.BoolType,
				cel.UnaryBinding(func(v ref.Val) ref.Val {
					return boolVal(strings.HasPrefix(string(v.(types.String)), "resp_"))
				}))),
	}
	for _, v := range variables {
		if v.errorOnly && !withError {
			continue
		}
		opts = append(opts, cel.Variable(v.name, v.typ))
	}
	return cel.NewEnv(opts...)
}

// withoutImpl returns the elements of a that are not in b, keeping a's order.
func withoutImpl(a, b ref.Val) ref.Val {
	return filterList(a, b, false)
}

// intersectImpl returns the elements of a that are in b, keeping a's order.
func intersectImpl(a, b ref.Val) ref.Val {
	return filterList(a, b, true)
}

func filterList(a, b ref.Val, keep bool) ref.Val {
	la, ok1 := a.(traits.Lister)
	lb, ok2 := b.(traits.Lister)
	if !ok1 || !ok2 {
		return types.NewErr("without/intersect need two lists")
	}
	n := int(la.Size().(types.Int))
	var out []ref.Val
	for i := 0; i < n; i++ {
		e := la.Get(types.Int(i))
		if lb.Contains(e) == types.Bool(keep) {
			if out == nil {
				out = make([]ref.Val, 0, n-i)
			}
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		return emptyList
	}
	return types.NewRefValList(types.DefaultTypeAdapter, out)
}

// estimator gives the cost checker size hints for the context variables and costs for the
// domain functions, so that a runaway expression is refused at load time.
type estimator struct{}

func (estimator) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	name := strings.Join(n.Path(), ".")
	v, ok := variableByName[name]
	if !ok || v.size == 0 {
		return nil
	}
	s := cost.RangedSizeEstimate(0, v.size)
	switch v.typ.Kind() {
	case types.ListKind:
		s = cost.ListSizeEstimate(s, cost.RangedSizeEstimate(0, hintIDChars))
	case types.MapKind:
		s = cost.MapSizeEstimate(s, cost.RangedSizeEstimate(0, hintIDChars), cost.RangedSizeEstimate(0, hintIDChars))
	}
	return &s
}

func (estimator) EstimateCallCost(function, _ string, target *cost.AstNode, args []cost.AstNode) *cost.CallEstimate {
	switch function {
	case "without", "intersect":
		if len(args) != 2 {
			return nil
		}
		var e estimator
		sa := sizeOf(e, args[0])
		sb := sizeOf(e, args[1])
		work := sa.Multiply(sb).MultiplyByCostFactor(1)
		res := cost.ListSizeEstimate(cost.RangedSizeEstimate(0, sa.Max), cost.RangedSizeEstimate(0, hintIDChars))
		return cost.NewCallEstimate(work, &res)
	case "is_response_id":
		return cost.NewCallEstimate(cost.FixedCostEstimate(1), nil)
	case "string":
		// A number's decimal form is short; the default estimate treats the result as
		// unbounded and refuses every expression that prints one.
		if len(args) == 1 {
			switch args[0].Type().Kind() {
			case types.IntKind, types.UintKind, types.DoubleKind, types.BoolKind:
				sz := cost.RangedSizeEstimate(1, 32)
				return cost.NewCallEstimate(cost.FixedCostEstimate(1), &sz)
			}
		}
	}
	return nil
}

func sizeOf(e estimator, n cost.AstNode) cost.SizeEstimate {
	if s := e.EstimateSize(n); s != nil {
		return *s
	}
	if s := n.ComputedSize(); s != nil {
		return *s
	}
	return cost.RangedSizeEstimate(0, hintIDList)
}

// CallCost implements cost.ActualCostEstimator for the domain functions at run time.
func (estimator) CallCost(function, _ string, args []ref.Val, _ ref.Val) *uint64 {
	switch function {
	case "without", "intersect":
		if len(args) != 2 {
			return nil
		}
		c := uint64(listSize(args[0])*listSize(args[1])) + 1
		return &c
	case "is_response_id":
		c := uint64(1)
		return &c
	}
	return nil
}

func listSize(v ref.Val) int {
	if l, ok := v.(traits.Lister); ok {
		if n, ok := l.Size().(types.Int); ok {
			return int(n)
		}
	}
	return 0
}
