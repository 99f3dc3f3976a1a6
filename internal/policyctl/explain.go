package policyctl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"chainmend/engine"
	"chainmend/internal/policytest"
)

func explain(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("explain", stderr)
	policies := fs.String("policies", defaultDir, "policy directory or file")
	reqPath := fs.String("request", "", "the response.create frame (JSON)")
	statePath := fs.String("state", "", "the turn state (YAML: mode, transport, stage, turn, lane, anchor, pending, cached, replay, previous, error, recovery, response)")
	stage := fs.String("stage", "", "the stage to evaluate (default: the state's, else pre_send)")
	showRequest := fs.Bool("show-request", false, "print the resulting request")
	enforce := fs.String("enforce", "", "comma-separated shadow rules to evaluate as enforced (a fixture's enforce:)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *reqPath == "" {
		fmt.Fprintln(stderr, "policyctl explain: --request is required")
		return exitUsage
	}
	snap, _, code := load(strings.Split(*policies, ","), stderr)
	if snap == nil {
		return code
	}
	var enforced []string
	if *enforce != "" {
		enforced = strings.Split(*enforce, ",")
		if err := checkEnforced(snap, enforced); err != nil {
			fmt.Fprintf(stderr, "policyctl explain: --enforce: %v\n", err)
			return exitUsage
		}
	}
	reqData, err := readFile(*reqPath)
	if err != nil {
		fmt.Fprintf(stderr, "policyctl: %v\n", err)
		return ExitError
	}
	var stateData []byte
	if *statePath != "" {
		if stateData, err = readFile(*statePath); err != nil {
			fmt.Fprintf(stderr, "policyctl: %v\n", err)
			return ExitError
		}
	}
	turn, st, err := policytest.BuildExplainTurn(reqData, stateData)
	if err != nil {
		fmt.Fprintf(stderr, "policyctl: %v\n", err)
		return ExitError
	}
	if *stage != "" {
		st = *stage
	}
	out := snap.Evaluate(st, turn, engine.WithDiffs(), engine.WithEnforced(enforced...))
	fmt.Fprintf(stdout, "policy set %s, stage %s, mode %s, transport %s\n\n", snap.Hash, st, turn.Mode, turn.Transport)
	for i, s := range out.Trace {
		value := "not evaluated"
		switch {
		case s.Skipped != "":
			value = "not evaluated (" + s.Skipped + ")"
		case s.Err != "":
			value = "error: " + s.Err
		case s.Evaluated:
			value = fmt.Sprint(s.Value)
		}
		mark := "  "
		if s.Fired {
			mark = "✔ "
		}
		fmt.Fprintf(stdout, "%s%2d %-34s %-16s when = %s\n", mark, i+1, s.Rule, "["+s.Stage+"]", value)
		if !s.Fired {
			continue
		}
		fmt.Fprintf(stdout, "       reason %s", s.Reason)
		switch {
		case s.Shadow:
			fmt.Fprint(stdout, " (shadow: counted, nothing changed)")
		case slices.Contains(enforced, s.Rule):
			fmt.Fprint(stdout, " (shadow, enforced by --enforce)")
		}
		fmt.Fprintf(stdout, "  at %s\n", s.Pos)
		for _, a := range s.Actions {
			state := "applied"
			if !a.Applied {
				state = "skipped"
			}
			fmt.Fprintf(stdout, "       %s %s: %s\n", a.Kind, state, a.Note)
		}
		if s.Before != nil && !bytes.Equal(s.Before, s.After) {
			for _, l := range diffJSON(s.Before, s.After) {
				fmt.Fprintf(stdout, "       %s\n", l)
			}
		}
	}
	fmt.Fprintf(stdout, "\nverdict: %s\n", out.Verdict)
	if out.Reject != nil {
		fmt.Fprintf(stdout, "rejection: status %d, code %s: %s\n", out.Reject.Status, out.Reject.Code, out.Reject.Message)
	}
	printEffects(stdout, &out.Effects)
	if turn.Error != nil && turn.Error.Class != "" {
		fmt.Fprintf(stdout, "error class: %s\n", turn.Error.Class)
	}
	var reasons []string
	for _, f := range out.Fired {
		reasons = append(reasons, f.Reason)
	}
	fmt.Fprintf(stdout, "reasons: %s\n", strings.Join(reasons, ", "))
	fmt.Fprintf(stdout, "cost: %d\n", out.Cost)
	if out.Err != nil {
		fmt.Fprintf(stdout, "evaluation stopped: %v\n", out.Err)
	}
	if *showRequest {
		fmt.Fprintf(stdout, "\nrequest:\n%s\n", pretty(turn.Request.Bytes()))
	}
	return ExitOK
}

// checkEnforced refuses ids that are no shadow rule of the set: enforcing them would
// change nothing, and the explanation would pretend otherwise.
func checkEnforced(snap *engine.Snapshot, ids []string) error {
	for _, id := range ids {
		i := slices.IndexFunc(snap.Rules(), func(r engine.RuleInfo) bool { return r.ID == id })
		switch {
		case i < 0:
			return fmt.Errorf("unknown rule %q", id)
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
