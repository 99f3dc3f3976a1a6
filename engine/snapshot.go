package engine

import "slices"

// Snapshot is an immutable compiled policy set. It is safe for concurrent use: a turn
// evaluates against one snapshot from start to end, whatever reloads happen meanwhile.
type Snapshot struct {
	// Hash identifies the policy set's content (sha256 of names and bytes).
	Hash string
	// Policies are the parsed files, in load order.
	Policies []*Policy
	// TurnCost is the runtime cost limit of one stage evaluation.
	TurnCost uint64

	stages   map[string][]*compiledRule
	rules    []*compiledRule
	observer Observer
}

// Rules returns the ids of every rule in evaluation order, stage by stage.
func (s *Snapshot) Rules() []RuleInfo {
	out := make([]RuleInfo, 0, len(s.rules))
	for _, r := range s.rules {
		out = append(out, RuleInfo{Policy: r.policy, ID: r.ID, Stage: r.Stage, Reason: r.Reason, Shadow: r.Shadow, Pos: r.Pos})
	}
	return out
}

// RuleInfo describes one compiled rule.
type RuleInfo struct {
	Policy, ID, Stage, Reason string
	Shadow                    bool
	Pos                       Pos
}

// HasRule reports whether a rule id exists in the snapshot.
func (s *Snapshot) HasRule(id string) bool {
	return slices.ContainsFunc(s.rules, func(r *compiledRule) bool { return r.ID == id })
}

// Reasons returns every reason label a rule of the snapshot can report.
func (s *Snapshot) Reasons() []string {
	var out []string
	for _, r := range s.rules {
		if !slices.Contains(out, r.Reason) {
			out = append(out, r.Reason)
		}
	}
	slices.Sort(out)
	return out
}
