package engine

import (
	"slices"
	"sort"
	"strings"
)

// stageEdge is one run_stage: the stage it enters and where it is written.
type stageEdge struct {
	to  string
	pos Pos
}

// stageEdges lists the run_stage edges of a compiled snapshot by the stage they leave.
func stageEdges(s *Snapshot) map[string][]stageEdge {
	edges := map[string][]stageEdge{}
	for _, r := range s.rules {
		for _, a := range r.actions {
			if a.Kind == ActRunStage {
				edges[r.Stage] = append(edges[r.Stage], stageEdge{to: a.Word, pos: a.Pos})
			}
		}
	}
	return edges
}

// checkCycles refuses run_stage loops, which would never end, at the run_stage that closes
// the loop.
func checkCycles(s *Snapshot, sink *diagSink) {
	edges := stageEdges(s)
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[string]int{}
	// path is the chain of stages being visited, to show the loop in the message.
	var path []string
	var visit func(string) bool
	visit = func(n string) bool {
		state[n] = visiting
		path = append(path, n)
		for _, e := range edges[n] {
			switch state[e.to] {
			case visiting:
				loop := append(slices.Clone(path[slices.Index(path, e.to):]), e.to)
				sink.errorf(e.pos, "run_stage %q forms a cycle: %s", e.to, strings.Join(loop, " -> "))
				return true
			case unvisited:
				if visit(e.to) {
					return true
				}
			}
		}
		path = path[:len(path)-1]
		state[n] = done
		return false
	}
	stages := make([]string, 0, len(edges))
	for st := range edges {
		stages = append(stages, st)
	}
	sort.Strings(stages)
	for _, st := range stages {
		if state[st] == unvisited && visit(st) {
			return
		}
	}
}

// entriesReaching maps every stage to the entry stages whose evaluation reaches it: an
// entry stage reaches itself and, through run_stage, the sub-stages it enters. A sub-stage
// that no entry stage reaches maps to nil.
func entriesReaching(policies []*Policy) map[string][]string {
	edges := map[string][]string{}
	for _, p := range policies {
		for _, r := range p.Rules {
			for _, a := range r.Actions {
				if a.Kind == ActRunStage {
					edges[r.Stage] = append(edges[r.Stage], a.Word)
				}
			}
		}
	}
	out := map[string][]string{}
	for _, entry := range entryStages {
		seen := map[string]bool{entry: true}
		queue := []string{entry}
		for len(queue) > 0 {
			st := queue[0]
			queue = queue[1:]
			out[st] = append(out[st], entry)
			for _, to := range edges[st] {
				if !seen[to] && !isEntryStage(to) {
					seen[to] = true
					queue = append(queue, to)
				}
			}
		}
	}
	return out
}

// checkActionStage applies the entry-stage limits of an action (retry only where an
// upstream error is recovered, record_pending only after a response, …) to a rule and, for
// a sub-stage, to every entry stage that reaches it through run_stage.
func checkActionStage(r *Rule, a *Action, spec actionSpec, entries []string, sink *diagSink) {
	if spec.stages == nil {
		return
	}
	for _, entry := range entries {
		if slices.Contains(spec.stages, entry) {
			continue
		}
		if entry == r.Stage {
			sink.errorf(a.Pos, "action %s is not allowed in stage %s (only in %s)", a.Kind, r.Stage, strings.Join(spec.stages, ", "))
		} else {
			sink.errorf(a.Pos, "action %s is not allowed in stage %s (entered from %s; only in %s)",
				a.Kind, r.Stage, entry, strings.Join(spec.stages, ", "))
		}
	}
}
