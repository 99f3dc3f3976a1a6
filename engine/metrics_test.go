package engine_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
)

// TestMetrics: every fired rule counts under its labels (shadow ones too), runtime errors are
// counted per rule, and every stage evaluation is timed.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := engine.NewMetrics(reg)
	snap := compileRules(t, `
  - id: drop-prev
    stage: pre_send
    reason: prev_dropped
    when: request.previous_response_id != ""
    actions:
      - drop_previous_response_id
  - id: watch
    stage: pre_send
    shadow: true
    when: "true"
  - id: broken
    stage: pre_send
    when: request.calls[3] == ""
  - id: enter-sub
    stage: pre_send
    when: "true"
    actions:
      - run_stage: sub
  - id: in-sub
    stage: sub
    when: "true"
  - id: forward-all
    stage: on_upstream_error
    when: "true"
    actions:
      - forward
`, engine.WithObserver(m))

	strict := newTurn(t, create("resp_1", msg("user", "hi")))
	strict.Mode = engine.ModeStrict
	snap.Evaluate(engine.StagePreSend, strict)
	snap.Evaluate(engine.StagePreSend, newTurn(t, create("resp_1", msg("user", "hi"))))
	snap.Evaluate(engine.StagePreSend, newTurn(t, create("", msg("user", "hi"))))
	snap.Evaluate(engine.StageOnUpstreamError, newTurn(t, create("", msg("user", "hi"))))

	expected := `
# HELP chainmend_rule_fired_total Rules that fired, by policy, rule, reason, stage, mode and shadow.
# TYPE chainmend_rule_fired_total counter
chainmend_rule_fired_total{mode="repair",policy="test",reason="enter_sub",rule="enter-sub",shadow="false",stage="pre_send"} 2
chainmend_rule_fired_total{mode="repair",policy="test",reason="forward_all",rule="forward-all",shadow="false",stage="on_upstream_error"} 1
chainmend_rule_fired_total{mode="repair",policy="test",reason="in_sub",rule="in-sub",shadow="false",stage="sub"} 2
chainmend_rule_fired_total{mode="repair",policy="test",reason="prev_dropped",rule="drop-prev",shadow="false",stage="pre_send"} 1
chainmend_rule_fired_total{mode="repair",policy="test",reason="watch",rule="watch",shadow="true",stage="pre_send"} 2
chainmend_rule_fired_total{mode="strict",policy="test",reason="enter_sub",rule="enter-sub",shadow="false",stage="pre_send"} 1
chainmend_rule_fired_total{mode="strict",policy="test",reason="in_sub",rule="in-sub",shadow="false",stage="sub"} 1
chainmend_rule_fired_total{mode="strict",policy="test",reason="prev_dropped",rule="drop-prev",shadow="false",stage="pre_send"} 1
chainmend_rule_fired_total{mode="strict",policy="test",reason="watch",rule="watch",shadow="true",stage="pre_send"} 1
# HELP chainmend_rule_errors_total Rule expressions that failed at run time.
# TYPE chainmend_rule_errors_total counter
chainmend_rule_errors_total{policy="test",rule="broken",stage="pre_send"} 3
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(expected),
		"chainmend_rule_fired_total", "chainmend_rule_errors_total"))

	// One counter series, read directly.
	assert.Equal(t, 1.0, counterValue(t, reg, "chainmend_rule_fired_total",
		map[string]string{"policy": "test", "rule": "drop-prev", "reason": "prev_dropped", "stage": "pre_send", "mode": "strict", "shadow": "false"}))

	// The evaluation time is observed once per stage evaluation, by stage (sub-stages are
	// part of their entry stage's time).
	assert.Equal(t, uint64(3), histogramCount(t, reg, "chainmend_policy_evaluation_seconds", "pre_send"))
	assert.Equal(t, uint64(1), histogramCount(t, reg, "chainmend_policy_evaluation_seconds", "on_upstream_error"))
	assert.Equal(t, uint64(0), histogramCount(t, reg, "chainmend_policy_evaluation_seconds", "sub"))
	n, err := testutil.GatherAndCount(reg, "chainmend_policy_evaluation_seconds")
	require.NoError(t, err)
	assert.Equal(t, 2, n, "one histogram per entry stage")
}

// TestMetricsLabelsComeFromRules: label values never carry request data.
func TestMetricsLabelsComeFromRules(t *testing.T) {
	reg := prometheus.NewRegistry()
	snap := compileRules(t, `
  - id: any
    stage: pre_send
    when: request.model != ""
`, engine.WithObserver(engine.NewMetrics(reg)))
	turn := newTurn(t, strings.Replace(create("resp_secret", msg("user", "token sk-123")), "gpt-5.5", "model-from-client", 1))
	snap.Evaluate(engine.StagePreSend, turn)
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				for _, bad := range []string{"resp_secret", "sk-123", "model-from-client"} {
					assert.NotContains(t, l.GetValue(), bad, "%s{%s}", f.GetName(), l.GetName())
				}
			}
		}
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	for _, m := range metricFamily(t, reg, name) {
		if labelsMatch(m, labels) {
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name, stage string) uint64 {
	t.Helper()
	for _, m := range metricFamily(t, reg, name) {
		if labelsMatch(m, map[string]string{"stage": stage}) {
			return m.GetHistogram().GetSampleCount()
		}
	}
	return 0
}

func metricFamily(t *testing.T, reg *prometheus.Registry, name string) []*dto.Metric {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()
		}
	}
	return nil
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}
