package policyctl

import (
	"flag"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"

	"chainmend/engine"
	"chainmend/internal/decisionlog"
)

var replayCmd = command{
	name:     "replay",
	synopsis: "policyctl replay --decisions FILE[,FILE…] [--policies DIR] [--enforce RULE,…] [-o text|json]",
	about: `What if: re-evaluates every stage of every turn of a gateway's decision log (gateway
--decision-log FILE) against a policy set, and lists the turns that would change:

  verdict    send, reject (with its status and code), retry or forward
  fired      the rules that fired, in order
  request    what the stage left of the request: previous_response_id and the item
             structure (types, ids, call ids, roles, and the outputs rules made)
  effects    anchor, pending calls, transcript, what the upstream connection holds

A summary counts the turns and stages that would change, by kind. Each stage is evaluated
on the facts it began with, as logged: a change in one stage does not flow into the next,
since what the upstream would have answered to another request is unknown. A stage whose
input facts the gateway took from its memory of the lane (a stage that changed the anchor
while no stage of the turn showed it, "inferred" in the log) is marked; a rule that now
replays where the logged turn did not cannot see the transcript, which the log holds only
when the turn loaded it. A rotated log is several files: name them oldest first.`,
	examples: `  policyctl replay --decisions /var/log/chainmend/decisions.jsonl --policies my-policies/
  policyctl replay --decisions decisions.jsonl.1,decisions.jsonl -o json | jq '.turns[].id'
  policyctl replay --decisions decisions.jsonl --enforce interrupt-discards-calls   # enforce a shadow rule`,
	setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
		var o replayOptions
		fs.StringVar(&o.decisions, "decisions", "", "the decision log: comma-separated files, oldest first; required")
		fs.StringVar(&o.policies, "policies", defaultDir, "policy directory or file (comma-separated for several)")
		fs.StringVar(&o.enforce, "enforce", "", "comma-separated shadow rules to evaluate as enforced")
		format := outputFlag(fs, "text", "json")
		return func(args []string, stdout, stderr io.Writer) int {
			if err := checkFormat(*format, "text", "json"); err != nil {
				fmt.Fprintf(stderr, "policyctl replay: %v\n", err)
				return exitUsage
			}
			if len(args) > 0 {
				fmt.Fprintf(stderr, "policyctl replay: unexpected argument %q (the log is given with --decisions)\n", args[0])
				return exitUsage
			}
			o.format = *format
			return replay(&o, stdout, stderr)
		}
	},
}

type replayOptions struct {
	decisions, policies, enforce, format string
}

// ReplayReport is the result of policyctl replay, as -o json prints it.
type ReplayReport struct {
	Decisions []string `json:"decisions"`
	Policies  string   `json:"policies"`
	// Set is the hash of the policy set replayed; LoggedSets those the log was made under.
	Set        string        `json:"set"`
	LoggedSets []string      `json:"logged_sets"`
	Summary    ReplaySummary `json:"summary"`
	// Turns are the turns that would change, in log order.
	Turns []ReplayTurn `json:"turns"`
	Exit  int          `json:"exit"`
}

// ReplaySummary counts what a replay found. Verdict, Fired, Request and Effects count the
// changed stages by kind (a stage may count in several).
type ReplaySummary struct {
	Turns          int `json:"turns"`
	Stages         int `json:"stages"`
	ChangedTurns   int `json:"changed_turns"`
	ChangedStages  int `json:"changed_stages"`
	UnchangedTurns int `json:"unchanged_turns"`
	Verdict        int `json:"verdict"`
	Fired          int `json:"fired"`
	Request        int `json:"request"`
	Effects        int `json:"effects"`
	// Inexact counts changed stages whose input was partly inferred or unknown.
	Inexact int `json:"inexact"`
	// Failed counts stages that could not be rebuilt from their facts.
	Failed int `json:"failed"`
}

// ReplayTurn is a turn that would change.
type ReplayTurn struct {
	ID        string        `json:"id"`
	Time      string        `json:"time"`
	Session   string        `json:"session"`
	Lane      string        `json:"lane,omitempty"`
	Number    int           `json:"number"`
	Transport string        `json:"transport"`
	Outcome   string        `json:"outcome"`
	LoggedSet string        `json:"logged_set"`
	File      string        `json:"file"`
	Line      int           `json:"line"`
	Stages    []ReplayStage `json:"stages"`
}

// ReplayStage is a stage that would change: what changed, as it was logged and as it would be.
type ReplayStage struct {
	// Index is the stage's position in the turn's record.
	Index   int      `json:"index"`
	Stage   string   `json:"stage"`
	Changes []string `json:"changes"`
	// Inexact names the input facts the gateway inferred or did not know.
	Inexact []string                     `json:"inexact,omitempty"`
	Verdict *Change[string]              `json:"verdict,omitempty"`
	Fired   *Change[[]string]            `json:"fired,omitempty"`
	Request *Change[RequestShape]        `json:"request,omitempty"`
	Effects *Change[engine.EffectsFacts] `json:"effects,omitempty"`
	Error   string                       `json:"error,omitempty"`
}

// Change is a value as logged and as the replayed policy set would make it.
type Change[T any] struct {
	Was T `json:"was"`
	Now T `json:"now"`
}

// RequestShape is what a stage left of the request that a replay compares.
type RequestShape struct {
	PreviousResponseID string             `json:"previous_response_id"`
	Items              []engine.ItemFacts `json:"items"`
}

func shapeOf(rf *engine.RequestFacts) RequestShape {
	items := rf.Items
	if items == nil {
		items = []engine.ItemFacts{}
	}
	return RequestShape{PreviousResponseID: rf.PreviousResponseID(), Items: items}
}

func replay(o *replayOptions, stdout, stderr io.Writer) int {
	if o.decisions == "" {
		fmt.Fprintln(stderr, "policyctl replay: --decisions is required\nRun 'policyctl replay --help' for usage.")
		return exitUsage
	}
	snap, _, code := load(strings.Split(o.policies, ","), stderr, false)
	if snap == nil {
		return code
	}
	var opts []engine.EvalOption
	if o.enforce != "" {
		enforced := strings.Split(o.enforce, ",")
		if err := checkEnforced(snap, enforced); err != nil {
			fmt.Fprintf(stderr, "policyctl replay: --enforce: %v\n", err)
			return exitUsage
		}
		opts = append(opts, engine.WithEnforced(enforced...))
	}
	rep, err := Replay(snap, strings.Split(o.decisions, ","), opts...)
	if err != nil {
		fmt.Fprintf(stderr, "policyctl replay: %v\n", err)
		return ExitError
	}
	rep.Policies = o.policies
	if rep.Summary.Turns == 0 {
		fmt.Fprintf(stderr, "policyctl replay: no records in %s\n", o.decisions)
		return ExitError
	}
	if o.format == "json" {
		if err := writeJSON(stdout, rep); err != nil {
			fmt.Fprintf(stderr, "policyctl: %v\n", err)
			return ExitError
		}
		return rep.Exit
	}
	printReplay(stdout, rep)
	return rep.Exit
}

// Replay re-evaluates every stage of the decision log's records against snap and reports the
// turns that would change. Its Exit is ExitFailed when one would, else ExitOK.
func Replay(snap *engine.Snapshot, files []string, opts ...engine.EvalOption) (*ReplayReport, error) {
	rep := &ReplayReport{Decisions: files, Set: snap.Hash, LoggedSets: []string{}, Turns: []ReplayTurn{}}
	err := decisionlog.ReadFiles(files, func(path string, line int, rec *decisionlog.Record) error {
		rep.Summary.Turns++
		if rec.PolicySet != "" && !slices.Contains(rep.LoggedSets, rec.PolicySet) {
			rep.LoggedSets = append(rep.LoggedSets, rec.PolicySet)
		}
		turn := ReplayTurn{ID: rec.ID, Time: rec.Time.Format("2006-01-02T15:04:05.000Z07:00"), Session: rec.Session, Lane: rec.Lane,
			Number: rec.Number, Transport: rec.Transport, Outcome: rec.Outcome, LoggedSet: rec.PolicySet, File: path, Line: line}
		for i := range rec.Stages {
			rep.Summary.Stages++
			if st, changed := replayStage(snap, rec, i, opts); changed {
				turn.Stages = append(turn.Stages, st)
				rep.Summary.ChangedStages++
				s := &rep.Summary
				for _, c := range st.Changes {
					switch c {
					case "verdict":
						s.Verdict++
					case "fired":
						s.Fired++
					case "request":
						s.Request++
					case "effects":
						s.Effects++
					}
				}
				if len(st.Inexact) > 0 {
					s.Inexact++
				}
				if st.Error != "" {
					s.Failed++
				}
			}
		}
		if len(turn.Stages) > 0 {
			rep.Turns = append(rep.Turns, turn)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	rep.Summary.ChangedTurns = len(rep.Turns)
	rep.Summary.UnchangedTurns = rep.Summary.Turns - rep.Summary.ChangedTurns
	if rep.Summary.ChangedStages > 0 {
		rep.Exit = ExitFailed
	}
	return rep, nil
}

// replayStage evaluates stage i of rec on the facts it began with and compares the outcome
// with the logged one; changed is false when nothing differs.
func replayStage(snap *engine.Snapshot, rec *decisionlog.Record, i int, opts []engine.EvalOption) (ReplayStage, bool) {
	logged := &rec.Stages[i]
	in := rec.Input(i)
	rs := ReplayStage{Index: i, Stage: logged.Stage, Inexact: append(slices.Clone(logged.Inferred), logged.Unknown...)}
	rb, err := in.Rebuild()
	if err != nil {
		rs.Error = err.Error()
		rs.Changes = []string{"error"}
		return rs, true
	}
	out := snap.Evaluate(logged.Stage, rb.Turn, opts...)

	was := Change[string]{Was: verdictOf(logged.Verdict, logged.Reject), Now: verdictOf(string(out.Verdict), decisionlog.RejectOf(out.Reject))}
	if was.Was != was.Now {
		rs.Verdict = &was
		rs.Changes = append(rs.Changes, "verdict")
	}
	if !slices.Equal(logged.Fired, out.Fired) {
		rs.Fired = &Change[[]string]{Was: firedNames(logged.Fired), Now: firedNames(out.Fired)}
		rs.Changes = append(rs.Changes, "fired")
	}
	wasReq := &in.Request
	if logged.After != nil {
		wasReq = logged.After
	}
	nowReq := &in.Request
	if rb.Changed() {
		r := rb.Request()
		nowReq = &r
	}
	if ws, ns := shapeOf(wasReq), shapeOf(nowReq); !reflect.DeepEqual(ws, ns) {
		rs.Request = &Change[RequestShape]{Was: ws, Now: ns}
		rs.Changes = append(rs.Changes, "request")
	}
	if we, ne := logged.Effects, engine.EffectsFactsOf(&out.Effects); !sameEffects(we, ne) {
		rs.Effects = &Change[engine.EffectsFacts]{Was: we, Now: ne}
		rs.Changes = append(rs.Changes, "effects")
	}
	return rs, len(rs.Changes) > 0
}

// sameEffects compares effects as the log spells them: an empty list and none are the same.
func sameEffects(a, b engine.EffectsFacts) bool {
	norm := func(e engine.EffectsFacts) engine.EffectsFacts {
		if len(e.DeletePending) == 0 {
			e.DeletePending = nil
		}
		if p := e.PutPending; p != nil && len(p.Calls) == 0 {
			e.PutPending = &engine.PendingPutFacts{ResponseID: p.ResponseID}
		}
		return e
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

func verdictOf(v string, r *decisionlog.Reject) string {
	if r == nil {
		return v
	}
	s := fmt.Sprintf("%s %d", v, r.Status)
	if r.Code != "" {
		s += " " + r.Code
	}
	return s
}

func firedNames(fired []engine.Fired) []string {
	out := make([]string, len(fired))
	for i, f := range fired {
		out[i] = f.Rule
		if f.Shadow {
			out[i] += " (shadow)"
		}
	}
	return out
}

func printReplay(w io.Writer, rep *ReplayReport) {
	s := rep.Summary
	fmt.Fprintf(w, "replayed %s (%s) from %s against set %s; logged under %s\n",
		plural(s.Turns, "turn"), plural(s.Stages, "stage"), strings.Join(rep.Decisions, ", "), rep.Set, strings.Join(rep.LoggedSets, ", "))
	fmt.Fprintf(w, "%s would change (%s: verdict %d, fired %d, request %d, effects %d), %d unchanged",
		plural(s.ChangedTurns, "turn"), plural(s.ChangedStages, "stage"), s.Verdict, s.Fired, s.Request, s.Effects, s.UnchangedTurns)
	if s.Inexact > 0 {
		fmt.Fprintf(w, "; %s began with facts the gateway inferred", plural(s.Inexact, "changed stage"))
	}
	if s.Failed > 0 {
		fmt.Fprintf(w, "; %s could not be rebuilt", plural(s.Failed, "stage"))
	}
	fmt.Fprintln(w)
	for _, t := range rep.Turns {
		fmt.Fprintf(w, "\n%s  session %s", t.ID, t.Session)
		if t.Lane != "" {
			fmt.Fprintf(w, "  lane %s", t.Lane)
		}
		fmt.Fprintf(w, "  %s  %s  (%s:%d)\n", t.Time, t.Outcome, t.File, t.Line)
		for _, st := range t.Stages {
			fmt.Fprintf(w, "  %s: %s", st.Stage, strings.Join(st.Changes, ", "))
			if len(st.Inexact) > 0 {
				fmt.Fprintf(w, "  (inferred: %s)", strings.Join(st.Inexact, ", "))
			}
			fmt.Fprintln(w)
			if st.Error != "" {
				fmt.Fprintf(w, "    error: %s\n", st.Error)
			}
			if c := st.Verdict; c != nil {
				fmt.Fprintf(w, "    verdict  was %s\n             now %s\n", c.Was, c.Now)
			}
			if c := st.Fired; c != nil {
				fmt.Fprintf(w, "    fired    was %s\n             now %s\n", listOrNone(c.Was), listOrNone(c.Now))
			}
			if c := st.Request; c != nil {
				fmt.Fprintf(w, "    request  was %s\n             now %s\n", shapeText(c.Was), shapeText(c.Now))
			}
			if c := st.Effects; c != nil {
				fmt.Fprintf(w, "    effects  was %s\n             now %s\n", effectsText(c.Was), effectsText(c.Now))
			}
		}
	}
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "(none)"
	}
	return strings.Join(l, ", ")
}

// shapeText prints a request's shape: previous_response_id, then each item by its key, a
// made output with the start of its digest.
func shapeText(s RequestShape) string {
	prev := s.PreviousResponseID
	if prev == "" {
		prev = `""`
	}
	items := make([]string, len(s.Items))
	for i, it := range s.Items {
		items[i] = it.Key
		if it.Made != "" {
			items[i] += " (made " + it.Made[:min(8, len(it.Made))] + ")"
		}
	}
	return "previous_response_id " + prev + "; items [" + strings.Join(items, ", ") + "]"
}

func effectsText(e engine.EffectsFacts) string {
	var parts []string
	if e.Anchor != nil {
		parts = append(parts, fmt.Sprintf("anchor %q", *e.Anchor))
	}
	if p := e.PutPending; p != nil {
		ids := make([]string, len(p.Calls))
		for i, c := range p.Calls {
			ids[i] = c.ID
		}
		parts = append(parts, fmt.Sprintf("pending of %s [%s]", p.ResponseID, strings.Join(ids, ", ")))
	}
	if len(e.DeletePending) > 0 {
		parts = append(parts, "delete pending "+strings.Join(e.DeletePending, ", "))
	}
	if e.Transcript != "" {
		parts = append(parts, "transcript "+e.Transcript)
	}
	if e.UpstreamCached != nil {
		parts = append(parts, fmt.Sprintf("upstream holds %q", *e.UpstreamCached))
	}
	if len(parts) == 0 {
		return "(none)"
	}
	return strings.Join(parts, "; ")
}
