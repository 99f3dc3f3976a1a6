package engine_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/engine"
)

// TestExplainParts: with WithExplain every evaluated when carries the values of its
// parts, as they were when the rule ran; without it, no step carries any.
func TestExplainParts(t *testing.T) {
	snap := compileRules(t, `
  - id: set-prev
    stage: pre_send
    when: "true"
    actions:
      - set_previous_response_id: '"resp_1"'
  - id: chain
    stage: pre_send
    when: >
      request.previous_response_id == "resp_1" && size(request.outputs) > 0 &&
      (turn.mode == "strict" || session.anchor != "")
  - id: short-circuit
    stage: pre_send
    when: request.previous_response_id == "" && size(request.calls) > 0
  - id: bound
    stage: pre_send
    when: cel.bind(outs, request.outputs, size(outs) == 1)
`)
	type part struct {
		expr, value string
		depth       int
	}
	tests := []struct {
		rule string
		want []part
	}{
		{"chain", []part{
			{`request.previous_response_id == "resp_1"`, "true", 0},
			{"request.previous_response_id", `"resp_1"`, 1},
			{"size(request.outputs) > 0", "true", 0},
			{"size(request.outputs)", "1", 1},
			{`turn.mode == "strict" || session.anchor != ""`, "false", 0},
			{`turn.mode == "strict"`, "false", 1},
			{"turn.mode", `"repair"`, 2},
			{`session.anchor != ""`, "false", 1},
			{"session.anchor", `""`, 2},
		}},
		{"short-circuit", []part{
			{`request.previous_response_id == ""`, "false", 0},
			{"request.previous_response_id", `"resp_1"`, 1},
			{"size(request.calls) > 0", "not evaluated", 0},
		}},
		{"bound", []part{
			{"outs := request.outputs", `["call_a"]`, 0},
			{"size(outs)", "1", 0},
		}},
	}
	turn := newTurn(t, create("", fco("call_a", "ok")))
	out := snap.Evaluate(engine.StagePreSend, turn, engine.WithExplain())
	steps := map[string]engine.Step{}
	for _, s := range out.Trace {
		steps[s.Rule] = s
	}
	for _, tc := range tests {
		t.Run(tc.rule, func(t *testing.T) {
			s, ok := steps[tc.rule]
			require.True(t, ok)
			var got []part
			for _, p := range s.Parts {
				got = append(got, part{p.Expr, p.Value, p.Depth})
			}
			assert.Equal(t, tc.want, got)
		})
	}

	plain := snap.Evaluate(engine.StagePreSend, newTurn(t, create("", fco("call_a", "ok"))), engine.WithDiffs())
	for _, s := range plain.Trace {
		assert.Empty(t, s.Parts, "%s: parts without WithExplain", s.Rule)
	}
	assert.Equal(t, out.Verdict, plain.Verdict)
	assert.Equal(t, out.Cost, plain.Cost, "explaining costs the turn nothing")
}

func TestSuggest(t *testing.T) {
	stages := []string{"pre_send", "on_upstream_error", "post_response", "pairing"}
	tests := []struct{ got, want string }{
		{"presend", "pre_send"},
		{"pre_sned", "pre_send"},
		{"pairng", "pairing"},
		{"post_respone", "post_response"},
		{"bogus", ""},
		{"pre_send", ""},
		{"x", ""},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, engine.Suggest(tc.got, stages), tc.got)
	}
}
