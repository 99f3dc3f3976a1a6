package policytest

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"chainmend/engine"
	"chainmend/responses"
)

// Result is the result of one case.
type Result struct {
	// File is the fixture file's path; Fixture is its name (the file's name: key, else
	// the file name without extension).
	File    string `json:"file"`
	Fixture string `json:"fixture"`
	Case    string `json:"case"`
	// Line is the case's line in File.
	Line   int  `json:"line"`
	Passed bool `json:"passed"`
	// Failures are the failed expectations as a terminal shows them; Details are the same
	// failures with their fields apart, for machines.
	Failures []string  `json:"-"`
	Details  []Failure `json:"failures,omitempty"`
	Fired    []string  `json:"fired"`
	// Pairing lists what is wrong with the pairing of the request after pre_send, whether
	// or not the case expects it.
	Pairing  []Violation   `json:"pairing,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

// Failure is one failed expectation of a case.
type Failure struct {
	// File is the fixture file's path and Line the line of the failing expectation in it
	// (the case's line when the expectation is not written in the case: the pairing guard).
	File string `json:"file"`
	Line int    `json:"line"`
	Case string `json:"case"`
	// Field names the expectation: verdict, fired, reasons, not_fired, reject.code,
	// effects.anchor, class, unchanged, request.input[1].output, pairing, …
	Field string `json:"field"`
	Want  string `json:"want,omitempty"`
	Got   string `json:"got,omitempty"`
	// Message is the failure as the text report prints it.
	Message string `json:"message"`
}

// Name is fixture/case, the name -run matches.
func (r Result) Name() string { return r.Fixture + "/" + r.Case }

// Report is the result of a run.
type Report struct {
	Results []Result `json:"results"`
	Passed  int      `json:"passed"`
	Failed  int      `json:"failed"`
	// Unfired lists rules of the whole set that no case of the run fired.
	Unfired []string `json:"unfired"`
	// Coverage is the rule coverage of each policy file, in load order.
	Coverage []FileCoverage `json:"coverage"`
	// Lint holds findings that do not fail a case: broken pairing with
	// Options.PairingAsLint.
	Lint engine.Diagnostics `json:"lint,omitempty"`
}

// FileCoverage is how many rules of one policy file the cases of a run fired.
type FileCoverage struct {
	File   string `json:"file"`
	Policy string `json:"policy"`
	Rules  int    `json:"rules"`
	Fired  int    `json:"fired"`
	// Unfired are the ids of the file's rules that no case fired, in file order.
	Unfired []string `json:"unfired"`
	// UnderTest is true when a case of the run names a rule of the file in fired,
	// not_fired or enforce: the run is about the file, so its unfired rules are a finding.
	// The other files only took part (pair-input fires on every pre_send turn).
	UnderTest bool `json:"under_test"`
}

// UncoveredUnderTest returns the unfired rules of the policy files under test.
func (r *Report) UncoveredUnderTest() []string {
	var out []string
	for _, c := range r.Coverage {
		if c.UnderTest {
			out = append(out, c.Unfired...)
		}
	}
	return out
}

// Options configure RunWith.
type Options struct {
	// Filter selects the cases whose file/case name matches; nil runs every case.
	Filter *regexp.Regexp
	// OutcomeOnly judges a case by what the policies did, not by which rules did it: the
	// expectations that name rules (fired, not_fired, ignore_fired) are ignored, and so are
	// names that the policy set does not know. A mutation test uses it to ask whether
	// deleting a rule changes behaviour rather than merely the list of fired rules.
	OutcomeOnly bool
	// IgnoreReasons also ignores expect.reasons (the metric labels).
	IgnoreReasons bool
	// PairingAsLint reports a request whose pairing is broken after pre_send, in a case
	// that does not expect it, as a lint finding in Report.Lint instead of failing the
	// case: the reload gate refuses a set for its declared expectations only.
	PairingAsLint bool
}

// Run evaluates every case whose file/case name matches filter (nil: all). A fixture that
// names an unknown rule is an error, not a failure: the fixture itself is wrong.
func Run(snap *engine.Snapshot, files []*File, filter *regexp.Regexp) (*Report, error) {
	return RunWith(snap, files, Options{Filter: filter})
}

// RunWith evaluates the cases with options.
func RunWith(snap *engine.Snapshot, files []*File, opts Options) (*Report, error) {
	rep := &Report{}
	fired := map[string]bool{}
	named := map[string]bool{}
	for _, f := range files {
		for i := range f.Cases {
			c := &f.Cases[i]
			if !opts.OutcomeOnly {
				if err := checkRuleIDs(snap, f, c); err != nil {
					return nil, err
				}
			}
			if err := checkExpect(f, c); err != nil {
				return nil, err
			}
			name := f.Name + "/" + c.Name
			if opts.Filter != nil && !opts.Filter.MatchString(name) {
				continue
			}
			res, lint, err := runCase(snap, f, c, opts)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: case %q: %w", f.path, c.line, c.Name, err)
			}
			for _, id := range res.Fired {
				fired[id] = true
			}
			if c.Expect.Fired != nil {
				for _, id := range *c.Expect.Fired {
					named[id] = true
				}
			}
			for _, id := range slices.Concat(c.Expect.NotFired, c.Enforce) {
				named[id] = true
			}
			rep.Lint = append(rep.Lint, lint...)
			rep.Results = append(rep.Results, res)
			if res.Passed {
				rep.Passed++
			} else {
				rep.Failed++
			}
		}
	}
	var cov *FileCoverage
	for _, r := range snap.Rules() {
		if !fired[r.ID] {
			rep.Unfired = append(rep.Unfired, r.ID)
		}
		if cov == nil || cov.File != r.Pos.File {
			// Rules come stage by stage, so a file's rules may come back after another's.
			i := slices.IndexFunc(rep.Coverage, func(c FileCoverage) bool { return c.File == r.Pos.File })
			if i < 0 {
				rep.Coverage = append(rep.Coverage, FileCoverage{File: r.Pos.File, Policy: r.Policy, Unfired: []string{}})
				i = len(rep.Coverage) - 1
			}
			cov = &rep.Coverage[i]
		}
		cov.Rules++
		if fired[r.ID] {
			cov.Fired++
		} else {
			cov.Unfired = append(cov.Unfired, r.ID)
		}
		if named[r.ID] {
			cov.UnderTest = true
		}
	}
	for i := range rep.Coverage {
		c := &rep.Coverage[i]
		c.Unfired = orderInFile(snap, c.File, c.Unfired)
	}
	return rep, nil
}

// orderInFile sorts rule ids by their position in the file: Rules lists them stage by
// stage, and an author reads a file top to bottom.
func orderInFile(snap *engine.Snapshot, file string, ids []string) []string {
	line := map[string]int{}
	for _, r := range snap.Rules() {
		if r.Pos.File == file {
			line[r.ID] = r.Pos.Line
		}
	}
	slices.SortStableFunc(ids, func(a, b string) int { return line[a] - line[b] })
	return ids
}

func checkRuleIDs(snap *engine.Snapshot, f *File, c *Case) error {
	var ids []string
	if c.Expect.Fired != nil {
		ids = append(ids, *c.Expect.Fired...)
	}
	ids = append(ids, c.Expect.NotFired...)
	ids = append(ids, f.Defaults.Ignore...)
	ids = append(ids, c.Enforce...)
	for _, id := range ids {
		if !snap.HasRule(id) {
			return fmt.Errorf("%s:%d: case %q names unknown rule %q", f.path, c.line, c.Name, id)
		}
	}
	// Enforcing a rule that is not shadow changes nothing: the case would only seem to pin
	// another reading.
	for _, id := range c.Enforce {
		for _, r := range snap.Rules() {
			if r.ID == id && !r.Shadow {
				return fmt.Errorf("%s:%d: case %q enforces rule %q, which is not a shadow rule", f.path, c.line, c.Name, id)
			}
		}
	}
	if c.Expect.Reasons != nil {
		known := snap.Reasons()
		for _, r := range *c.Expect.Reasons {
			if !slices.Contains(known, r) {
				return fmt.Errorf("%s:%d: case %q names unknown reason %q", f.path, c.line, c.Name, r)
			}
		}
	}
	return nil
}

// checkExpect refuses expectations that can never be met: an unknown verdict, transcript
// operation or pending shape.
func checkExpect(f *File, c *Case) error {
	if fx := c.Expect.Effects; fx != nil {
		if _, ok := transcriptOps[fx.Transcript]; !ok && fx.Transcript != "" {
			return fmt.Errorf("%s:%d: case %q: unknown effects.transcript %q (known: keep, append, reset, clear)", f.path, c.line, c.Name, fx.Transcript)
		}
		if _, err := pendingEffect(&fx.Pending); err != nil {
			return fmt.Errorf("%s:%d: case %q: effects.pending: %w", f.path, c.line, c.Name, err)
		}
	}
	switch v := c.Expect.Verdict; v {
	case "", string(engine.VerdictSend), string(engine.VerdictReject), string(engine.VerdictRetry), string(engine.VerdictForward):
	default:
		return fmt.Errorf("%s:%d: case %q: unknown verdict %q", f.path, c.line, c.Name, v)
	}
	stage := firstNonEmpty(c.Stage, f.Defaults.Stage, engine.StagePreSend)
	if c.Response != nil && stage != engine.StagePostResponse {
		return fmt.Errorf("%s:%d: case %q: a response is bookkept only in stage %s", f.path, c.line, c.Name, engine.StagePostResponse)
	}
	if c.Expect.BrokenPairing && stage != engine.StagePreSend {
		return fmt.Errorf("%s:%d: case %q: broken_pairing is checked after stage %s only, not %s", f.path, c.line, c.Name, engine.StagePreSend, stage)
	}
	return nil
}

// diff is one failed expectation before it is placed in the file.
type diff struct {
	field, want, got, msg string
}

func runCase(snap *engine.Snapshot, f *File, c *Case, opts Options) (Result, engine.Diagnostics, error) {
	res := Result{File: f.path, Fixture: f.Name, Case: c.Name, Line: c.line}
	t, err := BuildTurn(f, c)
	if err != nil {
		return res, nil, err
	}
	stage := firstNonEmpty(c.Stage, f.Defaults.Stage, engine.StagePreSend)
	original := append([]byte(nil), t.Request.Bytes()...)
	chained := clonePending(t.Pending)
	start := time.Now()
	out := snap.Evaluate(stage, t, engine.WithEnforced(c.Enforce...))
	res.Duration = time.Since(start)
	for _, fr := range out.Fired {
		res.Fired = append(res.Fired, fr.Rule)
	}
	add := func(d diff, at ...string) {
		res.Failures = append(res.Failures, d.msg)
		res.Details = append(res.Details, Failure{File: f.path, Line: c.expectLine(at...), Case: c.Name,
			Field: d.field, Want: d.want, Got: d.got, Message: d.msg})
	}
	if out.Err != nil {
		add(diff{field: "evaluation", got: out.Err.Error(), msg: fmt.Sprintf("evaluation error: %v", out.Err)})
	}
	e := &c.Expect
	if e.Verdict != "" && string(out.Verdict) != e.Verdict {
		add(diff{"verdict", e.Verdict, string(out.Verdict), fmt.Sprintf("verdict: want %s, got %s", e.Verdict, out.Verdict)}, "verdict")
	}
	shown := slices.DeleteFunc(slices.Clone(res.Fired), func(id string) bool { return slices.Contains(f.Defaults.Ignore, id) })
	if e.Fired != nil && !opts.OutcomeOnly && !slices.Equal(shown, *e.Fired) {
		add(diff{"fired", list(*e.Fired), list(shown), fmt.Sprintf("fired rules:\n\t\twant %s\n\t\tgot  %s", list(*e.Fired), list(shown))}, "fired")
	}
	if e.Reasons != nil && !opts.IgnoreReasons {
		var reasons []string
		for _, fr := range out.Fired {
			if !slices.Contains(f.Defaults.Ignore, fr.Rule) {
				reasons = append(reasons, fr.Reason)
			}
		}
		if !slices.Equal(reasons, *e.Reasons) {
			add(diff{"reasons", list(*e.Reasons), list(reasons), fmt.Sprintf("reasons:\n\t\twant %s\n\t\tgot  %s", list(*e.Reasons), list(reasons))}, "reasons")
		}
	}
	for _, id := range e.NotFired {
		if !opts.OutcomeOnly && slices.Contains(res.Fired, id) {
			add(diff{"not_fired", "not " + id, id, fmt.Sprintf("rule %s fired but must not", id)}, "not_fired")
		}
	}
	if e.Reject != nil {
		switch r := out.Reject; {
		case r == nil:
			add(diff{"reject", "code " + e.Reject.Code, "no rejection", fmt.Sprintf("reject: want code %q, got no rejection", e.Reject.Code)}, "reject")
		default:
			if e.Reject.Code != "" && r.Code != e.Reject.Code {
				add(diff{"reject.code", e.Reject.Code, r.Code, fmt.Sprintf("reject code: want %q, got %q", e.Reject.Code, r.Code)}, "reject", "code")
			}
			if e.Reject.Status != 0 && r.Status != e.Reject.Status {
				add(diff{"reject.status", strconv.Itoa(e.Reject.Status), strconv.Itoa(r.Status), fmt.Sprintf("reject status: want %d, got %d", e.Reject.Status, r.Status)}, "reject", "status")
			}
			if e.Reject.MessageContains != "" && !strings.Contains(r.Message, e.Reject.MessageContains) {
				add(diff{"reject.message_contains", e.Reject.MessageContains, r.Message,
					fmt.Sprintf("reject message: want it to contain %q, got %q", e.Reject.MessageContains, r.Message)}, "reject", "message_contains")
			}
		}
	}
	if e.ClearAnchor != nil && out.ClearsAnchor() != *e.ClearAnchor {
		add(diff{"clear_anchor", strconv.FormatBool(*e.ClearAnchor), strconv.FormatBool(out.ClearsAnchor()),
			fmt.Sprintf("clear_anchor: want %v, got %v", *e.ClearAnchor, out.ClearsAnchor())}, "clear_anchor")
	}
	if e.Effects != nil {
		diffs, err := effectsDiff(e.Effects, &out.Effects)
		if err != nil {
			return res, nil, fmt.Errorf("expect.effects: %w", err)
		}
		for _, d := range diffs {
			add(d, strings.Split(d.field, ".")...)
		}
	}
	if e.Class != "" {
		got := ""
		if t.Error != nil {
			got = t.Error.Class
		}
		if got != e.Class {
			add(diff{"class", e.Class, got, fmt.Sprintf("class: want %q, got %q", e.Class, got)}, "class")
		}
	}
	final := t.Request.Bytes()
	var actual any
	if err := json.Unmarshal(final, &actual); err != nil {
		add(diff{field: "request", got: string(final), msg: fmt.Sprintf("resulting request is not valid JSON: %v", err)})
	}
	if e.Unchanged && string(final) != string(original) {
		add(diff{"unchanged", string(original), string(final), fmt.Sprintf("request changed but must not:\n\t\twant %s\n\t\tgot  %s", original, final)}, "unchanged")
	}
	if e.Request.Kind != 0 {
		want, err := nodeJSON(&e.Request)
		if err != nil {
			return res, nil, fmt.Errorf("expect.request: %w", err)
		}
		var wantV any
		_ = json.Unmarshal(want, &wantV)
		for _, d := range subsetDiff("request", wantV, actual) {
			add(d, pathSegments(d.field)...)
		}
	}
	if m, ok := actual.(map[string]any); ok {
		for _, k := range e.Absent {
			if _, present := m[k]; present {
				add(diff{"request." + k, "absent", compact(m[k]), fmt.Sprintf("request.%s: want absent, got %s", k, compact(m[k]))}, "request_absent")
			}
		}
	}
	var lint engine.Diagnostics
	if stage == engine.StagePreSend && out.Verdict == engine.VerdictSend {
		res.Pairing = PairingViolations(t.Request, chained)
		switch {
		case len(res.Pairing) > 0 && !e.BrokenPairing && opts.PairingAsLint:
			lint = append(lint, engine.Diagnostic{Pos: engine.Pos{File: f.path, Line: c.line, Col: c.col()}, Severity: engine.SevLint,
				Msg: fmt.Sprintf("case %s: %s", res.Name(), pairingFinding(stage, res.Pairing))})
		case len(res.Pairing) > 0 && !e.BrokenPairing:
			add(diff{"pairing", "paired", violationsString(res.Pairing),
				pairingFinding(stage, res.Pairing) + "; write expect.broken_pairing: true if the case means it"})
		case len(res.Pairing) == 0 && e.BrokenPairing:
			add(diff{"broken_pairing", "a broken pairing", "paired", "broken_pairing: want the pairing broken after pre_send, got every call answered once"}, "broken_pairing")
		}
	}
	res.Passed = len(res.Failures) == 0
	return res, lint, nil
}

// expectLine returns the line of the expectation at path under the case's expect key
// (for example "request", "input", "[1]", "output"), or of the deepest part of it that
// is written; the case's line when expect is not, or for no path (the pairing guard
// judges the case, not one of its expectations).
func (c *Case) expectLine(path ...string) int {
	n := mappingValue(c.node, "expect")
	if n == nil || len(path) == 0 {
		return c.line
	}
	line := n.Line
	for _, seg := range path {
		n = child(n, seg)
		if n == nil {
			break
		}
		line = n.Line
	}
	return line
}

// col is the column of the case's mapping, for a position that needs one.
func (c *Case) col() int {
	if c.node == nil {
		return 1
	}
	return c.node.Column
}

// child follows one path segment: a key of a mapping or "[i]" of a sequence.
func child(n *yaml.Node, seg string) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n == nil {
		return nil
	}
	if strings.HasPrefix(seg, "[") && strings.HasSuffix(seg, "]") {
		i, err := strconv.Atoi(seg[1 : len(seg)-1])
		if err != nil || n.Kind != yaml.SequenceNode || i < 0 || i >= len(n.Content) {
			return nil
		}
		return n.Content[i]
	}
	return mappingValue(n, seg)
}

func mappingValue(n *yaml.Node, key string) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// pathSegments splits a subsetDiff path such as request.input[1].output into
// request, input, [1], output.
func pathSegments(path string) []string {
	var out []string
	for _, part := range strings.Split(path, ".") {
		for part != "" {
			i := strings.IndexByte(part, '[')
			switch {
			case i < 0:
				out = append(out, part)
				part = ""
			case i > 0:
				out = append(out, part[:i])
				part = part[i:]
			default:
				j := strings.IndexByte(part, ']')
				if j < 0 {
					out = append(out, part)
					part = ""
					continue
				}
				out = append(out, part[:j+1])
				part = part[j+1:]
			}
		}
	}
	return out
}

var transcriptOps = map[string]engine.TranscriptOp{
	"keep":   engine.TranscriptKeep,
	"append": engine.TranscriptAppend,
	"reset":  engine.TranscriptReset,
	"clear":  engine.TranscriptClear,
}

// pendingEffect decodes expect.effects.pending: nil and false for an absent key, nil and
// true for `pending: null`.
func pendingEffect(n *yaml.Node) (*PendingEffect, error) {
	if n.Kind == 0 {
		return nil, nil
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return &PendingEffect{none: true}, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping with response_id and calls, or null", n.Line)
	}
	for i := 0; i < len(n.Content); i += 2 {
		if k := n.Content[i].Value; k != "response_id" && k != "calls" {
			return nil, fmt.Errorf("line %d: unknown field %q (known: response_id, calls)", n.Content[i].Line, k)
		}
	}
	var pe PendingEffect
	if err := n.Decode(&pe); err != nil {
		return nil, err
	}
	if pe.ResponseID == "" {
		return nil, fmt.Errorf("line %d: response_id is required (write `pending: null` for no record)", n.Line)
	}
	return &pe, nil
}

// effectsDiff reports where the effects of a stage differ from the expected ones.
func effectsDiff(want *Effects, got *engine.Effects) ([]diff, error) {
	var out []diff
	if want.Anchor != nil {
		switch {
		case got.Anchor == nil:
			out = append(out, diff{"effects.anchor", strconv.Quote(*want.Anchor), "unchanged", fmt.Sprintf("effects.anchor: want %q, got unchanged", *want.Anchor)})
		case *got.Anchor != *want.Anchor:
			out = append(out, diff{"effects.anchor", strconv.Quote(*want.Anchor), strconv.Quote(*got.Anchor), fmt.Sprintf("effects.anchor: want %q, got %q", *want.Anchor, *got.Anchor)})
		}
	}
	pe, err := pendingEffect(&want.Pending)
	if err != nil {
		return nil, err
	}
	switch {
	case pe == nil:
	case pe.none && got.PutPending != nil:
		g := pendingString(got.PutPending)
		out = append(out, diff{"effects.pending", "none", g, fmt.Sprintf("effects.pending: want none, got %s", g)})
	case pe.none:
	case got.PutPending == nil:
		out = append(out, diff{"effects.pending", pe.String(), "none", fmt.Sprintf("effects.pending: want %s, got none", pe.String())})
	default:
		if w, g := pe.String(), pendingString(got.PutPending); w != g {
			out = append(out, diff{"effects.pending", w, g, fmt.Sprintf("effects.pending: want %s, got %s", w, g)})
		}
	}
	if want.DeletePending != nil && !slices.Equal(*want.DeletePending, got.DeletePending) {
		w, g := list(*want.DeletePending), list(got.DeletePending)
		out = append(out, diff{"effects.delete_pending", w, g, fmt.Sprintf("effects.delete_pending: want %s, got %s", w, g)})
	}
	if want.Transcript != "" && transcriptOps[want.Transcript] != got.Transcript {
		out = append(out, diff{"effects.transcript", want.Transcript, got.Transcript.String(),
			fmt.Sprintf("effects.transcript: want %s, got %s", want.Transcript, got.Transcript)})
	}
	if want.UpstreamCached != nil {
		switch {
		case got.UpstreamCached == nil:
			out = append(out, diff{"effects.upstream_cached", strconv.Quote(*want.UpstreamCached), "unchanged",
				fmt.Sprintf("effects.upstream_cached: want %q, got unchanged", *want.UpstreamCached)})
		case *got.UpstreamCached != *want.UpstreamCached:
			out = append(out, diff{"effects.upstream_cached", strconv.Quote(*want.UpstreamCached), strconv.Quote(*got.UpstreamCached),
				fmt.Sprintf("effects.upstream_cached: want %q, got %q", *want.UpstreamCached, *got.UpstreamCached)})
		}
	}
	return out, nil
}

// String formats an expected pending entry as pendingString does a recorded one.
func (pe *PendingEffect) String() string {
	calls := make([]engine.PendingCall, 0, len(pe.Calls))
	for _, c := range pe.Calls {
		id, kind, ok := strings.Cut(c, ":")
		if !ok {
			kind = responses.TypeFunctionCall
		}
		calls = append(calls, engine.PendingCall{ID: id, Kind: kind})
	}
	return pendingString(&engine.PendingPut{ResponseID: pe.ResponseID, Calls: calls})
}

func pendingString(p *engine.PendingPut) string {
	calls := make([]string, len(p.Calls))
	for i, c := range p.Calls {
		calls[i] = c.ID + ":" + c.Kind
	}
	return p.ResponseID + " " + list(calls)
}

// subsetDiff reports where actual does not contain want: objects match when every wanted key
// matches, arrays when they have the same length and every element matches.
func subsetDiff(path string, want, actual any) []diff {
	switch w := want.(type) {
	case map[string]any:
		a, ok := actual.(map[string]any)
		if !ok {
			return []diff{{path, "an object", compact(actual), fmt.Sprintf("%s: want an object, got %s", path, compact(actual))}}
		}
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var out []diff
		for _, k := range keys {
			av, ok := a[k]
			if !ok {
				out = append(out, diff{path + "." + k, compact(w[k]), "nothing", fmt.Sprintf("%s.%s: want %s, got nothing", path, k, compact(w[k]))})
				continue
			}
			out = append(out, subsetDiff(path+"."+k, w[k], av)...)
		}
		return out
	case []any:
		a, ok := actual.([]any)
		if !ok {
			return []diff{{path, "an array", compact(actual), fmt.Sprintf("%s: want an array, got %s", path, compact(actual))}}
		}
		if len(a) != len(w) {
			return []diff{{path, compact(w), compact(a), fmt.Sprintf("%s: want %d items, got %d:\n\t\twant %s\n\t\tgot  %s", path, len(w), len(a), compact(w), compact(a))}}
		}
		var out []diff
		for i := range w {
			out = append(out, subsetDiff(fmt.Sprintf("%s[%d]", path, i), w[i], a[i])...)
		}
		return out
	default:
		if compact(want) != compact(actual) {
			return []diff{{path, compact(want), compact(actual), fmt.Sprintf("%s: want %s, got %s", path, compact(want), compact(actual))}}
		}
	}
	return nil
}

func compact(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

func list(s []string) string {
	if len(s) == 0 {
		return "[]"
	}
	return "[" + strings.Join(s, ", ") + "]"
}
