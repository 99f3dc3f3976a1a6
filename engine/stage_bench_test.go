package engine_test

import (
	"testing"

	"chainmend/engine"
	"chainmend/responses"
)

// BenchmarkStageEvaluate is Snapshot.Evaluate alone, without parsing or encoding, for each
// entry stage of the small chained turn of BenchmarkTurnStages: the engine's own cost. The
// request is parsed once; pre_send leaves this turn's request as it is, so every iteration
// sees the same one. on_upstream_error is a rejected continuation of the response the
// upstream connection holds, which classifies and clears upstream.cached.
func BenchmarkStageEvaluate(b *testing.B) {
	snap := defaultSnapshot(b)
	raw := incrementalTurn()
	mk := benchTurn(raw)
	req, err := responses.Parse(raw)
	if err != nil {
		b.Fatal(err)
	}
	if out := snap.Evaluate(engine.StagePreSend, mk(req)); out.Verdict != engine.VerdictSend || req.Modified() {
		b.Fatalf("pre_send changed the benchmark's request: %v", out.Fired)
	}
	items := responseItems
	b.Run("pre_send", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if out := snap.Evaluate(engine.StagePreSend, mk(req)); out.Verdict != engine.VerdictSend {
				b.Fatalf("verdict %s: %v", out.Verdict, out.Fired)
			}
		}
	})
	b.Run("post_response", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			t := mk(req)
			t.Response = &engine.Response{ID: "resp_next", Status: "completed", Event: "response.completed", Items: items}
			if out := snap.Evaluate(engine.StagePostResponse, t); len(out.Fired) == 0 {
				b.Fatalf("post_response: %v %v", out.Err, out.Fired)
			}
		}
	})
	b.Run("on_upstream_error", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			t := mk(req)
			t.Error = &engine.UpstreamError{Status: 400, Type: "invalid_request_error", Code: "previous_response_not_found",
				Message: "Previous response with id 'resp_0123456789abcdef' not found.", Param: "previous_response_id"}
			t.Recovery = engine.Recovery{Enabled: true}
			if out := snap.Evaluate(engine.StageOnUpstreamError, t); len(out.Fired) == 0 {
				b.Fatalf("on_upstream_error: %v %v", out.Err, out.Fired)
			}
		}
	})
}
