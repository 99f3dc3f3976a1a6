package policyctl

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"chainmend/engine"
	"chainmend/internal/policytest"
)

var explainCmd = command{
	name:     "explain",
	synopsis: "policyctl explain --request FILE [--state FILE] [--policies DIR] [--stage S] [--enforce RULE,…] [--show-request]",
	about: `Evaluates one stage of one turn and lists every rule of the stage (and of the sub-stages it
can enter) with its state:

  fired                 the when was true and the actions ran
  false                 the when was false
  shadow: would fire    a shadow rule whose when was true; what it would have changed
                        follows (the same rule evaluated with --enforce)
  skipped               its group was already matched by an earlier rule
  not evaluated         an earlier rule ended the stage (then: stop, reject, retry,
                        forward), or its sub-stage was never entered
  error                 the when failed at run time

For every evaluated when, the values of its parts follow: the operands of its && / ||
chain and the values they compare, as CEL evaluated them. A fired rule shows each action
and the diff it made to the request. The verdict, the rejection and the state effects
(anchor, pending, transcript, what the upstream connection holds) end the report.

The request file is the response.create frame (JSON). The state file (YAML) holds what a
fixture's state holds, plus mode, transport, stage and, for post_response, response:
turn, lane, anchor, pending, cached, replay, previous, error, recovery.`,
	examples: `  policyctl explain --request testdata/explain/esc-request.json --state testdata/explain/esc-state.yaml
  policyctl explain --policies my-policies --request request.json
  policyctl explain --stage post_response --request req.json --state state.yaml
  policyctl explain --enforce interrupt-discards-calls --request req.json --state state.yaml`,
	setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
		var o explainOptions
		fs.StringVar(&o.policies, "policies", defaultDir, "policy directory or file (comma-separated for several)")
		fs.StringVar(&o.request, "request", "", "the response.create frame (JSON); required")
		fs.StringVar(&o.state, "state", "", "the turn state (YAML: mode, transport, stage, turn, lane, anchor, pending, cached, replay, previous, error, recovery, response)")
		fs.StringVar(&o.stage, "stage", "", "the stage to evaluate: an entry stage or a sub-stage of the set (default: the state's, else pre_send)")
		fs.BoolVar(&o.showRequest, "show-request", false, "print the resulting request")
		fs.StringVar(&o.enforce, "enforce", "", "comma-separated shadow rules to evaluate as enforced (a fixture's enforce:)")
		return func(args []string, stdout, stderr io.Writer) int {
			if len(args) > 0 {
				fmt.Fprintf(stderr, "policyctl explain: unexpected argument %q (the request is given with --request)\n", args[0])
				return exitUsage
			}
			return explain(&o, stdout, stderr)
		}
	},
}

type explainOptions struct {
	policies, request, state, stage, enforce string
	showRequest                              bool
}

func explain(o *explainOptions, stdout, stderr io.Writer) int {
	if o.request == "" {
		fmt.Fprintln(stderr, "policyctl explain: --request is required\nRun 'policyctl explain --help' for usage.")
		return exitUsage
	}
	snap, _, code := load(strings.Split(o.policies, ","), stderr, false)
	if snap == nil {
		return code
	}
	var enforced []string
	if o.enforce != "" {
		enforced = strings.Split(o.enforce, ",")
		if err := checkEnforced(snap, enforced); err != nil {
			fmt.Fprintf(stderr, "policyctl explain: --enforce: %v\n", err)
			return exitUsage
		}
	}
	reqData, err := readFile(o.request)
	if err != nil {
		fmt.Fprintf(stderr, "policyctl: %v\n", err)
		return ExitError
	}
	var stateData []byte
	if o.state != "" {
		if stateData, err = readFile(o.state); err != nil {
			fmt.Fprintf(stderr, "policyctl: %v\n", err)
			return ExitError
		}
	}
	turn, st, err := policytest.BuildExplainTurn(reqData, stateData)
	if err != nil {
		fmt.Fprintf(stderr, "policyctl: %v\n", err)
		return ExitError
	}
	if o.stage != "" {
		st = o.stage
	}
	if err := checkStage(snap, st); err != nil {
		fmt.Fprintf(stderr, "policyctl explain: %v\n", err)
		return exitUsage
	}
	out := snap.Evaluate(st, turn, engine.WithExplain(), engine.WithEnforced(enforced...))
	x := explanation{snap: snap, stage: st, out: out, enforced: enforced, rules: rulesByID(snap),
		rerun: func(ids []string) (*engine.Outcome, error) {
			t, _, err := policytest.BuildExplainTurn(reqData, stateData)
			if err != nil {
				return nil, err
			}
			return snap.Evaluate(st, t, engine.WithDiffs(), engine.WithEnforced(ids...)), nil
		}}
	fmt.Fprintf(stdout, "policy set %s, stage %s, mode %s, transport %s\n\n", snap.Hash, st, turn.Mode, turn.Transport)
	x.print(stdout)
	fmt.Fprintf(stdout, "\nverdict: %s\n", out.Verdict)
	if out.Reject != nil {
		fmt.Fprintf(stdout, "rejection: status %d, code %s: %s\n", out.Reject.Status, out.Reject.Code, out.Reject.Message)
	}
	printEffects(stdout, &out.Effects)
	if turn.Error != nil && turn.Error.Class != "" {
		fmt.Fprintf(stdout, "error class: %s\n", turn.Error.Class)
	}
	fmt.Fprintf(stdout, "reasons: %s\n", strings.Join(out.Reasons(), ", "))
	fmt.Fprintf(stdout, "cost: %d\n", out.Cost)
	if out.Err != nil {
		fmt.Fprintf(stdout, "evaluation stopped: %v\n", out.Err)
	}
	if o.showRequest {
		fmt.Fprintf(stdout, "\nrequest:\n%s\n", pretty(turn.Request.Bytes()))
	}
	return ExitOK
}

// checkStage accepts the entry stages and the sub-stages the set has rules for; anything
// else would evaluate no rule and print a verdict that means nothing.
func checkStage(snap *engine.Snapshot, stage string) error {
	known := []string{engine.StagePreSend, engine.StageOnUpstreamError, engine.StagePostResponse}
	for _, r := range snap.Rules() {
		if !slices.Contains(known, r.Stage) {
			known = append(known, r.Stage)
		}
	}
	if slices.Contains(known, stage) {
		return nil
	}
	return fmt.Errorf("unknown stage %q%s (stages of this set: %s)", stage, didYouMean(stage, known), strings.Join(known, ", "))
}

func rulesByID(snap *engine.Snapshot) map[string]*engine.Rule {
	out := map[string]*engine.Rule{}
	for _, p := range snap.Policies {
		for _, r := range p.Rules {
			out[r.ID] = r
		}
	}
	return out
}

// explanation prints one evaluation rule by rule.
type explanation struct {
	snap     *engine.Snapshot
	stage    string
	out      *engine.Outcome
	enforced []string
	rules    map[string]*engine.Rule
	// rerun evaluates the same turn afresh with other rules enforced, to show what a shadow
	// rule would have done.
	rerun func(enforced []string) (*engine.Outcome, error)
	n     int
}

func (x *explanation) print(w io.Writer) {
	seen := map[string]int{}
	for _, s := range x.out.Trace {
		seen[s.Rule]++
		x.step(w, s, seen[s.Rule])
	}
	// Rules the evaluation never reached: after a stop, or in a sub-stage never entered.
	stopper := x.stopper()
	entered := map[string]bool{}
	for _, s := range x.out.Trace {
		entered[s.Stage] = true
	}
	for _, st := range x.reachable() {
		for _, r := range x.snap.Rules() {
			if r.Stage != st || seen[r.ID] > 0 {
				continue
			}
			why := "stage " + st + " not entered: no rule ran run_stage " + st
			switch {
			case stopper != "":
				why = "after the stop at rule " + stopper
			case entered[st]:
				why = "not reached"
			}
			x.n++
			fmt.Fprintf(w, "  %3d %-36s %-18s %-20s when = not evaluated (%s)\n", x.n, r.ID, "["+r.Stage+"]", "not evaluated", why)
		}
	}
}

func (x *explanation) step(w io.Writer, s engine.Step, occurrence int) {
	x.n++
	enforced := slices.Contains(x.enforced, s.Rule)
	state, value := "false", "not evaluated"
	switch {
	case s.Skipped != "":
		state, value = "skipped", "not evaluated ("+s.Skipped+")"
	case s.Err != "":
		state, value = "error", "error: "+s.Err
	case s.Evaluated:
		value = fmt.Sprint(s.Value)
		switch {
		case s.Fired && s.Shadow:
			state = "shadow: would fire"
		case s.Fired && enforced:
			state = "fired (enforced)"
		case s.Fired:
			state = "fired"
		}
	}
	mark := "  "
	if s.Fired && !s.Shadow {
		mark = "✔ "
	}
	fmt.Fprintf(w, "%s%3d %-36s %-18s %-20s when = %s\n", mark, x.n, s.Rule, "["+s.Stage+"]", state, value)
	if s.Evaluated && s.Err == "" {
		printParts(w, s.Parts)
	}
	if !s.Fired {
		return
	}
	fmt.Fprintf(w, "       reason %s", s.Reason)
	switch {
	case s.Shadow:
		fmt.Fprint(w, " (shadow: counted, nothing changed)")
	case enforced:
		fmt.Fprint(w, " (shadow, enforced by --enforce)")
	}
	fmt.Fprintf(w, "  at %s\n", s.Pos)
	if s.Shadow {
		x.wouldChange(w, s.Rule, occurrence)
		return
	}
	printActions(w, s, "       ")
}

// printParts prints the sub-expression values of a when, unless the when is one literal.
func printParts(w io.Writer, parts []engine.Part) {
	if len(parts) == 0 {
		return
	}
	width := 0
	texts := make([]string, len(parts))
	for i, p := range parts {
		texts[i] = strings.Repeat("  ", p.Depth) + oneLineExpr(p.Expr)
		width = max(width, min(len([]rune(texts[i])), 64))
	}
	for i, p := range parts {
		fmt.Fprintf(w, "         %-*s = %s\n", width, texts[i], p.Value)
	}
}

// oneLineExpr folds an unparsed expression onto one line and shortens a long one.
func oneLineExpr(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 96 {
		return string(r[:95]) + "…"
	}
	return s
}

func printActions(w io.Writer, s engine.Step, indent string) {
	for _, a := range s.Actions {
		state := "applied"
		if !a.Applied {
			state = "skipped"
		}
		fmt.Fprintf(w, "%s%s %s: %s\n", indent, a.Kind, state, a.Note)
	}
	if s.Before != nil && !bytes.Equal(s.Before, s.After) {
		for _, l := range diffJSON(s.Before, s.After) {
			fmt.Fprintf(w, "%s%s\n", indent, l)
		}
	}
}

// wouldChange evaluates the turn again with the shadow rule enforced and prints what the
// rule did there: its actions, its diff and, when it changes it, the verdict.
func (x *explanation) wouldChange(w io.Writer, id string, occurrence int) {
	out, err := x.rerun(append(slices.Clone(x.enforced), id))
	if err != nil {
		fmt.Fprintf(w, "       (cannot show what it would change: %v)\n", err)
		return
	}
	n := 0
	for _, s := range out.Trace {
		if s.Rule != id {
			continue
		}
		if n++; n != occurrence {
			continue
		}
		if !s.Fired {
			fmt.Fprintln(w, "       enforced, it would not fire: earlier enforced rules change what it sees")
			return
		}
		fmt.Fprintf(w, "       enforced (--enforce %s), it would:\n", id)
		if len(s.Actions) == 0 {
			fmt.Fprintln(w, "         change nothing: it has no actions")
		}
		printActions(w, s, "         ")
		if out.Verdict != x.out.Verdict {
			fmt.Fprintf(w, "         make the verdict %s (now %s)\n", out.Verdict, x.out.Verdict)
		}
		return
	}
	fmt.Fprintln(w, "       enforced, it would not be reached: an earlier rule would end the stage")
}

// stopper names the rule whose stop or terminal action ended the evaluation, or "".
func (x *explanation) stopper() string {
	for i := len(x.out.Trace) - 1; i >= 0; i-- {
		s := x.out.Trace[i]
		if !s.Fired || s.Shadow {
			continue
		}
		for _, a := range s.Actions {
			switch a.Kind {
			case engine.ActReject, engine.ActRetry, engine.ActForward:
				if a.Applied {
					return s.Rule
				}
			}
		}
		if r := x.rules[s.Rule]; r != nil && r.Then == engine.ThenStop && s.Stage == x.stage {
			return s.Rule
		}
	}
	return ""
}

// reachable lists the explained stage and the sub-stages its rules can enter with
// run_stage, in the order they are first entered in the files.
func (x *explanation) reachable() []string {
	out := []string{x.stage}
	for i := 0; i < len(out); i++ {
		for _, p := range x.snap.Policies {
			for _, r := range p.Rules {
				if r.Stage != out[i] {
					continue
				}
				for _, a := range r.Actions {
					if a.Kind == engine.ActRunStage && !slices.Contains(out, a.Word) {
						out = append(out, a.Word)
					}
				}
			}
		}
	}
	return out
}

// checkEnforced refuses ids that are no shadow rule of the set: enforcing them would
// change nothing, and the explanation would pretend otherwise.
func checkEnforced(snap *engine.Snapshot, ids []string) error {
	for _, id := range ids {
		i := slices.IndexFunc(snap.Rules(), func(r engine.RuleInfo) bool { return r.ID == id })
		switch {
		case i < 0:
			var all []string
			for _, r := range snap.Rules() {
				all = append(all, r.ID)
			}
			return fmt.Errorf("unknown rule %q%s", id, didYouMean(id, all))
		case !snap.Rules()[i].Shadow:
			return fmt.Errorf("rule %q is not a shadow rule", id)
		}
	}
	return nil
}

// printEffects prints the state changes the stage asked the gateway for.
func printEffects(w io.Writer, fx *engine.Effects) {
	if fx.Anchor != nil {
		if *fx.Anchor == "" {
			fmt.Fprintln(w, "session anchor: cleared")
		} else {
			fmt.Fprintf(w, "session anchor: %s\n", *fx.Anchor)
		}
	}
	if p := fx.PutPending; p != nil {
		calls := make([]string, len(p.Calls))
		for i, c := range p.Calls {
			calls[i] = c.ID + " (" + c.Kind + ")"
		}
		if len(calls) == 0 {
			calls = []string{"none"}
		}
		fmt.Fprintf(w, "pending of %s: %s\n", p.ResponseID, strings.Join(calls, ", "))
	}
	if len(fx.DeletePending) > 0 {
		fmt.Fprintf(w, "pending deleted: %s\n", strings.Join(fx.DeletePending, ", "))
	}
	if fx.Transcript != engine.TranscriptKeep {
		fmt.Fprintf(w, "transcript: %s\n", fx.Transcript)
	}
	if c := fx.UpstreamCached; c != nil {
		if *c == "" {
			fmt.Fprintln(w, "upstream connection holds: nothing")
		} else {
			fmt.Fprintf(w, "upstream connection holds: %s\n", *c)
		}
	}
}

func pretty(b []byte) string {
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(b), "", "  "); err != nil {
		return string(b)
	}
	return buf.String()
}

// diffJSON is a line diff of the indented documents: enough to show which fields and items
// a rule changed.
func diffJSON(before, after []byte) []string {
	a := strings.Split(pretty(before), "\n")
	b := strings.Split(pretty(after), "\n")
	// Trim the common prefix and suffix so the quadratic part only sees the change.
	p := 0
	for p < len(a) && p < len(b) && a[p] == b[p] {
		p++
	}
	s := 0
	for s < len(a)-p && s < len(b)-p && a[len(a)-1-s] == b[len(b)-1-s] {
		s++
	}
	ma, mb := a[p:len(a)-s], b[p:len(b)-s]
	const maxCells = 4_000_000
	if len(ma)*len(mb) > maxCells {
		return []string{fmt.Sprintf("@@ %d lines changed (too large to show) @@", len(ma)+len(mb))}
	}
	lcs := make([][]int, len(ma)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(mb)+1)
	}
	for i := len(ma) - 1; i >= 0; i-- {
		for j := len(mb) - 1; j >= 0; j-- {
			if ma[i] == mb[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	out := []string{fmt.Sprintf("@@ line %d @@", p+1)}
	i, j := 0, 0
	for i < len(ma) || j < len(mb) {
		switch {
		case i < len(ma) && j < len(mb) && ma[i] == mb[j]:
			out = append(out, "  "+ma[i])
			i++
			j++
		case j < len(mb) && (i == len(ma) || lcs[i][j+1] >= lcs[i+1][j]):
			out = append(out, "+ "+mb[j])
			j++
		default:
			out = append(out, "- "+ma[i])
			i++
		}
	}
	return out
}
