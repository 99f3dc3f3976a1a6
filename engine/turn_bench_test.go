package engine_test

import (
	"testing"

	"chainmend/engine"
	"chainmend/responses"
)

// responseItems are the output items of the small chained turn's response: reasoning, text
// and one function call.
var responseItems = []responses.Item{
	{Type: "reasoning", ID: "rs_1"},
	{Type: "message", ID: "msg_1", Role: "assistant"},
	{Type: "function_call", ID: "fc_1", CallID: "call_9"},
}

// defaultSnapshot loads the default policy set.
func defaultSnapshot(b *testing.B) *engine.Snapshot {
	b.Helper()
	snap, diags, err := engine.LoadDir("../policies")
	if err != nil || snap == nil {
		b.Fatalf("load policies: %v %v", err, diags)
	}
	return snap
}

// BenchmarkTurnStages is the engine's whole share of a small chained turn: parse, pre_send,
// encode, then post_response on the same turn (BenchmarkStageEvaluate has the stages alone).
func BenchmarkTurnStages(b *testing.B) {
	snap := defaultSnapshot(b)
	raw := incrementalTurn()
	mk := benchTurn(raw)
	b.ReportAllocs()
	for b.Loop() {
		req, err := responses.Parse(raw)
		if err != nil {
			b.Fatal(err)
		}
		t := mk(req)
		if out := snap.Evaluate(engine.StagePreSend, t); out.Verdict != engine.VerdictSend {
			b.Fatalf("verdict %s: %v", out.Verdict, out.Fired)
		}
		_ = req.Bytes()
		t.Response = &engine.Response{ID: "resp_next", Status: "completed", Event: "response.completed", Items: responseItems}
		snap.Evaluate(engine.StagePostResponse, t)
	}
}
