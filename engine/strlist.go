package engine

import (
	"reflect"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
)

// strList is a CEL list of Go strings, the type of every list variable of the turn context
// and of what the domain helpers return. The helpers read its strings directly: CEL's own
// list hands its slice out only through an interface, which allocates on every call. Size
// and membership work on the strings too; every other operation is CEL's own string
// list's, built on first use, so the list behaves exactly as one.
//
// A strList belongs to one evaluation (one goroutine): the CEL list is built lazily. The
// strings must not change while the list is in use.
type strList struct {
	s    []string
	list traits.Lister
}

// emptyList is the empty list, shared: its CEL list is built up front, so it never changes.
var emptyList = &strList{s: []string{}, list: types.NewStringList(types.DefaultTypeAdapter, []string{})}

// stringList wraps s as a CEL list without copying or boxing it.
func stringList(s []string) ref.Val {
	if len(s) == 0 {
		return emptyList
	}
	return &strList{s: s}
}

var (
	_ traits.Lister   = (*strList)(nil)
	_ traits.Foldable = (*strList)(nil)
)

func (l *strList) lister() traits.Lister {
	if l.list == nil {
		l.list = types.NewStringList(types.DefaultTypeAdapter, l.s)
	}
	return l.list
}

// Size implements traits.Sizer.
func (l *strList) Size() ref.Val { return types.Int(len(l.s)) }

// Contains implements traits.Container on the Go strings.
func (l *strList) Contains(elem ref.Val) ref.Val {
	s, ok := elem.(types.String)
	if !ok {
		return l.lister().Contains(elem)
	}
	return boolVal(contains(l.s, string(s)))
}

// Type implements ref.Val.
func (l *strList) Type() ref.Type { return types.ListType }

// Value implements ref.Val: the []string.
func (l *strList) Value() any { return l.s }

// ConvertToNative implements ref.Val.
func (l *strList) ConvertToNative(t reflect.Type) (any, error) {
	return l.lister().ConvertToNative(t)
}

// ConvertToType implements ref.Val.
func (l *strList) ConvertToType(t ref.Type) ref.Val { return l.lister().ConvertToType(t) }

// Equal implements ref.Val.
func (l *strList) Equal(other ref.Val) ref.Val {
	if o, ok := other.(*strList); ok {
		return boolVal(stringsEqual(l.s, o.s))
	}
	return l.lister().Equal(other)
}

// Add implements traits.Adder.
func (l *strList) Add(other ref.Val) ref.Val { return l.lister().Add(other) }

// Get implements traits.Indexer.
func (l *strList) Get(index ref.Val) ref.Val { return l.lister().Get(index) }

// GetInt64Index is CEL's fast path for an index with a constant (list[0]).
func (l *strList) GetInt64Index(i int64) (any, bool) {
	if i < 0 || i >= int64(len(l.s)) {
		return nil, false
	}
	return boxString(l.s[i]), true
}

// Iterator implements traits.Iterable.
func (l *strList) Iterator() traits.Iterator { return l.lister().Iterator() }

// Fold implements traits.Foldable, CEL's fast path for comprehensions, as CEL's string
// list does: the index and the element of each entry.
func (l *strList) Fold(f traits.Folder) {
	for i, e := range l.s {
		if !f.FoldEntry(i, boxString(e)) {
			break
		}
	}
}

// IsZeroValue reports whether the list is empty.
func (l *strList) IsZeroValue() bool { return len(l.s) == 0 }

// String formats the list as CEL does.
func (l *strList) String() string {
	if s, ok := l.lister().(interface{ String() string }); ok {
		return s.String()
	}
	return ""
}

func stringsEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// nativeList returns the Go strings of a list the engine built (a variable or a helper's
// result), without copying.
func nativeList(v ref.Val) ([]string, bool) {
	switch l := v.(type) {
	case *strList:
		return l.s, true
	case *keyList:
		return l.s, true
	}
	return nil, false
}
