package loadgen

import (
	"fmt"
	"strings"
)

// TargetRow is one issue-14 target read off a run. Every value is a difference or a ratio
// between arms measured in the same phase (or, for Redis over local, between two phases
// each read against its own floor), never an absolute time.
type TargetRow struct {
	Target   string  `json:"target"`
	Measured string  `json:"measured"` // the figures the value comes from
	Value    float64 `json:"value"`
	Limit    float64 `json:"limit"`
	Unit     string  `json:"unit"` // "µs" or "×"
	// AtLeast marks a target met at Value ≥ Limit (throughput); the others are met at
	// Value ≤ Limit.
	AtLeast bool `json:"at_least,omitempty"`
	Met     bool `json:"met"`
}

// checked returns t with Met set.
func (t TargetRow) checked() TargetRow {
	t.Met = t.Value <= t.Limit
	if t.AtLeast {
		t.Met = t.Value >= t.Limit
	}
	return t
}

// floorClass returns the floor-armed class of a phase, nil when the run lacks either.
func (r *Report) floorClass(phase, class string) *ClassResult {
	for i := range r.Phases {
		if r.Phases[i].Name != phase {
			continue
		}
		for j := range r.Phases[i].Classes {
			if c := &r.Phases[i].Classes[j]; c.Class == class && c.Floor != nil {
				return c
			}
		}
	}
	return nil
}

// latencyTargets are the classes of the added-p50 targets: the phase of each at 1 session,
// without its store suffix, and the allowance over the floor; the allowance of Redis over
// the local store follows.
var latencyTargets = []struct {
	what, phase, class string
	overFloor, redis   float64
}{
	{"WebSocket chained 3 KB", "ws-small-1", classWSChained3K, 60, 60},
	{"HTTP+SSE 3 KB", "http-small-1", classHTTP3K, 60, 60},
	{"WebSocket 175 KB full create", "ws-big-1", classWSFull175K, 400, 200},
	{"HTTP+SSE 175 KB", "http-big-1", classHTTP175K, 400, 200},
}

// cpuLimit and tputLimit are the CPU-per-turn (over the floor's) and throughput
// (over direct) targets.
const (
	cpuLimit  = 1.5
	tputLimit = 0.8
)

// targets reads the issue-14 targets off r; a target whose phases did not run is left out.
// Added latency is at the terminal event, p50, 1 session: over the floor with the local
// store; Redis over local compares the two stores' gateway-over-floor figures, so that each
// is taken against the floor of its own phase (the phases run seconds apart, and the
// floor carries the machine state of its phase).
func targets(r *Report) []TargetRow {
	var out []TargetRow
	for _, lt := range latencyTargets {
		if c := r.floorClass(lt.phase+"-local", lt.class); c != nil {
			out = append(out, TargetRow{
				Target: fmt.Sprintf("%s, added p50 ≤ floor + %.0f µs (%s-local)", lt.what, lt.overFloor, lt.phase),
				Measured: fmt.Sprintf("gateway +%.0f, floor +%.0f µs over direct (%s× the floor's)", c.AddedTotal.P50,
					c.Floor.AddedTotal.P50, ratioCell(c.Floor.RatioTotal.P50)),
				Value: c.Floor.GatewayOverTotal.P50, Limit: lt.overFloor, Unit: "µs",
			}.checked())
		}
	}
	for _, lt := range latencyTargets {
		rc, lc := r.floorClass(lt.phase+"-redis", lt.class), r.floorClass(lt.phase+"-local", lt.class)
		if rc != nil && lc != nil {
			out = append(out, TargetRow{
				Target: fmt.Sprintf("%s, Redis ≤ local + %.0f µs (added p50 over each phase's floor)", lt.what, lt.redis),
				Measured: fmt.Sprintf("Redis floor + %.0f, local floor + %.0f µs (over direct: +%.0f, +%.0f)",
					rc.Floor.GatewayOverTotal.P50, lc.Floor.GatewayOverTotal.P50, rc.AddedTotal.P50, lc.AddedTotal.P50),
				Value: rc.Floor.GatewayOverTotal.P50 - lc.Floor.GatewayOverTotal.P50, Limit: lt.redis, Unit: "µs",
			}.checked())
		}
	}
	for _, p := range r.Phases {
		if p.Sessions != 10 || p.Instances != 1 || p.FloorCPUPerTurnUs <= 0 || strings.HasSuffix(p.Name, "inst") {
			continue
		}
		out = append(out, TargetRow{
			Target:   fmt.Sprintf("CPU per turn ≤ %.1f× the floor's (%s)", cpuLimit, p.Name),
			Measured: fmt.Sprintf("gateway %.0f, floor %.0f µs per turn", p.CPUPerTurnUs, p.FloorCPUPerTurnUs),
			Value:    p.CPUOverFloor, Limit: cpuLimit, Unit: "×",
		}.checked())
	}
	if t := r.Throughput; t != nil && t.DirectTurnsPS > 0 {
		out = append(out, TargetRow{
			Target: fmt.Sprintf("throughput at saturation ≥ %.1f× direct (%d sessions, chained 3 KB WebSocket, Redis)", tputLimit, t.Sessions),
			Measured: fmt.Sprintf("direct %.0f, gateway %.0f, floor %.0f turns/s (floor %s× direct); per round %s, floor %s", t.DirectTurnsPS,
				t.GatewayTurnsPS, t.FloorTurnsPS, ratioCell(t.FloorRatio), spread(t.GatewayRoundRatios), spread(t.FloorRoundRatios)),
			Value: t.Ratio, Limit: tputLimit, Unit: "×", AtLeast: true,
		}.checked())
	}
	return out
}
