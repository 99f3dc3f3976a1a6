package engine

import (
	"cmp"
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
