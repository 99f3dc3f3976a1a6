package loadgen

import (
	"math"
	"slices"
	"time"
)

// quantiles are the reported percentiles.
var quantiles = []float64{0.50, 0.90, 0.99, 0.999}

// pctl returns the q-quantile of sorted values (nearest rank).
func pctl(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0 // JSON has no NaN; empty classes are not reported
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// Dist is the four percentiles of a distribution, in microseconds.
type Dist struct {
	P50  float64 `json:"p50_us"`
	P90  float64 `json:"p90_us"`
	P99  float64 `json:"p99_us"`
	P999 float64 `json:"p999_us"`
}

func distOf(v []float64) Dist {
	s := slices.Clone(v)
	slices.Sort(s)
	return Dist{pctl(s, .5), pctl(s, .9), pctl(s, .99), pctl(s, .999)}
}

func (d Dist) minus(o Dist) Dist {
	return Dist{d.P50 - o.P50, d.P90 - o.P90, d.P99 - o.P99, d.P999 - o.P999}
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// pairSet collects matched turns: the same turn of the same conversation, once direct and
// once through the gateway (and once through the floor when the phase has it), run back to
// back by one worker.
type pairSet struct {
	directTTFE, gatewayTTFE, directTotal, gatewayTotal []float64
	diffTTFE, diffTotal                                []float64
	// The floor arm, empty when the phase has none: its times, floor − direct and
	// gateway − floor per turn.
	floorTTFE, floorTotal         []float64
	floorDiffTTFE, floorDiffTotal []float64
	overTTFE, overTotal           []float64
}

// add records one matched turn; f is nil when the phase has no floor arm.
func (p *pairSet) add(d, g sample, f *sample) {
	p.directTTFE = append(p.directTTFE, us(d.ttfe))
	p.gatewayTTFE = append(p.gatewayTTFE, us(g.ttfe))
	p.directTotal = append(p.directTotal, us(d.total))
	p.gatewayTotal = append(p.gatewayTotal, us(g.total))
	p.diffTTFE = append(p.diffTTFE, us(g.ttfe-d.ttfe))
	p.diffTotal = append(p.diffTotal, us(g.total-d.total))
	if f != nil {
		p.floorTTFE = append(p.floorTTFE, us(f.ttfe))
		p.floorTotal = append(p.floorTotal, us(f.total))
		p.floorDiffTTFE = append(p.floorDiffTTFE, us(f.ttfe-d.ttfe))
		p.floorDiffTotal = append(p.floorDiffTotal, us(f.total-d.total))
		p.overTTFE = append(p.overTTFE, us(g.ttfe-f.ttfe))
		p.overTotal = append(p.overTotal, us(g.total-f.total))
	}
}

func (p *pairSet) merge(o *pairSet) {
	p.directTTFE = append(p.directTTFE, o.directTTFE...)
	p.gatewayTTFE = append(p.gatewayTTFE, o.gatewayTTFE...)
	p.directTotal = append(p.directTotal, o.directTotal...)
	p.gatewayTotal = append(p.gatewayTotal, o.gatewayTotal...)
	p.diffTTFE = append(p.diffTTFE, o.diffTTFE...)
	p.diffTotal = append(p.diffTotal, o.diffTotal...)
	p.floorTTFE = append(p.floorTTFE, o.floorTTFE...)
	p.floorTotal = append(p.floorTotal, o.floorTotal...)
	p.floorDiffTTFE = append(p.floorDiffTTFE, o.floorDiffTTFE...)
	p.floorDiffTotal = append(p.floorDiffTotal, o.floorDiffTotal...)
	p.overTTFE = append(p.overTTFE, o.overTTFE...)
	p.overTotal = append(p.overTotal, o.overTotal...)
}

// ClassResult is one row of a latency table.
type ClassResult struct {
	Class string `json:"class"`
	Pairs int    `json:"pairs"`
	// Direct and Gateway are the distributions of each side; Added is Gateway minus Direct
	// percentile by percentile; Paired is the distribution of the per-turn differences.
	DirectTTFE   Dist `json:"direct_ttfe"`
	GatewayTTFE  Dist `json:"gateway_ttfe"`
	AddedTTFE    Dist `json:"added_ttfe"`
	PairedTTFE   Dist `json:"paired_ttfe"`
	DirectTotal  Dist `json:"direct_total"`
	GatewayTotal Dist `json:"gateway_total"`
	AddedTotal   Dist `json:"added_total"`
	PairedTotal  Dist `json:"paired_total"`
	// Floor is the floor arm of the same turns (absent when the phase has none: lanes).
	Floor *FloorResult `json:"floor,omitempty"`
}

// FloorResult is a class's floor arm, the same turns through the raw TCP copy proxy, and
// the gateway's figures read against it.
type FloorResult struct {
	TTFE  Dist `json:"floor_ttfe"`
	Total Dist `json:"floor_total"`
	// Added is the floor minus direct percentile by percentile, Paired the per-turn
	// differences: what a hop costs before anyone looks at a byte.
	AddedTTFE   Dist `json:"added_ttfe"`
	PairedTTFE  Dist `json:"paired_ttfe"`
	AddedTotal  Dist `json:"added_total"`
	PairedTotal Dist `json:"paired_total"`
	// GatewayOver is the gateway's added latency minus the floor's, percentile by
	// percentile (equal to gateway minus floor percentile): what the gateway costs beyond
	// the hop, the quantity of the "floor + N µs" targets. GatewayOverPaired is the
	// distribution of the per-turn gateway − floor differences.
	GatewayOverTTFE        Dist `json:"gateway_over_floor_ttfe"`
	GatewayOverTotal       Dist `json:"gateway_over_floor_total"`
	GatewayOverPairedTTFE  Dist `json:"gateway_over_floor_paired_ttfe"`
	GatewayOverPairedTotal Dist `json:"gateway_over_floor_paired_total"`
	// Ratio is the gateway's added latency over the floor's, percentile by percentile.
	RatioTTFE  Ratios `json:"gateway_added_over_floor_added_ttfe"`
	RatioTotal Ratios `json:"gateway_added_over_floor_added_total"`
}

// Ratios is one distribution's percentiles over another's; 0 where the divisor is not
// positive (JSON has no NaN; the tables print "–").
type Ratios struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
}

func ratios(a, b Dist) Ratios {
	return Ratios{ratio(a.P50, b.P50), ratio(a.P90, b.P90), ratio(a.P99, b.P99), ratio(a.P999, b.P999)}
}

func (p *pairSet) result(class string) ClassResult {
	r := ClassResult{Class: class, Pairs: len(p.diffTTFE)}
	r.DirectTTFE, r.GatewayTTFE = distOf(p.directTTFE), distOf(p.gatewayTTFE)
	r.DirectTotal, r.GatewayTotal = distOf(p.directTotal), distOf(p.gatewayTotal)
	r.AddedTTFE, r.AddedTotal = r.GatewayTTFE.minus(r.DirectTTFE), r.GatewayTotal.minus(r.DirectTotal)
	r.PairedTTFE, r.PairedTotal = distOf(p.diffTTFE), distOf(p.diffTotal)
	// Every recorded turn of a phase with a floor has its floor sample.
	if len(p.floorTotal) == len(p.diffTotal) && len(p.floorTotal) > 0 {
		f := &FloorResult{TTFE: distOf(p.floorTTFE), Total: distOf(p.floorTotal)}
		f.AddedTTFE, f.AddedTotal = f.TTFE.minus(r.DirectTTFE), f.Total.minus(r.DirectTotal)
		f.PairedTTFE, f.PairedTotal = distOf(p.floorDiffTTFE), distOf(p.floorDiffTotal)
		f.GatewayOverTTFE, f.GatewayOverTotal = r.GatewayTTFE.minus(f.TTFE), r.GatewayTotal.minus(f.Total)
		f.GatewayOverPairedTTFE, f.GatewayOverPairedTotal = distOf(p.overTTFE), distOf(p.overTotal)
		f.RatioTTFE, f.RatioTotal = ratios(r.AddedTTFE, f.AddedTTFE), ratios(r.AddedTotal, f.AddedTotal)
		r.Floor = f
	}
	return r
}
