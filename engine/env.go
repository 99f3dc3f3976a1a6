package engine

import (
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/decls"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/ext"
)

// Default cost limits, the ones Kubernetes uses, for policy files that declare none.
const (
	DefaultExpressionCost uint64 = 1_000_000
	DefaultTurnCost       uint64 = 10_000_000
)

var listOfStrings = cel.ListType(cel.StringType)

// newEnv builds the CEL environment of the rules that run under the given entry stages: a
// variable is declared only when it exists in every one of them, so a pre_send rule that
// reads error.code fails to compile. With no stage every variable is declared.
func newEnv(stages []string) (*cel.Env, error) {
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
		cel.Function("starts_with",
			cel.Overload("starts_with_list_list", []*cel.Type{listOfStrings, listOfStrings}, cel.BoolType,
				cel.BinaryBinding(startsWithImpl)), decls.DisableTypeGuards(true)),
		cel.Function("overlaps",
			cel.Overload("overlaps_list_list", []*cel.Type{listOfStrings, listOfStrings}, cel.BoolType,
				cel.BinaryBinding(overlapsImpl)), decls.DisableTypeGuards(true)),
		cel.Function("is_response_id",
			cel.Overload("is_response_id_string", []*cel.Type{cel.StringType}, cel.BoolType,
				cel.UnaryBinding(isResponseIDImpl))),
	}
	for i := range variables {
		v := &variables[i]
		declared := true
		for _, st := range stages {
			if !v.existsIn(st) {
				declared = false
				break
			}
		}
		if declared {
			opts = append(opts, cel.Variable(v.name, v.typ))
		}
	}
	return cel.NewEnv(opts...)
}

// estimator gives the cost checker size hints for the context variables and costs for the
// domain functions, so that a runaway expression is refused at load time.
type estimator struct{}

// keyChars bounds one item key: an item type, a separator and an id or a content hash.
const keyChars = 2*hintIDChars + 1

// EstimateSize implements checker.CostEstimator with the variables' size hints.
func (estimator) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	name := strings.Join(n.Path(), ".")
	v, ok := variableByName[name]
	if !ok || v.size == 0 {
		return nil
	}
	s := cost.RangedSizeEstimate(0, v.size)
	switch v.typ.Kind() {
	case types.ListKind:
		elem := uint64(hintIDChars)
		if strings.HasSuffix(v.name, "_keys") {
			elem = keyChars
		}
		s = cost.ListSizeEstimate(s, cost.RangedSizeEstimate(0, elem))
	case types.MapKind:
		s = cost.MapSizeEstimate(s, cost.RangedSizeEstimate(0, hintIDChars), cost.RangedSizeEstimate(0, hintIDChars))
	}
	return &s
}

// EstimateCallCost implements checker.CostEstimator for the domain functions.
func (estimator) EstimateCallCost(function, _ string, _ *cost.AstNode, args []cost.AstNode) *cost.CallEstimate {
	var e estimator
	switch function {
	case "without", "intersect":
		if len(args) != 2 {
			return nil
		}
		sa := sizeOf(e, args[0])
		sb := sizeOf(e, args[1])
		work := sa.Multiply(sb).MultiplyByCostFactor(1)
		res := cost.ListSizeEstimate(cost.RangedSizeEstimate(0, sa.Max), cost.RangedSizeEstimate(0, hintIDChars))
		return cost.NewCallEstimate(work, &res)
	case "starts_with":
		if len(args) != 2 {
			return nil
		}
		// At most one comparison per element of the shorter list.
		sa, sp := sizeOf(e, args[0]), sizeOf(e, args[1])
		return cost.NewCallEstimate(cost.RangedCostEstimate(1, 1+min(sa.Max, sp.Max)), nil)
	case "overlaps":
		if len(args) != 2 {
			return nil
		}
		// One side is indexed, the other probed: linear in both.
		sa, sb := sizeOf(e, args[0]), sizeOf(e, args[1])
		return cost.NewCallEstimate(cost.RangedCostEstimate(1, 1+sa.Max+sb.Max), nil)
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
	var c uint64
	switch function {
	case "without", "intersect":
		if len(args) != 2 {
			return nil
		}
		c = uint64(listSize(args[0])*listSize(args[1])) + 1
	case "starts_with":
		if len(args) != 2 {
			return nil
		}
		c = uint64(min(listSize(args[0]), listSize(args[1]))) + 1
	case "overlaps":
		if len(args) != 2 {
			return nil
		}
		c = uint64(listSize(args[0])+listSize(args[1])) + 1
	case "is_response_id":
		c = 1
	default:
		return nil
	}
	return &c
}

// envCache builds one CEL environment per set of entry stages.
type envCache map[string]*cel.Env

func (c envCache) get(stages []string) (*cel.Env, error) {
	key := strings.Join(stages, ",")
	if env, ok := c[key]; ok {
		return env, nil
	}
	env, err := newEnv(stages)
	if err != nil {
		return nil, err
	}
	c[key] = env
	return env, nil
}
