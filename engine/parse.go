package engine

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

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
		hint := ""
		if root.Kind == yaml.SequenceNode {
			// A list of rules pasted on its own: the most common first file.
			hint = ", not a list: put the rules under `rules:` and add `apiVersion: chainmend/v1` and `policy: NAME` above them"
		}
		sink.errorf(pos(root), "a policy file must be a mapping with policy and rules%s", hint)
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
		sink.errorf(pos(n), "an action must be a mapping like `- set_previous_response_id: session.anchor`")
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
