package engine_test

import (
	"testing"

	"chainmend/engine"
	"chainmend/responses"
)

// BenchmarkPostResponse bookkeeps one chained Codex response with the default set: a
// response with reasoning, text and one function call, chained to the turn's anchor. It is
// the stage every turn pays after its terminal event.
func BenchmarkPostResponse(b *testing.B) {
	snap, diags, err := engine.LoadDir("../policies")
	if err != nil || snap == nil {
		b.Fatalf("load policies: %v %v", err, diags)
	}
	raw := incrementalTurn()
	mk := benchTurn(raw)
	req, err := responses.Parse(raw)
	if err != nil {
		b.Fatal(err)
	}
	items := []responses.Item{
		{Type: "reasoning", ID: "rs_1"},
		{Type: "message", ID: "msg_1", Role: "assistant"},
		{Type: "function_call", ID: "fc_1", CallID: "call_9"},
	}
	b.ReportAllocs()
	for b.Loop() {
		t := mk(req)
		t.Response = &engine.Response{ID: "resp_next", Status: "completed", Event: "response.completed", Items: items}
		out := snap.Evaluate(engine.StagePostResponse, t)
		if out.Err != nil || len(out.Fired) == 0 {
			b.Fatalf("post_response: %v %v", out.Err, out.Fired)
		}
	}
}

// BenchmarkTurnStages is the engine's whole share of a small chained turn: parse, pre_send,
// encode, then post_response on the same turn.
func BenchmarkTurnStages(b *testing.B) {
	snap, diags, err := engine.LoadDir("../policies")
	if err != nil || snap == nil {
		b.Fatalf("load policies: %v %v", err, diags)
	}
	raw := incrementalTurn()
	mk := benchTurn(raw)
	items := []responses.Item{
		{Type: "reasoning", ID: "rs_1"},
		{Type: "message", ID: "msg_1", Role: "assistant"},
		{Type: "function_call", ID: "fc_1", CallID: "call_9"},
	}
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
		t.Response = &engine.Response{ID: "resp_next", Status: "completed", Event: "response.completed", Items: items}
		snap.Evaluate(engine.StagePostResponse, t)
	}
}
