package engine

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common"
)

// The checker's messages are written for CEL's own users; these functions add what a
// policy author needs to fix the rule: where a variable does exist, that an action
// argument is CEL and wants its text quoted, and what an operator or a function takes.

// exprContext says where an expression stands, for hints.
type exprContext struct {
	// what names the expression in messages: when, if, reject.code, …
	what string
	// stage is the rule's stage and entries the entry stages that reach it.
	stage   string
	entries []string
	// arg is the argument's name when the expression is an action argument.
	arg string
}

// checkMessages turns the checker's issues of one expression into diagnostics.
func checkMessages(env *cel.Env, e Expr, want *cel.Type, ctx exprContext, errs []*common.Error, sink *diagSink) {
	if h := quoteHint(e, want, ctx, errs); h != "" {
		// One cause, one message: the parser's follow-up errors about the same unquoted
		// text say nothing more.
		ce := errs[0]
		sink.errorf(e.errorPos(ce.Location.Line(), ce.Location.Column(), ce.Message), "%s: %s%s", ctx.what, ce.Message, h)
		return
	}
	for _, ce := range errs {
		msg := friendlyOverload(env, ce.Message) + stageHint(ce.Message, ctx)
		sink.errorf(e.errorPos(ce.Location.Line(), ce.Location.Column(), ce.Message), "%s: %s", ctx.what, msg)
	}
}

var undeclaredRe = regexp.MustCompile(`^undeclared reference to '([^']+)'`)

// stageHint explains an undeclared reference to a namespace that exists in other stages:
// " (error.* exists only in stage on_upstream_error; this rule runs in pre_send)". For a
// sub-stage it names the entry stages that enter it, since the sub-stage sees only what
// they all have. It returns "" for other messages.
func stageHint(msg string, ctx exprContext) string {
	m := undeclaredRe.FindStringSubmatch(msg)
	if m == nil {
		return ""
	}
	name := m[1]
	for i := range variables {
		v := &variables[i]
		if v.stages == nil || (v.name != name && !strings.HasPrefix(v.name, name+".")) {
			continue
		}
		ns, _, _ := strings.Cut(v.name, ".")
		where := fmt.Sprintf("%s.* exists only in stage %s", ns, strings.Join(v.stages, ", "))
		switch {
		case ctx.stage == "":
			return " (" + where + ")"
		case isEntryStage(ctx.stage):
			return fmt.Sprintf(" (%s; this rule runs in %s)", where, ctx.stage)
		default:
			return fmt.Sprintf(" (%s; stage %s is entered from %s and sees only the variables they all have)",
				where, ctx.stage, strings.Join(ctx.entries, ", "))
		}
	}
	return ""
}

// quoteHint recognises a string action argument written as bare text, `code:
// model_not_allowed` or `message: model not allowed`, which CEL reads as a name or as a
// syntax error. It returns the hint, or "" when the expression is something else.
func quoteHint(e Expr, want *cel.Type, ctx exprContext, errs []*common.Error) string {
	text := strings.TrimSpace(e.Text)
	if ctx.arg == "" || want == nil || !want.IsExactType(cel.StringType) || len(errs) == 0 ||
		strings.ContainsAny(text, "\"'`") || strings.Contains(text, "\n") {
		return ""
	}
	first := errs[0].Message
	bare := false
	if m := undeclaredRe.FindStringSubmatch(first); m != nil && m[1] == text {
		bare = variableByName[text] == nil && !isNamespace(text)
	}
	if !bare && !strings.HasPrefix(first, "Syntax error") {
		return ""
	}
	return fmt.Sprintf(" (an action argument is a CEL expression: to mean the text, quote it inside the YAML value: %s: '\"%s\"')", ctx.arg, text)
}

// isNamespace reports whether name is the first part of some variable (request, error, …).
func isNamespace(name string) bool {
	for i := range variables {
		if strings.HasPrefix(variables[i].name, name+".") {
			return true
		}
	}
	return false
}

var overloadRe = regexp.MustCompile(`^found no matching overload for '([^']+)' applied to '(.*)'$`)

// operatorNames are the display names of CEL's operator functions.
var operatorNames = map[string]string{
	"_+_": "+", "_-_": "-", "_*_": "*", "_/_": "/", "_%_": "%",
	"_==_": "==", "_!=_": "!=", "_<_": "<", "_<=_": "<=", "_>_": ">", "_>=_": ">=",
	"_&&_": "&&", "_||_": "||", "!_": "!", "-_": "-", "@in": "in", "_[_]": "[]", "_?_:_": "?:",
}

// friendlyOverload rewrites "found no matching overload for '_+_' applied to '(list(string),
// int)'" into what an author can act on: the operator or function as written, the types
// it got, and what it takes. Other messages are returned unchanged.
func friendlyOverload(env *cel.Env, msg string) string {
	m := overloadRe.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	fn, applied := m[1], m[2]
	receiver, args := "", applied
	if i := strings.Index(applied, ".("); i >= 0 && !strings.HasPrefix(applied, "(") {
		receiver, args = applied[:i], applied[i+1:]
	}
	types := splitTypes(strings.TrimSuffix(strings.TrimPrefix(args, "("), ")"))
	if op, ok := operatorNames[fn]; ok && receiver == "" {
		return operatorMessage(op, types)
	}
	got := "(" + strings.Join(types, ", ") + ")"
	call := fn
	if receiver != "" {
		call = receiver + "." + fn
	}
	out := fmt.Sprintf("%s cannot take %s", call, got)
	if takes := overloads(env, fn, receiver != ""); len(takes) > 0 {
		out += "; it takes " + strings.Join(takes, ", ")
	}
	return out
}

// operatorMessage says why an operator does not apply to its operand types.
func operatorMessage(op string, t []string) string {
	at := func(i int) string {
		if i < len(t) {
			return t[i]
		}
		return "?"
	}
	isList := func(s string) bool { return strings.HasPrefix(s, "list(") }
	switch op {
	case "==", "!=", "<", "<=", ">", ">=":
		return fmt.Sprintf("cannot compare %s with %s using %s (both sides need one type: quote a string, or convert with string(…) or int(…))", at(0), at(1), op)
	case "+":
		switch {
		case isList(at(0)) != isList(at(1)):
			return fmt.Sprintf("cannot add %s and %s with + (to append an element, wrap it in a list: list + [element])", at(0), at(1))
		case at(0) == "string" || at(1) == "string":
			return fmt.Sprintf("cannot add %s and %s with + (convert the other side with string(…))", at(0), at(1))
		}
		return fmt.Sprintf("cannot add %s and %s with +", at(0), at(1))
	case "in":
		return fmt.Sprintf("cannot test %s in %s (the value needs the type of the list's elements or the map's keys)", at(0), at(1))
	case "[]":
		return fmt.Sprintf("cannot index %s with %s (a list takes an int index, a map a key of its key type)", at(0), at(1))
	case "!":
		return fmt.Sprintf("! needs a bool, not %s (compare instead: x == \"\", size(x) == 0)", at(0))
	case "&&", "||":
		return fmt.Sprintf("%s needs two bools, not %s and %s", op, at(0), at(1))
	case "?:":
		if at(0) != "bool" {
			return fmt.Sprintf("the condition of ?: must be bool, not %s", at(0))
		}
		return fmt.Sprintf("the two branches of ?: must have one type, not %s and %s", at(1), at(2))
	}
	if len(t) == 1 {
		return fmt.Sprintf("cannot apply %s to %s", op, at(0))
	}
	return fmt.Sprintf("cannot apply %s to %s and %s", op, at(0), at(1))
}

// overloads lists the signatures of a function as an author calls it.
func overloads(env *cel.Env, fn string, member bool) []string {
	decl, ok := env.Functions()[fn]
	if !ok {
		return nil
	}
	var out []string
	for _, o := range decl.OverloadDecls() {
		if o.IsMemberFunction() != member {
			continue
		}
		var args []string
		for _, t := range o.ArgTypes() {
			// Type parameters print as <A>; an author reads list(A) more easily.
			args = append(args, strings.NewReplacer("<", "", ">", "").Replace(t.String()))
		}
		sig := "(" + strings.Join(args, ", ") + ")"
		if member && len(args) > 0 {
			sig = args[0] + "." + fn + "(" + strings.Join(args[1:], ", ") + ")"
		}
		if !slices.Contains(out, sig) {
			out = append(out, sig)
		}
	}
	slices.Sort(out)
	return out
}

// splitTypes splits "list(string), map(string, int)" at its top-level commas.
func splitTypes(s string) []string {
	var out []string
	depth, start := 0, 0
	for i, r := range s {
		switch r {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		}
	}
	if rest := strings.TrimSpace(s[start:]); rest != "" {
		out = append(out, rest)
	}
	return out
}
