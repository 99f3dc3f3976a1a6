package engine

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// position maps a CEL location (1-based line, 0-based column) to the file.
func (e Expr) position(line, col int) Pos {
	if line <= 0 {
		return e.Pos
	}
	if e.srcMap != nil {
		off := 0
		for i, l := range strings.Split(e.Text, "\n") {
			if i == line-1 {
				break
			}
			off += utf8.RuneCountInString(l) + 1
		}
		off += col
		switch {
		case off < len(e.srcMap):
			return e.srcMap[off]
		case len(e.srcMap) > 0:
			last := e.srcMap[len(e.srcMap)-1]
			last.Col += off - len(e.srcMap) + 1
			return last
		}
	}
	if e.block {
		// Block lines are indented by the scalar's indentation, which CEL saw stripped.
		return Pos{File: e.Pos.File, Line: e.lineBase + line, Col: e.colBase + col + 1}
	}
	if line == 1 {
		return Pos{File: e.Pos.File, Line: e.lineBase + line, Col: e.colBase + col + 1}
	}
	return Pos{File: e.Pos.File, Line: e.lineBase + line, Col: col + 1}
}

// flowSourceMap finds, for each rune of a flow scalar's value, where it stands in the file:
// folded line breaks, indentation and escapes are walked over the way YAML read them.
func flowSourceMap(lines []string, n *yaml.Node, file string) []Pos {
	if n.Line <= 0 || n.Line > len(lines) {
		return nil
	}
	src := make([][]rune, len(lines))
	for i, l := range lines {
		src[i] = []rune(strings.TrimRight(l, "\r"))
	}
	l, c := n.Line-1, n.Column-1
	var quote rune
	switch n.Style {
	case yaml.DoubleQuotedStyle:
		quote = '"'
	case yaml.SingleQuotedStyle:
		quote = '\''
	}
	if quote != 0 {
		c++
	}
	at := func() (rune, bool) {
		if l >= len(src) {
			return 0, false
		}
		if c >= len(src[l]) {
			return '\n', true
		}
		return src[l][c], true
	}
	advance := func() {
		if l < len(src) && c >= len(src[l]) {
			l, c = l+1, 0
			return
		}
		c++
	}
	value := []rune(n.Value)
	out := make([]Pos, len(value))
	for i, v := range value {
		cur, ok := at()
		if !ok {
			return nil
		}
		if v != ' ' && v != '\t' && v != '\n' || (quote == '"' && cur == '\\') {
			// Walk over what folding removed: indentation and line breaks.
			for ok && (cur == ' ' || cur == '\t' || cur == '\n') && !(quote == '"' && cur == '\\') {
				advance()
				cur, ok = at()
			}
			if !ok {
				return nil
			}
		}
		out[i] = Pos{File: file, Line: l + 1, Col: c + 1}
		switch {
		case quote == '"' && cur == '\\':
			width := 2
			if c+1 < len(src[l]) {
				switch src[l][c+1] {
				case 'x':
					width = 4
				case 'u':
					width = 6
				case 'U':
					width = 10
				}
			}
			for k := 0; k < width; k++ {
				advance()
			}
		case quote == '\'' && cur == '\'':
			advance()
			advance()
		default:
			advance()
		}
	}
	return out
}

// errorPos maps the location of a CEL error to the file. CEL places a field selection at its
// '.' and a global call at its '('; the author wants the field or function name, so the column
// moves onto it.
func (e Expr) errorPos(line, col int, msg string) Pos {
	lines := strings.Split(e.Text, "\n")
	if line >= 1 && line <= len(lines) && col >= 0 && !strings.HasPrefix(msg, "Syntax error") {
		r := []rune(lines[line-1])
		switch {
		case col+1 < len(r) && r[col] == '.' && isIdentRune(r[col+1]):
			col++
		case col < len(r) && col > 0 && r[col] == '(' && isIdentRune(r[col-1]):
			for col > 0 && isIdentRune(r[col-1]) {
				col--
			}
		}
	}
	return e.position(line, col)
}

func isIdentRune(r rune) bool {
	return r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

// blockSource rebuilds a block scalar from the file's own lines, keeping its line breaks, so
// that CEL's line numbers are the file's. It is used only when the rebuilt text says the same
// as YAML's value up to white space (CEL does not care about line breaks between tokens).
func blockSource(lines []string, n *yaml.Node) (string, int, bool) {
	if n.Line <= 0 || n.Line >= len(lines) {
		return "", 0, false
	}
	indent := -1
	var out []string
	for _, l := range lines[n.Line:] {
		trimmed := strings.TrimLeft(l, " ")
		if trimmed == "" {
			out = append(out, "")
			continue
		}
		ind := len(l) - len(trimmed)
		if indent < 0 {
			indent = ind
		}
		if ind < indent {
			break
		}
		out = append(out, l[indent:])
	}
	for len(out) > 0 && out[len(out)-1] == "" {
		out = out[:len(out)-1]
	}
	text := strings.Join(out, "\n")
	if indent < 0 || strings.Join(strings.Fields(text), " ") != strings.Join(strings.Fields(n.Value), " ") {
		return "", 0, false
	}
	return text, indent, true
}

var yamlLineRe = regexp.MustCompile(`line (\d+)(?:, column (\d+))?(?:: )?`)

func yamlErrPos(file string, err error) Pos {
	p := Pos{File: file, Line: 1, Col: 1}
	var te *yaml.TypeError
	msg := err.Error()
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0]
	}
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		fmt.Sscanf(m[1], "%d", &p.Line)
		p.Col = 1
		if m[2] != "" {
			fmt.Sscanf(m[2], "%d", &p.Col)
		}
	}
	return p
}

// yamlLocateBudget bounds the bytes locateYAMLError parses, so a huge broken file costs
// little more than one parse.
const yamlLocateBudget = 4 << 20

// locateYAMLError finds the character where a YAML syntax error is. go.yaml.in/yaml/v3
// reports only a line, and for parser errors the 0-based line of the enclosing construct, so
// the position is where the document stops parsing for good: the line after the longest
// prefix of whole lines that still parses, and in that line the column after the longest
// prefix that still parses. Over budget it returns the library's line.
func locateYAMLError(data []byte, fallback Pos) Pos {
	parses := func(b []byte) bool {
		var n yaml.Node
		return yaml.Unmarshal(b, &n) == nil
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	offs := make([]int, len(lines)+1)
	for i, l := range lines {
		offs[i+1] = offs[i] + len(l)
	}
	budget := yamlLocateBudget
	k := -1
	for i := len(lines) - 1; i >= 0; i-- {
		if budget -= offs[i]; budget < 0 {
			return fallback
		}
		if parses(data[:offs[i]]) {
			k = i
			break
		}
	}
	if k < 0 {
		return fallback
	}
	p := Pos{File: fallback.File, Line: k + 1, Col: 1}
	line := []rune(string(lines[k]))
	for c := len(line) - 1; c > 0; c-- {
		prefix := append(data[:offs[k]:offs[k]], string(line[:c])...)
		if budget -= len(prefix); budget < 0 {
			return p
		}
		if parses(prefix) {
			p.Col = c + 1
			return p
		}
	}
	return p
}

func yamlErrMsg(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	return yamlLineRe.ReplaceAllString(msg, "")
}
