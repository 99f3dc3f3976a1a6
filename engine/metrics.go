package engine

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Observer receives what evaluation does, for metrics. Implementations must be safe for
// concurrent use. Label values come from rule ids and fixed words only, never from requests.
type Observer interface {
	// RuleFired is called once per fired rule.
	RuleFired(f Fired, mode string)
	// RuleError is called when a rule's expression fails at run time.
	RuleError(policy, rule, stage string)
	// StageEvaluated is called once per stage evaluation.
	StageEvaluated(stage string, verdict Verdict, d time.Duration)
}

// Metrics is the Prometheus Observer.
type Metrics struct {
	// firedBy caches each (rule, mode) series: a turn fires some ten rules, and resolving a
	// six-label series hashes and checks every label value every time.
	firedBy  sync.Map // firedKey → prometheus.Counter
	stageBy  sync.Map // stageKey → stageSeries
	fired    *prometheus.CounterVec
	errors   *prometheus.CounterVec
	duration *prometheus.HistogramVec
	verdicts *prometheus.CounterVec
}

// NewMetrics registers the engine's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		fired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chainmend", Name: "rule_fired_total",
			Help: "Rules that fired, by policy, rule, reason, stage, mode and shadow.",
		}, []string{"policy", "rule", "reason", "stage", "mode", "shadow"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chainmend", Name: "rule_errors_total",
			Help: "Rule expressions that failed at run time.",
		}, []string{"policy", "rule", "stage"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "chainmend", Name: "policy_evaluation_seconds",
			Help:    "Time to evaluate a stage's rules for one turn.",
			Buckets: []float64{1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2},
		}, []string{"stage"}),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chainmend", Name: "policy_verdicts_total",
			Help: "Stage evaluations by verdict.",
		}, []string{"stage", "verdict"}),
	}
	if reg != nil {
		reg.MustRegister(m.fired, m.errors, m.duration, m.verdicts)
	}
	return m
}

type firedKey struct {
	f    Fired
	mode string
}

// RuleFired implements Observer.
func (m *Metrics) RuleFired(f Fired, mode string) {
	k := firedKey{f, mode}
	if c, ok := m.firedBy.Load(k); ok {
		c.(prometheus.Counter).Inc()
		return
	}
	shadow := "false"
	if f.Shadow {
		shadow = "true"
	}
	c := m.fired.WithLabelValues(f.Policy, f.Rule, f.Reason, f.Stage, mode, shadow)
	m.firedBy.Store(k, c)
	c.Inc()
}

// RuleError implements Observer.
func (m *Metrics) RuleError(policy, rule, stage string) {
	m.errors.WithLabelValues(policy, rule, stage).Inc()
}

type stageKey struct {
	stage   string
	verdict Verdict
}

type stageSeries struct {
	duration prometheus.Observer
	verdict  prometheus.Counter
}

// StageEvaluated implements Observer.
func (m *Metrics) StageEvaluated(stage string, v Verdict, d time.Duration) {
	k := stageKey{stage, v}
	ss, ok := m.stageBy.Load(k)
	if !ok {
		ss = stageSeries{duration: m.duration.WithLabelValues(stage), verdict: m.verdicts.WithLabelValues(stage, string(v))}
		m.stageBy.Store(k, ss)
	}
	s := ss.(stageSeries)
	s.duration.Observe(d.Seconds())
	s.verdict.Inc()
}
