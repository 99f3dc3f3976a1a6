package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Stage names the gateway evaluates. Other stage names are sub-stages that rules enter with
// the run_stage action.
const (
	StagePreSend         = "pre_send"
	StageOnUpstreamError = "on_upstream_error"
)

// Control values of a rule's then field.
const (
	ThenContinue = "continue"
	ThenStop     = "stop"
)

// Source is one policy file's name and bytes.
type Source struct {
	Name string
	Data []byte
}

// Expr is a CEL expression with the position of its first character in the policy file.
type Expr struct {
	Text string
	Pos  Pos
	// lineBase and colBase map CEL's expression-relative locations back into the file.
	lineBase, colBase int
	// block is true for YAML block scalars, whose lines keep their own indentation.
	block bool
	// srcMap gives the file position of each rune of Text, for flow scalars (plain and
	// quoted), whose folding and escapes move characters away from where CEL counts them.
	srcMap []Pos
}

// Limits are the CEL cost limits a policy file declares.
type Limits struct {
	// ExpressionCost caps one expression, both its static estimate and its runtime cost.
	ExpressionCost uint64
	// TurnCost caps the runtime cost of all expressions evaluated for one stage of one turn.
	TurnCost uint64
}

// Reason documents a reason label.
type Reason struct {
	Name        string
	Description string
	Pos         Pos
}

// Policy is one parsed policy file.
type Policy struct {
	Name        string
	Description string
	File        string
	Limits      Limits
	Reasons     []Reason
	Rules       []*Rule
	Pos         Pos
}

// Rule is one ordered rule.
type Rule struct {
	ID          string
	Description string
	Stage       string
	Group       string
	When        Expr
	Actions     []*Action
	Reason      string
	Then        string
	Shadow      bool
	Pos         Pos
	stagePos    Pos
	reasonPos   Pos
}

// Action is one typed action of a rule. Args holds the action's CEL arguments by name;
// Word holds a literal argument (the stage of run_stage, the placement of insert_outputs).
type Action struct {
	Kind ActionKind
	If   *Expr
	Args map[string]Expr
	Word string
	Pos  Pos
}

var (
	idPattern    = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)
	stagePattern = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	reasonPatten = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
)

// maxPolicyBytes bounds one policy file; a larger one is refused before it is parsed.
const maxPolicyBytes = 1 << 20

// ParsePolicy parses one policy file, reporting every problem with its position.
func ParsePolicy(src Source) (*Policy, Diagnostics) {
	var sink diagSink
	p := parsePolicy(src, &sink)
	return p, sink.list.sorted()
}

func parsePolicy(src Source, sink *diagSink) *Policy {
	file := src.Name
	if len(src.Data) > maxPolicyBytes {
		sink.errorf(Pos{File: file, Line: 1, Col: 1}, "policy file is %d bytes, over the limit of %d", len(src.Data), maxPolicyBytes)
		return nil
	}
	if len(bytes.TrimSpace(src.Data)) == 0 {
		sink.errorf(Pos{File: file, Line: 1, Col: 1}, "empty policy file")
		return nil
	}
	sink.lines = strings.Split(string(src.Data), "\n")
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(src.Data))
	if err := dec.Decode(&doc); err != nil {
		sink.errorf(locateYAMLError(src.Data, yamlErrPos(file, err)), "yaml: %s", yamlErrMsg(err))
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		sink.errorf(Pos{File: file, Line: extra.Line, Col: extra.Column}, "a policy file holds one YAML document")
	case !errors.Is(err, io.EOF):
		sink.errorf(locateYAMLError(src.Data, yamlErrPos(file, err)), "yaml: %s", yamlErrMsg(err))
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		sink.errorf(Pos{File: file, Line: 1, Col: 1}, "empty policy file")
		return nil
	}
	root := doc.Content[0]
	pos := func(n *yaml.Node) Pos { return Pos{File: file, Line: n.Line, Col: n.Column} }
	if root.Kind != yaml.MappingNode {
		sink.errorf(pos(root), "a policy file must be a mapping with policy and rules")
		return nil
	}
	p := &Policy{File: file, Pos: pos(root)}
	var rulesNode *yaml.Node
	eachKey(root, sink, file, func(k, v *yaml.Node) {
		switch k.Value {
		case "policy", "name":
			p.Name = scalar(v, sink, file, k.Value)
		case "description":
			p.Description = scalar(v, sink, file, k.Value)
		case "apiVersion":
			if s := scalar(v, sink, file, k.Value); s != "chainmend/v1" {
				sink.errorf(pos(v), "unsupported apiVersion %q (want chainmend/v1)", s)
			}
		case "limits":
			eachKey(v, sink, file, func(lk, lv *yaml.Node) {
				switch lk.Value {
				case "expression_cost":
					p.Limits.ExpressionCost = uintScalar(lv, sink, file, lk.Value)
				case "turn_cost":
					p.Limits.TurnCost = uintScalar(lv, sink, file, lk.Value)
				default:
					sink.errorf(pos(lk), "unknown field %q in limits (known: expression_cost, turn_cost)", lk.Value)
				}
			})
		case "reasons":
			if v.Kind != yaml.SequenceNode {
				sink.errorf(pos(v), "reasons must be a list")
				return
			}
			for _, rn := range v.Content {
				r := Reason{Pos: pos(rn)}
				eachKey(rn, sink, file, func(rk, rv *yaml.Node) {
					switch rk.Value {
					case "name":
						r.Name = scalar(rv, sink, file, rk.Value)
					case "description":
						r.Description = scalar(rv, sink, file, rk.Value)
					default:
						sink.errorf(pos(rk), "unknown field %q in reason (known: name, description)", rk.Value)
					}
				})
				if !reasonPatten.MatchString(r.Name) {
					sink.errorf(r.Pos, "reason name %q must match %s", r.Name, reasonPatten)
				}
				p.Reasons = append(p.Reasons, r)
			}
		case "rules":
			rulesNode = v
		default:
			sink.errorf(pos(k), "unknown field %q (known: apiVersion, policy, description, limits, reasons, rules)", k.Value)
		}
	})
	if p.Name == "" {
		sink.errorf(pos(root), "missing field \"policy\" (the policy's name)")
	}
	if rulesNode == nil {
		sink.errorf(pos(root), "missing field \"rules\"")
		return p
	}
	if rulesNode.Kind != yaml.SequenceNode {
		sink.errorf(pos(rulesNode), "rules must be a list")
		return p
	}
	for _, rn := range rulesNode.Content {
		if r := parseRule(rn, sink, file); r != nil {
			p.Rules = append(p.Rules, r)
		}
	}
	return p
}

func parseRule(n *yaml.Node, sink *diagSink, file string) *Rule {
	pos := func(n *yaml.Node) Pos { return Pos{File: file, Line: n.Line, Col: n.Column} }
	if n.Kind != yaml.MappingNode {
		sink.errorf(pos(n), "a rule must be a mapping")
		return nil
	}
	r := &Rule{Pos: pos(n), Then: ThenContinue}
	seenWhen := false
	eachKey(n, sink, file, func(k, v *yaml.Node) {
		switch k.Value {
		case "id":
			r.ID = scalar(v, sink, file, k.Value)
			if r.ID != "" && !idPattern.MatchString(r.ID) {
				sink.errorf(pos(v), "rule id %q must match %s", r.ID, idPattern)
			}
		case "description":
			r.Description = scalar(v, sink, file, k.Value)
		case "stage":
			r.Stage = scalar(v, sink, file, k.Value)
			r.stagePos = pos(v)
			if r.Stage != "" && !stagePattern.MatchString(r.Stage) {
				sink.errorf(pos(v), "stage %q must match %s", r.Stage, stagePattern)
			}
		case "group":
			r.Group = scalar(v, sink, file, k.Value)
		case "when":
			seenWhen = true
			r.When = exprOf(v, sink, file, k.Value)
		case "reason":
			r.Reason = scalar(v, sink, file, k.Value)
			r.reasonPos = pos(v)
			if r.Reason != "" && !reasonPatten.MatchString(r.Reason) {
				sink.errorf(pos(v), "reason %q must match %s (it becomes a metric label)", r.Reason, reasonPatten)
			}
		case "then":
			r.Then = scalar(v, sink, file, k.Value)
			if r.Then != ThenContinue && r.Then != ThenStop {
				sink.errorf(pos(v), "then must be %q or %q, not %q", ThenContinue, ThenStop, r.Then)
			}
		case "shadow":
			switch scalar(v, sink, file, k.Value) {
			case "true":
				r.Shadow = true
			case "false":
			default:
				sink.errorf(pos(v), "shadow must be true or false")
			}
		case "actions":
			if v.Kind != yaml.SequenceNode {
				sink.errorf(pos(v), "actions must be a list")
				return
			}
			for _, an := range v.Content {
				if a := parseAction(an, sink, file); a != nil {
					r.Actions = append(r.Actions, a)
				}
			}
		default:
			sink.errorf(pos(k), "unknown field %q in rule (known: id, description, stage, group, when, actions, reason, then, shadow)", k.Value)
		}
	})
	if r.ID == "" {
		sink.errorf(r.Pos, "rule without id")
	}
	if r.Stage == "" {
		sink.errorf(r.Pos, "rule %q without stage", r.ID)
	}
	if !seenWhen {
		sink.errorf(r.Pos, "rule %q without when (write `when: true` for a rule that always fires)", r.ID)
	}
	if r.Reason == "" {
		r.Reason = strings.ReplaceAll(strings.ReplaceAll(r.ID, "-", "_"), ".", "_")
		r.reasonPos = r.Pos
	}
	return r
}

func parseAction(n *yaml.Node, sink *diagSink, file string) *Action {
	pos := func(n *yaml.Node) Pos { return Pos{File: file, Line: n.Line, Col: n.Column} }
	a := &Action{Pos: pos(n), Args: map[string]Expr{}}
	// A bare word names an action without arguments: `- replay`.
	if n.Kind == yaml.ScalarNode {
		spec, ok := actionSpecs[ActionKind(n.Value)]
		if !ok {
			sink.errorf(pos(n), "unknown action %q (known: %s)", n.Value, knownActions())
			return nil
		}
		if len(spec.required) > 0 || spec.word {
			sink.errorf(pos(n), "action %s needs arguments", n.Value)
			return nil
		}
		a.Kind = spec.kind
		return a
	}
	if n.Kind != yaml.MappingNode {
		sink.errorf(pos(n), "an action must be a mapping like `- set_previous_response_id: session.expected`")
		return nil
	}
	var kindKey, kindVal *yaml.Node
	eachKey(n, sink, file, func(k, v *yaml.Node) {
		if k.Value == "if" {
			e := exprOf(v, sink, file, "if")
			a.If = &e
			return
		}
		if _, ok := actionSpecs[ActionKind(k.Value)]; !ok {
			sink.errorf(pos(k), "unknown action %q (known: %s)", k.Value, knownActions())
			return
		}
		if kindKey != nil {
			sink.errorf(pos(k), "one action per list entry: %s and %s", kindKey.Value, k.Value)
			return
		}
		kindKey, kindVal = k, v
	})
	if kindKey == nil {
		if a.If != nil {
			sink.errorf(a.Pos, "action entry has an if but no action")
		}
		return nil
	}
	spec := actionSpecs[ActionKind(kindKey.Value)]
	a.Kind = spec.kind
	switch {
	case spec.word:
		a.Word = scalar(kindVal, sink, file, kindKey.Value)
	case spec.single != "":
		// The short form `- set_previous_response_id: EXPR` is the action's one argument.
		if kindVal.Kind == yaml.MappingNode {
			parseArgs(a, spec, kindVal, sink, file)
		} else {
			a.Args[spec.single] = exprOf(kindVal, sink, file, kindKey.Value)
		}
	default:
		switch {
		case kindVal.Kind == yaml.MappingNode:
			parseArgs(a, spec, kindVal, sink, file)
		case kindVal.Tag == "!!null", kindVal.Kind == yaml.ScalarNode && kindVal.Value == "true":
		default:
			sink.errorf(pos(kindVal), "action %s takes a mapping of arguments", kindKey.Value)
		}
	}
	for _, req := range spec.required {
		if _, ok := a.Args[req]; !ok {
			sink.errorf(pos(kindKey), "action %s needs argument %q", kindKey.Value, req)
		}
	}
	return a
}

func parseArgs(a *Action, spec actionSpec, n *yaml.Node, sink *diagSink, file string) {
	eachKey(n, sink, file, func(k, v *yaml.Node) {
		if spec.words != nil {
			if allowed, ok := spec.words[k.Value]; ok {
				w := scalar(v, sink, file, k.Value)
				if !contains(allowed, w) {
					sink.errorf(Pos{File: file, Line: v.Line, Col: v.Column}, "%s of %s must be one of %s, not %q", k.Value, spec.kind, strings.Join(allowed, ", "), w)
				}
				a.Word = w
				return
			}
		}
		if _, ok := spec.args[k.Value]; !ok {
			sink.errorf(Pos{File: file, Line: k.Line, Col: k.Column}, "unknown argument %q of action %s (known: %s)", k.Value, spec.kind, spec.argNames())
			return
		}
		a.Args[k.Value] = exprOf(v, sink, file, k.Value)
	})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func eachKey(n *yaml.Node, sink *diagSink, file string, fn func(k, v *yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		sink.errorf(Pos{File: file, Line: n.Line, Col: n.Column}, "expected a mapping")
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if seen[k.Value] {
			sink.errorf(Pos{File: file, Line: k.Line, Col: k.Column}, "duplicate field %q", k.Value)
			continue
		}
		seen[k.Value] = true
		fn(k, v)
	}
}

func scalar(n *yaml.Node, sink *diagSink, file, name string) string {
	if n.Kind != yaml.ScalarNode {
		sink.errorf(Pos{File: file, Line: n.Line, Col: n.Column}, "%s must be a scalar", name)
		return ""
	}
	return n.Value
}

func uintScalar(n *yaml.Node, sink *diagSink, file, name string) uint64 {
	s := scalar(n, sink, file, name)
	// YAML writes large integers with digit separators: 10_000_000.
	v, err := strconv.ParseUint(strings.ReplaceAll(s, "_", ""), 10, 64)
	if err != nil || v == 0 {
		sink.errorf(Pos{File: file, Line: n.Line, Col: n.Column}, "%s must be a positive integer, not %q", name, s)
	}
	return v
}

// exprOf reads a CEL expression and records how its positions map into the file. For block
// scalars the expression is rebuilt from the file's own lines, so a CEL line maps to a file
// line exactly.
func exprOf(n *yaml.Node, sink *diagSink, file, name string) Expr {
	e := Expr{Pos: Pos{File: file, Line: n.Line, Col: n.Column}}
	if n.Kind != yaml.ScalarNode {
		sink.errorf(e.Pos, "%s must be a CEL expression (a string)", name)
		return e
	}
	e.Text = n.Value
	switch n.Style {
	case yaml.LiteralStyle, yaml.FoldedStyle:
		e.Pos.Line = n.Line + 1
		e.lineBase = n.Line
		if text, indent, ok := blockSource(sink.lines, n); ok {
			e.Text, e.colBase, e.block = text, indent, true
			// The expression starts on the line after the indicator, at its indentation.
			e.Pos.Col = indent + 1
		}
	case yaml.DoubleQuotedStyle, yaml.SingleQuotedStyle:
		e.lineBase = n.Line - 1
		e.colBase = n.Column
		e.srcMap = flowSourceMap(sink.lines, n, file)
	default:
		e.lineBase = n.Line - 1
		e.colBase = n.Column - 1
		e.srcMap = flowSourceMap(sink.lines, n, file)
	}
	if n.Tag != "!!str" && n.Tag != "" {
		// `when: true` is a YAML bool; CEL reads the same text.
		e.Text = n.Value
	}
	return e
}

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
