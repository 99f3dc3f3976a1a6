package engine

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Pos is a position in a policy file. Line and Col are 1-based; zero means unknown.
type Pos struct {
	File string
	Line int
	Col  int
}

// String formats the position as file:line:col.
func (p Pos) String() string {
	switch {
	case p.Line == 0:
		return p.File
	case p.Col == 0:
		return fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
}

// Severity separates errors, which refuse a policy set, from lint warnings, which do not.
type Severity int

// Severities.
const (
	SevError Severity = iota
	SevLint
)

// Diagnostic is one finding about a policy file.
type Diagnostic struct {
	Pos      Pos
	Severity Severity
	Msg      string
}

// String formats the diagnostic as file:line:col: message.
func (d Diagnostic) String() string {
	if d.Severity == SevLint {
		return d.Pos.String() + ": lint: " + d.Msg
	}
	return d.Pos.String() + ": " + d.Msg
}

// String names the severity as reports write it: "error" or "lint".
func (s Severity) String() string {
	if s == SevLint {
		return "lint"
	}
	return "error"
}

// MarshalJSON writes the diagnostic as {file, line, col, severity, message}, the shape of
// `policyctl validate -o json`.
func (d Diagnostic) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		File     string `json:"file"`
		Line     int    `json:"line"`
		Col      int    `json:"col"`
		Severity string `json:"severity"`
		Message  string `json:"message"`
	}{d.Pos.File, d.Pos.Line, d.Pos.Col, d.Severity.String(), d.Msg})
}

// Diagnostics is a sorted list of findings. As an error it reports every finding, one per line.
type Diagnostics []Diagnostic

// Error implements error.
func (ds Diagnostics) Error() string {
	var b strings.Builder
	for i, d := range ds {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(d.String())
	}
	return b.String()
}

// HasErrors reports whether any finding is an error rather than a lint warning.
func (ds Diagnostics) HasErrors() bool {
	return slices.ContainsFunc(ds, func(d Diagnostic) bool { return d.Severity == SevError })
}

// Errors returns only the error findings.
func (ds Diagnostics) Errors() Diagnostics {
	return slices.DeleteFunc(slices.Clone(ds), func(d Diagnostic) bool { return d.Severity != SevError })
}

// Lints returns only the lint findings.
func (ds Diagnostics) Lints() Diagnostics {
	return slices.DeleteFunc(slices.Clone(ds), func(d Diagnostic) bool { return d.Severity != SevLint })
}

func (ds Diagnostics) sorted() Diagnostics {
	slices.SortStableFunc(ds, func(a, b Diagnostic) int {
		return cmp.Or(
			cmp.Compare(a.Pos.File, b.Pos.File),
			cmp.Compare(a.Pos.Line, b.Pos.Line),
			cmp.Compare(a.Pos.Col, b.Pos.Col),
		)
	})
	return slices.CompactFunc(ds, func(a, b Diagnostic) bool { return a == b })
}

type diagSink struct {
	list Diagnostics
	// lines are the current file's lines, to map block scalars back to the file.
	lines []string
}

func (s *diagSink) errorf(p Pos, format string, args ...any) {
	s.list = append(s.list, Diagnostic{Pos: p, Severity: SevError, Msg: fmt.Sprintf(format, args...)})
}

func (s *diagSink) lintf(p Pos, format string, args ...any) {
	s.list = append(s.list, Diagnostic{Pos: p, Severity: SevLint, Msg: fmt.Sprintf(format, args...)})
}

// Suggest returns the candidate closest to got, for a did-you-mean hint: the one with the
// fewest edits (insertions, deletions, substitutions, swaps of neighbours), when that is
// at most a third of got's length (and at least one edit is allowed). It returns "" when
// nothing is close, so a hint never guesses wildly.
func Suggest(got string, candidates []string) string {
	best, bestD := "", -1
	limit := max(1, len([]rune(got))/3)
	for _, c := range candidates {
		if c == got {
			continue
		}
		d := editDistance(got, c)
		if d <= limit && (bestD < 0 || d < bestD || d == bestD && c < best) {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance: Levenshtein plus the swap of two
// neighbouring characters as one edit (pre_sned → pre_send), the typo people make most.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}
