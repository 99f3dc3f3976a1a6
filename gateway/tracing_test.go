package gateway_test

// Tracing (issue 16 item 3): a span per turn with its facts, an event per fired rule, child
// spans for the upstream attempts and the store commit, the client's W3C trace context
// continued and handed to the upstream. The spans are read with the SDK's in-memory exporter,
// and once through the real OTLP/HTTP exporter into a collector in this process.
//
//	go test -race -run Trac ./gateway/
//	go test -run '^$' -bench Tracing -benchmem ./gateway/

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"chainmend/emulator"
	"chainmend/engine"
	"chainmend/gateway"
	"chainmend/internal/e2etest"
	"chainmend/internal/settings"
	"chainmend/responses"
)

// The client's trace context: a sampled trace, and the same trace not sampled.
const (
	clientTraceID   = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpanID    = "00f067aa0ba902b7"
	clientParent    = "00-" + clientTraceID + "-" + clientSpanID + "-01"
	clientUnsampled = "00-" + clientTraceID + "-" + clientSpanID + "-00"
	clientState     = "vendor=opaque"
)

// traced is a stack whose gateway has the tracing hook, recording into spans.
type traced struct {
	*stack
	spans *tracetest.InMemoryExporter
}

// newTraced starts a stack with tracing through the SDK (parent-based, always sampling a
// root) into an in-memory exporter.
func newTraced(t *testing.T, script emulator.Script) *traced {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tr, err := gateway.NewTracing(context.Background(), gateway.WithTracerProvider(tp))
	require.NoError(t, err)
	return &traced{stack: newStack(t, script, withServerOptions(gateway.WithTurnHook(tr))), spans: exp}
}

// turns waits until n turn spans have ended (the span ends after the client's last byte)
// and returns every span.
func (s *traced) turns(n int) tracetest.SpanStubs {
	s.t.Helper()
	eventually(s.t, fmt.Sprintf("%d turn spans", n), func() bool { return len(named(s.spans.GetSpans(), "chainmend.turn")) >= n })
	return s.spans.GetSpans()
}

// named returns the spans of a name, in the order they ended.
func named(spans tracetest.SpanStubs, name string) tracetest.SpanStubs {
	var out tracetest.SpanStubs
	for _, sp := range spans {
		if sp.Name == name {
			out = append(out, sp)
		}
	}
	return out
}

// childrenOf returns the spans of a name whose parent is span.
func childrenOf(spans tracetest.SpanStubs, span tracetest.SpanStub, name string) tracetest.SpanStubs {
	var out tracetest.SpanStubs
	for _, sp := range named(spans, name) {
		if sp.Parent.SpanID() == span.SpanContext.SpanID() {
			out = append(out, sp)
		}
	}
	return out
}

// attrs renders attributes as strings by key.
func attrs(kvs []attribute.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.Emit()
	}
	return m
}

// ruleEvents counts a turn span's rule events by stage and reason ("stage/reason").
func ruleEvents(t *testing.T, span tracetest.SpanStub) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, ev := range span.Events {
		if ev.Name != "chainmend.rule" {
			continue
		}
		a := attrs(ev.Attributes)
		for _, k := range []string{"chainmend.stage", "chainmend.policy", "chainmend.rule", "chainmend.reason"} {
			assert.NotEmpty(t, a[k], "rule event without %s: %v", k, a)
		}
		out[a["chainmend.stage"]+"/"+a["chainmend.reason"]]++
	}
	return out
}

// firedByStage is chainmend_rule_fired_total by "stage/reason": what the rule events must
// say, one event per count.
func (s *traced) firedByStage() map[string]float64 {
	s.t.Helper()
	out := map[string]float64{}
	for _, stage := range []string{engine.StagePreSend, engine.StageOnUpstreamError, engine.StagePostResponse} {
		for r, v := range sumBy(s.t, s.reg, "chainmend_rule_fired_total", "reason", "stage", stage) {
			out[stage+"/"+r] += v
		}
	}
	return out
}

// noSecrets checks that the credential is in no span name, attribute, event or status.
func noSecrets(t *testing.T, spans tracetest.SpanStubs) {
	t.Helper()
	for _, sp := range spans {
		text := fmt.Sprint(sp.Name, attrs(sp.Attributes), sp.Status.Description)
		for _, ev := range sp.Events {
			text += fmt.Sprint(ev.Name, attrs(ev.Attributes))
		}
		assert.NotContains(t, text, "sk-test-secret", "a span carries the client's credential")
	}
}

// TestTracingTurnSpan: one turn over each transport, with and without the client's trace
// context: the turn span's facts, its parent, one rule event per fired rule, the upstream
// and commit children, and the trace context the upstream saw.
func TestTracingTurnSpan(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		transport   string
		traceparent string
		// upstream says what the upstream request's traceparent continues: the attempt
		// span (HTTP) or the client (WebSocket: the handshake's headers).
		upstream string
	}{
		{name: "http with the client's trace", transport: "http", traceparent: clientParent, upstream: "attempt"},
		{name: "http, a new trace", transport: "http", upstream: "attempt"},
		{name: "websocket with the client's trace", transport: "websocket", traceparent: clientParent, upstream: "client"},
		{name: "websocket, a new trace", transport: "websocket", upstream: "none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newTraced(t, e2etest.CmdScript())
			session := "sess-trace-" + tc.transport
			h := http.Header{"Authorization": {"Bearer " + testSecret}, "Session-Id": {session}}
			if tc.traceparent != "" {
				h.Set("Traceparent", tc.traceparent)
				h.Set("Tracestate", clientState)
			}
			if tc.transport == "http" {
				resp, body := s.postHeader([]byte(create(nil, user("hello"))), h)
				require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
			} else {
				s.dialHeader(h).ok(create(nil, user("hello")))
			}
			spans := s.turns(1)
			noSecrets(t, spans)
			turns := named(spans, "chainmend.turn")
			require.Len(t, turns, 1)
			turn := turns[0]

			assert.Equal(t, trace.SpanKindServer, turn.SpanKind)
			if tc.traceparent != "" {
				assert.Equal(t, clientTraceID, turn.SpanContext.TraceID().String(), "the client's trace")
				assert.Equal(t, clientSpanID, turn.Parent.SpanID().String(), "the client's span is the parent")
				assert.True(t, turn.Parent.IsRemote())
				assert.Equal(t, clientState, turn.SpanContext.TraceState().String())
			} else {
				assert.False(t, turn.Parent.IsValid(), "a root span")
			}
			a := attrs(turn.Attributes)
			assert.Equal(t, tc.transport, a["chainmend.transport"])
			assert.Equal(t, session, a["chainmend.session"])
			assert.Len(t, a["chainmend.tenant"], 8, "the tenant hash's prefix, as the logs show it")
			assert.NotEmpty(t, a["chainmend.conn"])
			assert.NotEmpty(t, a["chainmend.policy_set"])
			assert.Equal(t, "local", a["chainmend.store"])
			assert.Equal(t, "1", a["chainmend.turn.number"])
			assert.Equal(t, "false", a["chainmend.server_started"])
			assert.Equal(t, "send", a["chainmend.verdict.pre_send"])
			assert.Equal(t, "send", a["chainmend.verdict.post_response"])
			assert.Equal(t, "completed", a["chainmend.outcome"])
			assert.Equal(t, "1", a["chainmend.attempts"])
			assert.NotContains(t, a, "chainmend.recovery")
			assert.Equal(t, codes.Unset, turn.Status.Code)
			// The turn is counted after its span ended.
			s.counterReaches("chainmend_turns_total", map[string]string{"outcome": "completed"}, 1)
			events := ruleEvents(t, turn)
			assert.NotEmpty(t, events)
			assert.Equal(t, s.firedByStage(), events, "one rule event per fired rule")

			ups := childrenOf(spans, turn, "chainmend.upstream")
			require.Len(t, ups, 1)
			assert.Equal(t, trace.SpanKindClient, ups[0].SpanKind)
			assert.Equal(t, "1", attrs(ups[0].Attributes)["chainmend.attempt"])
			assert.Equal(t, codes.Unset, ups[0].Status.Code)
			commits := childrenOf(spans, turn, "chainmend.commit")
			require.Len(t, commits, 1)
			assert.Equal(t, "local", attrs(commits[0].Attributes)["chainmend.store"])
			assert.Len(t, spans, 3, "the turn, its attempt and its commit")

			conns := s.emu.Conns()
			require.Len(t, conns, 1)
			got := conns[0].Header().Get("Traceparent")
			switch tc.upstream {
			case "attempt":
				assert.Equal(t, "00-"+turn.SpanContext.TraceID().String()+"-"+ups[0].SpanContext.SpanID().String()+"-01", got,
					"the upstream request continues the attempt's span")
			case "client":
				assert.Equal(t, clientParent, got, "the handshake carried the client's headers")
			case "none":
				assert.Empty(t, got)
			}
			if tc.traceparent != "" {
				assert.Equal(t, clientState, conns[0].Header().Get("Tracestate"))
			}
		})
	}
}

// TestTracingRecovery: a retried turn has two attempt spans, the first failed; the turn
// span names the recovery and the on_upstream_error verdict. A forwarded error ends the
// turn span in an error status.
func TestTracingRecovery(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		fail     *emulator.APIError
		outcome  string
		verdict  string
		recovery string
		attempts int
		status   codes.Code
	}{
		{name: "retried", fail: emulator.ErrConnectionLimit(), outcome: "completed", verdict: "retry",
			recovery: "transport_retry", attempts: 2, status: codes.Unset},
		{name: "forwarded", fail: emulator.ErrServer(), outcome: "error_forwarded", verdict: "forward",
			attempts: 1, status: codes.Error},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newTraced(t, e2etest.CmdScript())
			c := s.dial("sess-trace-recovery")
			e1 := c.ok(create(nil, user("one")))
			s.emu.FailCreate(2, tc.fail)
			c.turn(chained(e1.Response.ID, user("two")))
			spans := s.turns(2)
			noSecrets(t, spans)
			turn := named(spans, "chainmend.turn")[1]
			a := attrs(turn.Attributes)
			assert.Equal(t, "2", a["chainmend.turn.number"])
			assert.Equal(t, tc.outcome, a["chainmend.outcome"])
			assert.Equal(t, tc.verdict, a["chainmend.verdict.on_upstream_error"])
			assert.Equal(t, fmt.Sprint(tc.attempts), a["chainmend.attempts"])
			if tc.recovery != "" {
				assert.Equal(t, tc.recovery, a["chainmend.recovery"])
				assert.Positive(t, ruleEvents(t, turn)[engine.StageOnUpstreamError+"/"+tc.recovery])
			} else {
				assert.NotContains(t, a, "chainmend.recovery")
			}
			assert.Equal(t, tc.status, turn.Status.Code)

			ups := childrenOf(spans, turn, "chainmend.upstream")
			require.Len(t, ups, tc.attempts)
			assert.Equal(t, codes.Error, ups[0].Status.Code, "the refused attempt")
			assert.Contains(t, ups[0].Status.Description, tc.fail.Code)
			for i, up := range ups {
				assert.Equal(t, fmt.Sprint(i+1), attrs(up.Attributes)["chainmend.attempt"])
			}
			if tc.attempts > 1 {
				assert.Equal(t, codes.Unset, ups[1].Status.Code)
			}
		})
	}
}

// TestTracingUnsampled: a client that does not sample its trace gets no spans recorded, and
// the upstream still learns the decision with the trace's id.
func TestTracingUnsampled(t *testing.T) {
	t.Parallel()
	s := newTraced(t, e2etest.CmdScript())
	h := http.Header{"Authorization": {"Bearer " + testSecret}, "Traceparent": {clientUnsampled}}
	resp, body := s.postHeader([]byte(create(nil, user("hello"))), h)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	s.counterReaches("chainmend_turns_total", map[string]string{"outcome": "completed"}, 1)
	assert.Empty(t, s.spans.GetSpans())
	got := s.emu.Conns()[0].Header().Get("Traceparent")
	assert.True(t, strings.HasPrefix(got, "00-"+clientTraceID+"-"), "%s", got)
	assert.True(t, strings.HasSuffix(got, "-00"), "not sampled: %s", got)
	assert.NotEqual(t, clientUnsampled, got, "the attempt's own span id")
}

// otlpCollector is an OTLP/HTTP trace receiver: it decodes protobuf exports and keeps their
// spans.
type otlpCollector struct {
	mu    sync.Mutex
	paths []string
	reqs  []*coltracepb.ExportTraceServiceRequest
}

func (c *otlpCollector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	data, err := io.ReadAll(body)
	req := &coltracepb.ExportTraceServiceRequest{}
	if err == nil && r.Header.Get("Content-Type") == "application/x-protobuf" {
		err = proto.Unmarshal(data, req)
	} else if err == nil {
		err = fmt.Errorf("content type %q", r.Header.Get("Content-Type"))
	}
	if r.Method != http.MethodPost || err != nil {
		http.Error(w, fmt.Sprint(r.Method, err), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.paths = append(c.paths, r.URL.Path)
	c.reqs = append(c.reqs, req)
	c.mu.Unlock()
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// spans returns the names of the spans received, with the resource's service name.
func (c *otlpCollector) spans() (names []string, traces map[string]bool, service string, paths []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	traces = map[string]bool{}
	for _, req := range c.reqs {
		for _, rs := range req.GetResourceSpans() {
			for _, kv := range rs.GetResource().GetAttributes() {
				if kv.GetKey() == "service.name" {
					service = kv.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, sp := range ss.GetSpans() {
					names = append(names, sp.GetName())
					traces[fmt.Sprintf("%x", sp.GetTraceId())] = true
				}
			}
		}
	}
	return names, traces, service, append([]string(nil), c.paths...)
}

// TestTracingOTLPExport drives real turns through a gateway whose tracing exports over
// OTLP/HTTP, the way cmd/gateway builds it, to a collector in this process.
func TestTracingOTLPExport(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// endpoint is appended to the collector's URL.
		endpoint string
		path     string
	}{
		{name: "collector base URL", endpoint: "", path: "/v1/traces"},
		{name: "full traces URL", endpoint: "/otlp/v1/traces", path: "/otlp/v1/traces"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			col := &otlpCollector{}
			hs := httptest.NewServer(col)
			t.Cleanup(hs.Close)
			tr, err := gateway.NewTracing(context.Background(), gateway.WithOTLPEndpoint(hs.URL+tc.endpoint))
			require.NoError(t, err)
			s := newStack(t, e2etest.CmdScript(), withServerOptions(gateway.WithTurnHook(tr)))
			h := http.Header{"Authorization": {"Bearer " + testSecret}, "Traceparent": {clientParent}}
			resp, body := s.postHeader([]byte(create(nil, user("hello"))), h)
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
			s.dial("sess-otlp").ok(create(nil, user("hello")))
			// Both turns are counted after their spans ended; Shutdown exports the queue.
			s.counterReaches("chainmend_turns_total", map[string]string{"outcome": "completed"}, 2)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			require.NoError(t, tr.Shutdown(ctx))

			names, traces, service, paths := col.spans()
			assert.ElementsMatch(t, []string{
				"chainmend.turn", "chainmend.upstream", "chainmend.commit",
				"chainmend.turn", "chainmend.upstream", "chainmend.commit",
			}, names)
			assert.Len(t, traces, 2, "the client's trace, and the WebSocket turn's own")
			assert.True(t, traces[clientTraceID])
			assert.Equal(t, "chainmend", service)
			require.NotEmpty(t, paths)
			for _, p := range paths {
				assert.Equal(t, tc.path, p)
			}
		})
	}
}

// TestTracingEndpoint: a collector URL the exporter cannot use is refused when tracing is
// built, not when the first span is exported.
func TestTracingEndpoint(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		endpoint string
		ok       bool
	}{
		{"http://collector:4318", true},
		{"https://collector.example/custom/v1/traces", true},
		{"collector:4318", false},
		{"grpc://collector:4317", false},
		{"http://", false},
		{"http://collector:4318/%zz", false},
	} {
		t.Run(tc.endpoint, func(t *testing.T) {
			tr, err := gateway.NewTracing(context.Background(), gateway.WithOTLPEndpoint(tc.endpoint))
			if !tc.ok {
				require.Error(t, err)
				assert.Contains(t, err.Error(), "otlp endpoint")
				return
			}
			require.NoError(t, err)
			// Nothing was sent: no span was recorded.
			require.NoError(t, tr.Shutdown(context.Background()))
		})
	}
}

// ---- Benchmarks: what tracing costs a turn, and that off costs nothing.

// benchSetup is one tracing setup of the benchmarks.
type benchSetup struct {
	name string
	// hook is the tracing hook; nil for none.
	hook gateway.TurnHook
	// settings builds the gateway as cmd/gateway does (settings.NewGateway, tracing off).
	settings bool
}

// benchTracings are the tracing setups the benchmarks compare: "no_hook" is a gateway built
// without any hook, "off" the one cmd/gateway builds with tracing off (which must be the
// same thing: no hook, so that each of the driver's hook calls is a length check); the
// others have the hook, with a no-op provider, with the SDK not sampling, and with the SDK
// sampling every turn.
func benchTracings(b *testing.B) []benchSetup {
	b.Helper()
	hook := func(tp trace.TracerProvider) gateway.TurnHook {
		tr, err := gateway.NewTracing(context.Background(), gateway.WithTracerProvider(tp))
		if err != nil {
			b.Fatal(err)
		}
		return tr
	}
	sdk := func(s sdktrace.Sampler) trace.TracerProvider {
		// A batching provider into an exporter that drops the spans: the production shape
		// without a collector's cost.
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(s), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		return tp
	}
	return []benchSetup{
		{name: "no_hook"},
		{name: "off", settings: true},
		{name: "noop_provider", hook: hook(noop.NewTracerProvider())},
		{name: "unsampled", hook: hook(sdk(sdktrace.NeverSample()))},
		{name: "sampled", hook: hook(sdk(sdktrace.AlwaysSample()))},
	}
}

// benchGateway starts an emulator and the setup's gateway in front of it, and returns the
// gateway's WebSocket URL.
func benchGateway(b *testing.B, setup benchSetup) string {
	b.Helper()
	emu := emulator.New(emulator.WithRecording(false), emulator.WithScript(emulator.ScriptFunc(func(*emulator.Request) emulator.Turn {
		return emulator.TextTurn("ok")
	})))
	if err := emu.Listen("127.0.0.1:0"); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	var srv *gateway.Server
	var reloader *gateway.Reloader
	if setup.settings {
		// No OTEL_* variable reaches Parse: the benchmark is of tracing off.
		st, err := settings.Parse([]string{"--upstream", emu.URL() + "/v1", "--policies", "../policies"}, func(string) string { return "" }, io.Discard)
		if err != nil {
			b.Fatal(err)
		}
		if srv, reloader, err = st.NewGateway(log, prometheus.NewRegistry()); err != nil {
			b.Fatal(err)
		}
	} else {
		cfg := gateway.DefaultConfig()
		cfg.Upstream = emu.URL() + "/v1"
		cfg.Policies = "../policies"
		opts := []gateway.Option{gateway.WithLogger(log), gateway.WithRegistry(prometheus.NewRegistry())}
		if setup.hook != nil {
			opts = append(opts, gateway.WithTurnHook(setup.hook))
		}
		var err error
		if srv, err = gateway.New(cfg, opts...); err != nil {
			b.Fatal(err)
		}
		reloader = gateway.NewReloader(srv)
	}
	if _, err := reloader.Reload(); err != nil {
		b.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	b.Cleanup(func() {
		hs.Close()
		_ = srv.Close()
		emu.Close()
	})
	return "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/responses"
}

// benchTurn sends one create on c and reads to its terminal event.
func benchTurn(b *testing.B, c *websocket.Conn, frame []byte) {
	ctx := context.Background()
	if err := c.Write(ctx, websocket.MessageText, frame); err != nil {
		b.Fatal(err)
	}
	for {
		_, f, err := c.Read(ctx)
		if err != nil {
			b.Fatal(err)
		}
		kind := responses.EventKind(f)
		if kind == responses.EventError {
			b.Fatalf("error frame: %s", f)
		}
		if responses.IsTerminal(kind) {
			return
		}
	}
}

func benchDial(b *testing.B, url string) *websocket.Conn {
	b.Helper()
	h := http.Header{"Authorization": {"Bearer sk-bench"}, "Session-Id": {fmt.Sprintf("bench-%d", time.Now().UnixNano())}}
	c, _, err := websocket.Dial(context.Background(), url, &websocket.DialOptions{HTTPHeader: h, CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// BenchmarkTracingTurn is one WebSocket turn end to end (client, gateway, emulator in this
// process) per op, for each tracing setup; "interleaved" runs them turn by turn so that all
// see the same machine load, and reports each one's median turn and what it adds to no_hook.
func BenchmarkTracingTurn(b *testing.B) {
	frame := []byte(`{"type":"response.create","model":"m","store":false,"input":[{"type":"message","role":"user","content":"hi"}]}`)
	setups := benchTracings(b)
	urls := make([]string, len(setups))
	for i, st := range setups {
		urls[i] = benchGateway(b, st)
	}
	for i, st := range setups {
		b.Run(st.name, func(b *testing.B) {
			c := benchDial(b, urls[i])
			b.ReportAllocs()
			for b.Loop() {
				benchTurn(b, c, frame)
			}
		})
	}
	b.Run("interleaved", func(b *testing.B) {
		cs := make([]*websocket.Conn, len(setups))
		for i := range setups {
			cs[i] = benchDial(b, urls[i])
		}
		ts := make([][]time.Duration, len(setups))
		for round := 0; b.Loop(); round++ {
			// Each round starts with another setup, so that none always goes first.
			for k := range cs {
				i := (k + round) % len(cs)
				t0 := time.Now()
				benchTurn(b, cs[i], frame)
				ts[i] = append(ts[i], time.Since(t0))
			}
		}
		// Medians: on a shared machine a few turns that wait for the CPU would move a mean
		// by more than tracing costs.
		med := make([]float64, len(setups))
		for i, st := range setups {
			slices.Sort(ts[i])
			med[i] = float64(ts[i][len(ts[i])/2].Nanoseconds())
			b.ReportMetric(med[i], st.name+"-p50-ns/turn")
			if i > 0 {
				b.ReportMetric(med[i]-med[0], st.name+"-added-p50-ns/turn")
			}
		}
	})
}

// BenchmarkTracingHook is the hook alone, the calls the driver makes for one turn with two
// fired rules (begin, pre_send, an attempt, post_response, the commit, end), without the
// turn around them. Off has no hook: its cost is the driver's length checks.
func BenchmarkTracingHook(b *testing.B) {
	info := &gateway.TurnInfo{Transport: "websocket", Tenant: "0123456789abcdef", Session: "s", Lane: "", Conn: "c1",
		Number: 1, PolicySet: "abc", Store: "local", TraceParent: clientParent}
	pre := &engine.Outcome{Stage: engine.StagePreSend, Verdict: engine.VerdictSend,
		Fired: []engine.Fired{{Policy: "p", Rule: "r1", Reason: "prev_not_response_id", Stage: engine.StagePreSend}}}
	post := &engine.Outcome{Stage: engine.StagePostResponse, Verdict: engine.VerdictSend,
		Fired: []engine.Fired{{Policy: "p", Rule: "r2", Reason: "anchor_advanced", Stage: engine.StagePostResponse}}}
	for _, st := range benchTracings(b) {
		hook := st.hook
		if hook == nil {
			continue
		}
		b.Run(st.name, func(b *testing.B) {
			hdr := http.Header{}
			b.ReportAllocs()
			for b.Loop() {
				ctx := hook.Begin(context.Background(), info)
				hook.Stage(ctx, info, engine.StagePreSend, nil, pre)
				if done := hook.Upstream(ctx, info, hdr); done != nil {
					done(nil)
				}
				hook.Stage(ctx, info, engine.StagePostResponse, nil, post)
				if done := hook.Commit(ctx, info); done != nil {
					done(nil)
				}
				hook.End(ctx, info, "completed")
			}
		})
	}
}
