package policytest

import (
	"fmt"
	"slices"
	"strings"

	"chainmend/engine"
	"chainmend/responses"
)

// Violation is one break of the pairing rule (SPEC §2) in a request as it would go upstream.
type Violation struct {
	// CallID is the call id the violation is about.
	CallID string `json:"call_id"`
	// Kind is "unanswered_call" (a call of the input without an output in the input),
	// "unanswered_pending" (a pending call of the chained response without an output),
	// "orphan_output" (an output that answers no call) or "duplicate_output" (a call
	// answered more than once).
	Kind string `json:"kind"`
}

// String says what is wrong in the upstream's words.
func (v Violation) String() string {
	switch v.Kind {
	case "unanswered_call":
		return "call " + v.CallID + " has no output"
	case "unanswered_pending":
		return "pending call " + v.CallID + " of the chained response has no output"
	case "orphan_output":
		return "output " + v.CallID + " answers no call"
	case "duplicate_output":
		return "call " + v.CallID + " is answered more than once"
	}
	return v.Kind + " " + v.CallID
}

// PairingViolations checks a request as it would go upstream against the pairing rule of
// SPEC §2: every call needs exactly one output, every output its call. chained are the
// pending calls the state store knew before the stage ran: when the request chains to
// their response (previous_response_id is chained.ResponseID and chained.Known), its
// calls count as calls of the request, so outputs may answer them and each needs one.
// When the request chains to a response whose calls are unknown, an output without a call
// in the input may answer it, and only the input's own calls are judged.
func PairingViolations(req *responses.Request, chained engine.Pending) []Violation {
	f := req.Facts()
	prev := req.PreviousResponseID()
	known := prev == "" || (chained.Known && chained.ResponseID == prev)
	var pending []string
	if prev != "" && known {
		for _, c := range chained.Calls {
			pending = append(pending, c.ID)
		}
	}
	var out []Violation
	for _, c := range f.Unanswered {
		out = append(out, Violation{CallID: c, Kind: "unanswered_call"})
	}
	for _, c := range pending {
		if !slices.Contains(f.Outputs, c) && !slices.Contains(f.Calls, c) {
			out = append(out, Violation{CallID: c, Kind: "unanswered_pending"})
		}
	}
	if known {
		for _, o := range f.Orphans {
			if !slices.Contains(pending, o) {
				out = append(out, Violation{CallID: o, Kind: "orphan_output"})
			}
		}
	}
	for _, d := range f.Duplicates {
		out = append(out, Violation{CallID: d, Kind: "duplicate_output"})
	}
	return out
}

// clonePending copies a turn's pending calls, which evaluation replaces when a rule moves
// the anchor: the guard judges the request against what the store knew before the stage.
func clonePending(p engine.Pending) engine.Pending {
	p.Calls = slices.Clone(p.Calls)
	return p
}

func violationsString(vs []Violation) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = v.String()
	}
	return strings.Join(parts, "; ")
}

// PairingLint runs the pre_send cases of files against snap and reports, as lint findings
// at the case's line, every request that would go upstream with its pairing broken and
// whose case does not say so (expect.broken_pairing). The reload gate calls it: a set
// whose declared expectations hold is not refused for it, but the operator is told.
func PairingLint(snap *engine.Snapshot, files []*File) (engine.Diagnostics, error) {
	rep, err := RunWith(snap, files, Options{PairingAsLint: true})
	if err != nil {
		return nil, err
	}
	return rep.Lint, nil
}

// pairingFinding formats the guard's finding for a case.
func pairingFinding(stage string, vs []Violation) string {
	return fmt.Sprintf("pairing broken after %s: %s (SPEC §2; the upstream refuses it)", stage, violationsString(vs))
}
