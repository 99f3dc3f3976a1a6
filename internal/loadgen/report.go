package loadgen

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

func f0(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.0f", v)
}

func quad(d Dist) string {
	return strings.Join([]string{f0(d.P50), f0(d.P90), f0(d.P99), f0(d.P999)}, " / ")
}

// writeTables prints the report as Markdown tables (they go into BENCHMARKS.md as is).
func writeTables(w io.Writer, r *Report) {
	fmt.Fprintf(w, "Run %s, %s, %d CPUs, load average %s before, %s after, %.0f s.\n\n",
		r.Started, r.GoVersion, r.CPUs, r.LoadBefore, r.LoadAfter, r.WallSec)
	writeTargets(w, r.Targets)
	if len(r.Phases) > 0 {
		writePhases(w, r)
	}
	writeRest(w, r)
}

// writeTargets prints the issue-14 targets read off the run.
func writeTargets(w io.Writer, ts []TargetRow) {
	if len(ts) == 0 {
		return
	}
	fmt.Fprintln(w, "Issue-14 targets (terminal event; the floor is a raw TCP copy proxy run as a third arm of every latency phase):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | measured | value | met |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, t := range ts {
		v := fmt.Sprintf("%+.0f µs", t.Value)
		if t.Unit == "×" {
			v = fmt.Sprintf("%.2f×", t.Value)
		}
		fmt.Fprintf(w, "| %s | %s | **%s** | %s |\n", t.Target, t.Measured, v, cond(t.Met, "met", "not met"))
	}
	fmt.Fprintln(w)
}

// triple prints p50 / p90 / p99.
func triple(d Dist) string { return strings.Join([]string{f0(d.P50), f0(d.P90), f0(d.P99)}, " / ") }

// writePhases prints the latency phases' tables.
func writePhases(w io.Writer, r *Report) {
	fmt.Fprintln(w, "Latency added by the gateway, µs: \"added\" = gateway percentile − direct percentile;")
	fmt.Fprintln(w, "\"paired\" = percentiles of the per-turn differences (same turn, back to back). Each cell p50 / p90 / p99 / p99.9.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| phase | class | pairs | direct p50 first / terminal | added, first event | paired, first event | added, terminal | paired, terminal |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, p := range r.Phases {
		for _, c := range p.Classes {
			if c.Pairs < 10 {
				continue // the first create of each session, when the mix is about the rest
			}
			fmt.Fprintf(w, "| %s | %s | %d | %s / %s | %s | %s | %s | %s |\n", p.Name, c.Class, c.Pairs,
				f0(c.DirectTTFE.P50), f0(c.DirectTotal.P50), quad(c.AddedTTFE), quad(c.PairedTTFE), quad(c.AddedTotal), quad(c.PairedTotal))
		}
	}
	writeFloor(w, r)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Gateway cost per phase (CPU of the gateway process only, and of the floor proxy's; Redis counted from INFO commandstats):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| phase | instances | gateway turns | CPU µs/turn | floor CPU µs/turn | gateway / floor CPU | CPU s / 1,000 turns | RSS MiB | Redis read RT / 1,000 turns | write RT / 1,000 | commands / 1,000 | pace, turns/s (all sides) | errors |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, p := range r.Phases {
		rr, wr, cm := "–", "–", "–"
		if p.Redis != nil {
			rr, wr, cm = fmt.Sprintf("%.0f", p.RedisReadRTPer1000), fmt.Sprintf("%.0f", p.RedisWriteRTPer1000), fmt.Sprintf("%.0f", p.RedisCmdsPer1000)
		}
		fc := "–"
		if p.FloorCPUPerTurnUs > 0 {
			fc = fmt.Sprintf("%.0f", p.FloorCPUPerTurnUs)
		}
		fmt.Fprintf(w, "| %s | %d | %d | %.0f | %s | %s | %.3f | %.0f | %s | %s | %s | %.0f | %d |\n", p.Name, p.Instances, p.Pairs,
			p.CPUPerTurnUs, fc, ratioCell(p.CPUOverFloor), p.CPUsPer1000, float64(p.RSSBytes)/(1<<20), rr, wr, cm, p.TurnsPerSec, p.Errors)
	}
	for _, p := range r.Phases {
		if p.Redis != nil && len(p.Redis.Commands) > 0 && strings.HasPrefix(p.Name, "ws-small-1-") {
			keys := make([]string, 0, len(p.Redis.Commands))
			for k := range p.Redis.Commands {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			var parts []string
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%s %d", k, p.Redis.Commands[k]))
			}
			fmt.Fprintf(w, "\nRedis commands in %s (%d gateway turns): %s\n", p.Name, p.Pairs, strings.Join(parts, ", "))
		}
	}
}

// writeFloor prints the latency phases' classes against the floor, at the terminal event.
func writeFloor(w io.Writer, r *Report) {
	var rows []string
	for _, p := range r.Phases {
		for _, c := range p.Classes {
			if c.Pairs < 10 || c.Floor == nil {
				continue
			}
			f := c.Floor
			rows = append(rows, fmt.Sprintf("| %s | %s | %d | %s | %s | %s | %s | %s / %s / %s |", p.Name, c.Class, c.Pairs,
				triple(f.AddedTotal), triple(c.AddedTotal), triple(f.GatewayOverTotal), triple(f.GatewayOverPairedTotal),
				ratioCell(f.RatioTotal.P50), ratioCell(f.RatioTotal.P90), ratioCell(f.RatioTotal.P99)))
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Against the floor (a raw TCP copy proxy to the same emulator, run on every turn with direct and gateway), terminal event, µs,")
	fmt.Fprintln(w, "each cell p50 / p90 / p99: added = arm − direct percentile; gateway − floor = the gateway's added minus the floor's;")
	fmt.Fprintln(w, "paired = percentiles of the per-turn gateway − floor differences; ratio = the gateway's added over the floor's.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| phase | class | turns | floor added | gateway added | gateway − floor | paired gateway − floor | gateway / floor added |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, row := range rows {
		fmt.Fprintln(w, row)
	}
}

// writeRest prints everything but the latency phases.
func writeRest(w io.Writer, r *Report) {
	if t := r.Throughput; t != nil {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "Saturation (%d sessions of chained 3 KB WebSocket turns, %d × %.1f s windows per side, rotating direct, gateway, floor; "+
			"ratios over all windows, in brackets the range of the per-round ratios):\n\n", t.Sessions, t.Windows, t.WindowSec)
		fmt.Fprintln(w, "| direct turns/s | gateway turns/s | gateway / direct | floor turns/s | floor / direct | CPU (cores): gateway / floor | CPU µs per turn: gateway / floor / Redis | gateway / floor CPU | clients+emulator CPU µs per turn: gateway / floor / direct windows | errors |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
		fmt.Fprintf(w, "| %.0f | %.0f | **%.2f** %s | %.0f | **%s** %s | %.2f / %.2f | %.0f / %.0f / %.0f | %s | %.0f / %.0f / %.0f | %d |\n",
			t.DirectTurnsPS, t.GatewayTurnsPS, t.Ratio, spread(t.GatewayRoundRatios), t.FloorTurnsPS, ratioCell(t.FloorRatio),
			spread(t.FloorRoundRatios), t.GatewayCPUUtil, t.FloorCPUUtil,
			t.CPUPerTurnUs, t.FloorCPUUs, t.RedisCPUUs, ratioCell(t.CPUOverFloor), t.LoadCPUGatewayUs, t.LoadCPUFloorUs, t.LoadCPUDirectUs, t.Errors)
	}
	if s := r.Stream; s != nil {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "Streaming relay (one session, one turn of %d events, median of %d per side):\n\n", s.EventsPerTurn, s.Reps)
		fmt.Fprintln(w, "| direct events/s | gateway events/s | ratio | gateway CPU µs / 1,000 events |")
		fmt.Fprintln(w, "|---|---|---|---|")
		fmt.Fprintf(w, "| %.0f | %.0f | %.2f | %.0f |\n", s.DirectEPS, s.GatewayEPS, s.Ratio, s.GatewayCPUPerK)
		if s.Error != "" {
			fmt.Fprintf(w, "\nerror: %s\n", s.Error)
		}
	}
	if i := r.Idle; i != nil {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "Idle sessions (%d opened of %d, each a client connection plus its upstream connection after one warm-up create; after a forced GC):\n\n", i.Opened, i.Sessions)
		fmt.Fprintln(w, "| RSS before → after, MiB | RSS per session, KiB | heap+stacks per session, KiB | goroutines per session | open time, s |")
		fmt.Fprintln(w, "|---|---|---|---|---|")
		fmt.Fprintf(w, "| %.0f → %.0f | %.1f | %.1f | %.1f | %.1f |\n", float64(i.RSSBefore)/(1<<20), float64(i.RSSAfter)/(1<<20),
			i.RSSPerSession/1024, i.HeapPerSession/1024, i.GoroutinesPerSn, i.OpenSec)
		if i.Error != "" {
			fmt.Fprintf(w, "\nerror: %s\n", i.Error)
		}
	}
	if len(r.Moved) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "Sessions that move (%d sessions over two instances on one Redis, reconnecting to the other instance every %d turns, %.0f ms later):\n\n", r.Moved[0].Sessions, cycleLen, moveGap.Seconds()*1000)
		fmt.Fprintln(w, "| first turn on the new instance | turns | moves | read RT per move | write RT per turn | gateway CPU µs/turn | errors |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
		for _, m := range r.Moved {
			fmt.Fprintf(w, "| %s | %d | %d | %.2f | %.2f | %.0f | %d |\n", m.Kind, m.Turns, m.Moves, m.ReadRTPerMove, m.WriteRTPerTurn, m.CPUPerTurnUs, m.Errors)
			if m.FirstErr != "" {
				fmt.Fprintf(w, "\nerror: %s\n", m.FirstErr)
			}
		}
	}
	writeLanes(w, r.Lanes)
	for _, p := range r.Phases {
		if p.FirstErr != "" {
			fmt.Fprintf(w, "\n%s: %d errors, first: %s\n", p.Name, p.Errors, p.FirstErr)
		}
	}
	if len(r.Profiles) > 0 {
		fmt.Fprintf(w, "\nProfiles: %s\n", strings.Join(r.Profiles, ", "))
	}
	if len(r.RulesFired) > 0 {
		keys := make([]string, 0, len(r.RulesFired))
		for k := range r.RulesFired {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, r.RulesFired[k]))
		}
		fmt.Fprintf(w, "\nRules fired over the run (all gateways): %s\n", strings.Join(parts, ", "))
	}
	if len(r.StoreCommits) > 0 {
		fmt.Fprintf(w, "\nStore commits (all gateways): redis %.0f, local_only %.0f, degraded %.0f\n",
			r.StoreCommits["redis"], r.StoreCommits["local_only"], r.StoreCommits["degraded"])
	}
	fmt.Fprintf(w, "\nEmulator: %d connections, %d creates, %d responses, %d errors.\n", r.Emulator.Connections, r.Emulator.Creates, r.Emulator.Responses, r.Emulator.Errors)
}

// spread prints the range of per-round ratios, "[min–max]", or nothing without two rounds.
func spread(rs []float64) string {
	if len(rs) < 2 {
		return ""
	}
	return fmt.Sprintf("[%.2f–%.2f]", slices.Min(rs), slices.Max(rs))
}

// ratioCell prints a ratio, "–" when it is undefined (ratio returned 0).
func ratioCell(v float64) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", v)
}

// writeLanes prints the lanes phases: each arm's figures, and on the baselines the lanes
// arm's over them.
func writeLanes(w io.Writer, ls []LanesResult) {
	if len(ls) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Lanes (%d lanes per session on one WebSocket; each arm %d windows of %.0f ms, arms alternating; %s turns; "+
		"added = gateway − direct percentile at the terminal event, µs; lanes / baseline target ≤ 1.10):\n\n",
		ls[0].Lanes, ls[0].Rounds, ls[0].WindowSec*1000, ls[0].Class)
	fmt.Fprintln(w, "| phase | arm | sockets × lanes | pairs | direct p50 | added p50 / p90 / p99 | CPU µs/turn | lanes / arm: added p50 / p90 / p99, CPU | Redis write / read RT per turn | errors |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, l := range ls {
		for _, a := range l.Arms {
			vs, rt := "–", "–"
			if a.Vs != nil {
				vs = fmt.Sprintf("%s / %s / %s, %s", ratioCell(a.Vs.AddedP50), ratioCell(a.Vs.AddedP90), ratioCell(a.Vs.AddedP99), ratioCell(a.Vs.CPU))
			}
			if l.Store == "redis" {
				rt = fmt.Sprintf("%.2f / %.3f", a.RedisWriteRTPerTurn, a.RedisReadRTPerTurn)
			}
			fmt.Fprintf(w, "| %s | %s | %d × %d | %d | %s | %s / %s / %s | %.0f | %s | %s | %d |\n", l.Name, a.Arm, a.Sockets, a.LanesPerSocket,
				a.Pairs, f0(a.DirectP50Us), f0(a.Added.P50), f0(a.Added.P90), f0(a.Added.P99), a.CPUPerTurnUs, vs, rt, a.Errors)
		}
	}
	for _, l := range ls {
		if l.FirstErr != "" {
			fmt.Fprintf(w, "\n%s: %d errors, first: %s\n", l.Name, l.Errors, l.FirstErr)
		}
	}
}
