package engine

import (
	"fmt"
	"math/bits"
)

// varSet is a set of variables by index (variables), a value type: the activation tracks
// with it which cached values it holds and which a change makes stale, without walking
// every variable.
type varSet [2]uint64

// maxVariables is what a varSet holds; grow varSet before the turn context outgrows it.
const maxVariables = 128

func init() {
	if len(variables) > maxVariables {
		panic(fmt.Sprintf("engine: %d variables, a varSet holds %d", len(variables), maxVariables))
	}
}

// add puts i in the set.
func (s *varSet) add(i int) { s[i/64] |= 1 << (i % 64) }

func (s varSet) and(o varSet) varSet    { return varSet{s[0] & o[0], s[1] & o[1]} }
func (s varSet) andNot(o varSet) varSet { return varSet{s[0] &^ o[0], s[1] &^ o[1]} }

// each calls f with every index in the set, in increasing order.
func (s varSet) each(f func(i int)) {
	for w, word := range s {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			f(w*64 + b)
			word &^= 1 << b
		}
	}
}
