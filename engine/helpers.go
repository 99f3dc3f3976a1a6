package engine

import (
	"strings"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
)

// The domain helpers of the CEL environment. The checker proves their arguments' types, so
// the implementations run without CEL's runtime type guards.

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
	if _, indexed := lb.(*keyList); !indexed {
		if sa, ok := nativeList(la); ok {
			if sb, ok := nativeList(lb); ok {
				return filterStrings(la, sa, sb, keep)
			}
		}
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

// filterStrings is filterList on Go strings (la holds a): it boxes nothing, and returns la
// itself when it keeps every element.
func filterStrings(la ref.Val, a, b []string, keep bool) ref.Val {
	kept := 0
	for _, e := range a {
		if contains(b, e) == keep {
			kept++
		}
	}
	switch kept {
	case 0:
		return emptyList
	case len(a):
		return la
	}
	out := make([]string, 0, kept)
	for _, e := range a {
		if contains(b, e) == keep {
			out = append(out, e)
		}
	}
	return stringList(out)
}

func isResponseIDImpl(v ref.Val) ref.Val {
	return boolVal(strings.HasPrefix(string(v.(types.String)), "resp_"))
}

// startsWithImpl reports whether list a begins with list prefix, element by element.
func startsWithImpl(a, prefix ref.Val) ref.Val {
	la, ok1 := a.(traits.Lister)
	lp, ok2 := prefix.(traits.Lister)
	if !ok1 || !ok2 {
		return types.NewErr("starts_with needs two lists")
	}
	if sa, ok := nativeStrings(la); ok {
		if sp, ok := nativeStrings(lp); ok {
			if len(sp) > len(sa) {
				return types.False
			}
			for i, s := range sp {
				if sa[i] != s {
					return types.False
				}
			}
			return types.True
		}
	}
	na, np := listSize(la), listSize(lp)
	if np > na {
		return types.False
	}
	for i := 0; i < np; i++ {
		if la.Get(types.Int(i)).Equal(lp.Get(types.Int(i))) != types.True {
			return types.False
		}
	}
	return types.True
}

// overlapsImpl reports whether some element is in both lists. A side that indexes its
// elements (previous.item_keys) is probed; otherwise the shorter side is indexed.
func overlapsImpl(a, b ref.Val) ref.Val {
	la, ok1 := a.(traits.Lister)
	lb, ok2 := b.(traits.Lister)
	if !ok1 || !ok2 {
		return types.NewErr("overlaps needs two lists")
	}
	if _, ok := la.(*keyList); ok {
		la, lb = lb, la
	}
	probe, pok := nativeStrings(la)
	if kl, ok := lb.(*keyList); ok && pok {
		set := kl.prev.keys()
		for _, s := range probe {
			if _, hit := set[s]; hit {
				return types.True
			}
		}
		return types.False
	}
	other, ook := nativeStrings(lb)
	if pok && ook {
		if len(probe) > len(other) {
			probe, other = other, probe
		}
		if len(probe) == 0 {
			return types.False
		}
		set := make(map[string]struct{}, len(probe))
		for _, s := range probe {
			set[s] = struct{}{}
		}
		for _, s := range other {
			if _, hit := set[s]; hit {
				return types.True
			}
		}
		return types.False
	}
	n := listSize(la)
	for i := 0; i < n; i++ {
		if lb.Contains(la.Get(types.Int(i))) == types.True {
			return types.True
		}
	}
	return types.False
}

// nativeStrings returns the Go strings behind a list of strings: those of a list the engine
// built as they are, else unboxed into a new slice.
func nativeStrings(l traits.Lister) ([]string, bool) {
	if v, ok := nativeList(l); ok {
		return v, true
	}
	if v, ok := l.Value().([]string); ok {
		return v, true
	}
	n := listSize(l)
	out := make([]string, n)
	for i := 0; i < n; i++ {
		s, ok := l.Get(types.Int(i)).(types.String)
		if !ok {
			return nil, false
		}
		out[i] = string(s)
	}
	return out, true
}

// keyList is previous.item_keys: the previous turn's keys, boxed only when read, whose
// membership tests use the Previous's cached key set.
type keyList struct {
	*strList
	prev *Previous
}

// Contains implements traits.Container with the cached key set once it exists.
func (l *keyList) Contains(elem ref.Val) ref.Val {
	s, ok := elem.(types.String)
	if !ok || l.prev.keySet == nil {
		return l.strList.Contains(elem)
	}
	_, hit := l.prev.keySet[string(s)]
	return boolVal(hit)
}

func listSize(v ref.Val) int {
	if l, ok := v.(traits.Lister); ok {
		if n, ok := l.Size().(types.Int); ok {
			return int(n)
		}
	}
	return 0
}
