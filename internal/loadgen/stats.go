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
// once through the gateway, run back to back by one worker.
type pairSet struct {
	directTTFE, gatewayTTFE, directTotal, gatewayTotal []float64
	diffTTFE, diffTotal                                []float64
}

func (p *pairSet) add(d, g sample) {
	p.directTTFE = append(p.directTTFE, us(d.ttfe))
	p.gatewayTTFE = append(p.gatewayTTFE, us(g.ttfe))
	p.directTotal = append(p.directTotal, us(d.total))
	p.gatewayTotal = append(p.gatewayTotal, us(g.total))
	p.diffTTFE = append(p.diffTTFE, us(g.ttfe-d.ttfe))
	p.diffTotal = append(p.diffTotal, us(g.total-d.total))
}

func (p *pairSet) merge(o *pairSet) {
	p.directTTFE = append(p.directTTFE, o.directTTFE...)
	p.gatewayTTFE = append(p.gatewayTTFE, o.gatewayTTFE...)
	p.directTotal = append(p.directTotal, o.directTotal...)
	p.gatewayTotal = append(p.gatewayTotal, o.gatewayTotal...)
	p.diffTTFE = append(p.diffTTFE, o.diffTTFE...)
	p.diffTotal = append(p.diffTotal, o.diffTotal...)
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
}

func (p *pairSet) result(class string) ClassResult {
	r := ClassResult{Class: class, Pairs: len(p.diffTTFE)}
	r.DirectTTFE, r.GatewayTTFE = distOf(p.directTTFE), distOf(p.gatewayTTFE)
	r.DirectTotal, r.GatewayTotal = distOf(p.directTotal), distOf(p.gatewayTotal)
	r.AddedTTFE, r.AddedTotal = r.GatewayTTFE.minus(r.DirectTTFE), r.GatewayTotal.minus(r.DirectTotal)
	r.PairedTTFE, r.PairedTotal = distOf(p.diffTTFE), distOf(p.diffTotal)
	return r
}
