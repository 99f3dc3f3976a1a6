package policytest

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"chainmend/engine"
	"chainmend/responses"
)

// Result is the result of one case.
type Result struct {
	File     string        `json:"file"`
	Case     string        `json:"case"`
	Line     int           `json:"line"`
	Passed   bool          `json:"passed"`
	Failures []string      `json:"failures,omitempty"`
	Fired    []string      `json:"fired"`
	Duration time.Duration `json:"duration_ns"`
}

// Name is file/case.
func (r Result) Name() string { return r.File + "/" + r.Case }

// Report is the result of a run.
type Report struct {
	Results []Result `json:"results"`
	Passed  int      `json:"passed"`
	Failed  int      `json:"failed"`
	// Unfired lists rules that no case fired.
	Unfired []string `json:"unfired"`
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
			res, err := runCase(snap, f, c, opts)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: case %q: %w", f.path, c.line, c.Name, err)
			}
			for _, id := range res.Fired {
				fired[id] = true
			}
			rep.Results = append(rep.Results, res)
			if res.Passed {
				rep.Passed++
			} else {
				rep.Failed++
			}
		}
	}
	for _, r := range snap.Rules() {
		if !fired[r.ID] {
			rep.Unfired = append(rep.Unfired, r.ID)
		}
	}
	return rep, nil
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
	if c.Response != nil && firstNonEmpty(c.Stage, f.Defaults.Stage) != engine.StagePostResponse {
		return fmt.Errorf("%s:%d: case %q: a response is bookkept only in stage %s", f.path, c.line, c.Name, engine.StagePostResponse)
	}
	return nil
}

func runCase(snap *engine.Snapshot, f *File, c *Case, opts Options) (Result, error) {
	res := Result{File: f.Name, Case: c.Name, Line: c.line}
	t, err := BuildTurn(f, c)
	if err != nil {
		return res, err
	}
	stage := firstNonEmpty(c.Stage, f.Defaults.Stage, engine.StagePreSend)
	original := append([]byte(nil), t.Request.Bytes()...)
	start := time.Now()
	out := snap.Evaluate(stage, t, engine.WithEnforced(c.Enforce...))
	res.Duration = time.Since(start)
	for _, fr := range out.Fired {
		res.Fired = append(res.Fired, fr.Rule)
	}
	fail := func(format string, args ...any) { res.Failures = append(res.Failures, fmt.Sprintf(format, args...)) }
	if out.Err != nil {
		fail("evaluation error: %v", out.Err)
	}
	e := &c.Expect
	if e.Verdict != "" && string(out.Verdict) != e.Verdict {
		fail("verdict: want %s, got %s", e.Verdict, out.Verdict)
	}
	shown := slices.DeleteFunc(slices.Clone(res.Fired), func(id string) bool { return slices.Contains(f.Defaults.Ignore, id) })
	if e.Fired != nil && !opts.OutcomeOnly && !slices.Equal(shown, *e.Fired) {
		fail("fired rules:\n\t\twant %s\n\t\tgot  %s", list(*e.Fired), list(shown))
	}
	if e.Reasons != nil && !opts.IgnoreReasons {
		var reasons []string
		for _, fr := range out.Fired {
			if !slices.Contains(f.Defaults.Ignore, fr.Rule) {
				reasons = append(reasons, fr.Reason)
			}
		}
		if !slices.Equal(reasons, *e.Reasons) {
			fail("reasons:\n\t\twant %s\n\t\tgot  %s", list(*e.Reasons), list(reasons))
		}
	}
	for _, id := range e.NotFired {
		if !opts.OutcomeOnly && slices.Contains(res.Fired, id) {
			fail("rule %s fired but must not", id)
		}
	}
	if e.Reject != nil {
		switch r := out.Reject; {
		case r == nil:
			fail("reject: want code %q, got no rejection", e.Reject.Code)
		default:
			if e.Reject.Code != "" && r.Code != e.Reject.Code {
				fail("reject code: want %q, got %q", e.Reject.Code, r.Code)
			}
			if e.Reject.Status != 0 && r.Status != e.Reject.Status {
				fail("reject status: want %d, got %d", e.Reject.Status, r.Status)
			}
			if e.Reject.MessageContains != "" && !strings.Contains(r.Message, e.Reject.MessageContains) {
				fail("reject message: want it to contain %q, got %q", e.Reject.MessageContains, r.Message)
			}
		}
	}
	if e.ClearAnchor != nil && out.ClearsAnchor() != *e.ClearAnchor {
		fail("clear_anchor: want %v, got %v", *e.ClearAnchor, out.ClearsAnchor())
	}
	if e.Effects != nil {
		diffs, err := effectsDiff(e.Effects, &out.Effects)
		if err != nil {
			return res, fmt.Errorf("expect.effects: %w", err)
		}
		for _, d := range diffs {
			fail("%s", d)
		}
	}
	if e.Class != "" {
		got := ""
		if t.Error != nil {
			got = t.Error.Class
		}
		if got != e.Class {
			fail("class: want %q, got %q", e.Class, got)
		}
	}
	final := t.Request.Bytes()
	var actual any
	if err := json.Unmarshal(final, &actual); err != nil {
		fail("resulting request is not valid JSON: %v", err)
	}
	if e.Unchanged && string(final) != string(original) {
		fail("request changed but must not:\n\t\twant %s\n\t\tgot  %s", original, final)
	}
	if e.Request.Kind != 0 {
		want, err := nodeJSON(&e.Request)
		if err != nil {
			return res, fmt.Errorf("expect.request: %w", err)
		}
		var wantV any
		_ = json.Unmarshal(want, &wantV)
		for _, d := range subsetDiff("request", wantV, actual) {
			fail("%s", d)
		}
	}
	if m, ok := actual.(map[string]any); ok {
		for _, k := range e.Absent {
			if _, present := m[k]; present {
				fail("request.%s: want absent, got %s", k, compact(m[k]))
			}
		}
	}
	res.Passed = len(res.Failures) == 0
	return res, nil
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
func effectsDiff(want *Effects, got *engine.Effects) ([]string, error) {
	var out []string
	if want.Anchor != nil {
		switch {
		case got.Anchor == nil:
			out = append(out, fmt.Sprintf("effects.anchor: want %q, got unchanged", *want.Anchor))
		case *got.Anchor != *want.Anchor:
			out = append(out, fmt.Sprintf("effects.anchor: want %q, got %q", *want.Anchor, *got.Anchor))
		}
	}
	pe, err := pendingEffect(&want.Pending)
	if err != nil {
		return nil, err
	}
	switch {
	case pe == nil:
	case pe.none && got.PutPending != nil:
		out = append(out, fmt.Sprintf("effects.pending: want none, got %s", pendingString(got.PutPending)))
	case pe.none:
	case got.PutPending == nil:
		out = append(out, fmt.Sprintf("effects.pending: want %s, got none", pe.String()))
	default:
		if w, g := pe.String(), pendingString(got.PutPending); w != g {
			out = append(out, fmt.Sprintf("effects.pending: want %s, got %s", w, g))
		}
	}
	if want.DeletePending != nil && !slices.Equal(*want.DeletePending, got.DeletePending) {
		out = append(out, fmt.Sprintf("effects.delete_pending: want %s, got %s", list(*want.DeletePending), list(got.DeletePending)))
	}
	if want.Transcript != "" && transcriptOps[want.Transcript] != got.Transcript {
		out = append(out, fmt.Sprintf("effects.transcript: want %s, got %s", want.Transcript, got.Transcript))
	}
	if want.UpstreamCached != nil {
		switch {
		case got.UpstreamCached == nil:
			out = append(out, fmt.Sprintf("effects.upstream_cached: want %q, got unchanged", *want.UpstreamCached))
		case *got.UpstreamCached != *want.UpstreamCached:
			out = append(out, fmt.Sprintf("effects.upstream_cached: want %q, got %q", *want.UpstreamCached, *got.UpstreamCached))
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
func subsetDiff(path string, want, actual any) []string {
	switch w := want.(type) {
	case map[string]any:
		a, ok := actual.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: want an object, got %s", path, compact(actual))}
		}
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var out []string
		for _, k := range keys {
			av, ok := a[k]
			if !ok {
				out = append(out, fmt.Sprintf("%s.%s: want %s, got nothing", path, k, compact(w[k])))
				continue
			}
			out = append(out, subsetDiff(path+"."+k, w[k], av)...)
		}
		return out
	case []any:
		a, ok := actual.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: want an array, got %s", path, compact(actual))}
		}
		if len(a) != len(w) {
			return []string{fmt.Sprintf("%s: want %d items, got %d:\n\t\twant %s\n\t\tgot  %s", path, len(w), len(a), compact(w), compact(a))}
		}
		var out []string
		for i := range w {
			out = append(out, subsetDiff(fmt.Sprintf("%s[%d]", path, i), w[i], a[i])...)
		}
		return out
	default:
		if compact(want) != compact(actual) {
			return []string{fmt.Sprintf("%s: want %s, got %s", path, compact(want), compact(actual))}
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
