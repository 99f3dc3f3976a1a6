package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"chainmend/engine"
)

// Span and event names of a traced turn.
const (
	// spanTurn is the span of one turn, from its context to its outcome.
	spanTurn = "chainmend.turn"
	// spanUpstream is a child of the turn's span per attempt upstream (a retry is another).
	spanUpstream = "chainmend.upstream"
	// spanCommit is a child of the turn's span per store commit.
	spanCommit = "chainmend.commit"
	// eventRule is an event of the turn's span per rule that fired.
	eventRule = "chainmend.rule"
	// eventStageError is an event of the turn's span per stage whose evaluation stopped early.
	eventStageError = "chainmend.stage_error"
)

// Attribute keys of the spans. Spans may carry identifiers (session, connection) that metric
// labels may not, but never content or credentials: the tenant is the same 8-character
// prefix of its hash that the logs show.
const (
	attrTransport     = attribute.Key("chainmend.transport")
	attrLane          = attribute.Key("chainmend.lane")
	attrSession       = attribute.Key("chainmend.session")
	attrConn          = attribute.Key("chainmend.conn")
	attrTenant        = attribute.Key("chainmend.tenant")
	attrTurnNumber    = attribute.Key("chainmend.turn.number")
	attrServerStarted = attribute.Key("chainmend.server_started")
	attrPolicySet     = attribute.Key("chainmend.policy_set")
	attrStore         = attribute.Key("chainmend.store")
	attrOutcome       = attribute.Key("chainmend.outcome")
	attrAttempts      = attribute.Key("chainmend.attempts")
	attrAttempt       = attribute.Key("chainmend.attempt")
	attrRecovery      = attribute.Key("chainmend.recovery")
	attrStage         = attribute.Key("chainmend.stage")
	attrPolicy        = attribute.Key("chainmend.policy")
	attrRule          = attribute.Key("chainmend.rule")
	attrReason        = attribute.Key("chainmend.reason")
	attrShadow        = attribute.Key("chainmend.shadow")
	// attrVerdictPreSend and its siblings hold a stage's verdict; on_upstream_error's is the
	// last one's when the turn retried.
	attrVerdictPreSend         = attribute.Key("chainmend.verdict.pre_send")
	attrVerdictOnUpstreamError = attribute.Key("chainmend.verdict.on_upstream_error")
	attrVerdictPostResponse    = attribute.Key("chainmend.verdict.post_response")
)

// defaultOTLPPath is where an OTLP/HTTP collector takes traces.
const defaultOTLPPath = "/v1/traces"

// Tracing is a TurnHook that records every turn as an OpenTelemetry span: its attributes say
// what the turn was and how it ended, an event per fired rule says why, and child spans time
// each upstream attempt and the store commit. The turn continues the client's W3C trace
// context, and each HTTP attempt upstream carries the attempt span's. Build it with
// NewTracing; a gateway without it has no hook and pays nothing for tracing.
type Tracing struct {
	tracer trace.Tracer
	prop   propagation.TraceContext
	// shutdown flushes and stops the provider NewTracing built; nil for one it was given,
	// whose owner shuts it down.
	shutdown func(context.Context) error
}

var _ TurnHook = (*Tracing)(nil)

// TracingOption configures NewTracing.
type TracingOption func(*tracingOptions)

type tracingOptions struct {
	provider trace.TracerProvider
	endpoint string
}

// WithTracerProvider records the spans with tp instead of an OTLP exporter of the Tracing's
// own: the SDK's tracetest recorder in tests, or a program's provider. Shutdown leaves tp to
// its owner.
func WithTracerProvider(tp trace.TracerProvider) TracingOption {
	return func(o *tracingOptions) { o.provider = tp }
}

// WithOTLPEndpoint sends the spans to an OTLP/HTTP collector at u instead of the one the
// standard environment names (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT;
// by default http://localhost:4318/v1/traces). A URL without a path gets /v1/traces. It has
// no effect with WithTracerProvider.
func WithOTLPEndpoint(u string) TracingOption {
	return func(o *tracingOptions) { o.endpoint = u }
}

// NewTracing builds the tracing hook. Unless WithTracerProvider gives one, it builds an SDK
// provider that batches spans to an OTLP/HTTP collector, configured by the standard
// OTEL_EXPORTER_OTLP_* (headers, timeout, TLS, compression), OTEL_TRACES_SAMPLER*,
// OTEL_BSP_*, OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES variables; the service is
// "chainmend" unless the environment names another. Nothing is sent before the first turn, so
// an unreachable collector fails no start: its export errors go to the OpenTelemetry error
// handler.
func NewTracing(ctx context.Context, opts ...TracingOption) (*Tracing, error) {
	var o tracingOptions
	for _, fn := range opts {
		fn(&o)
	}
	t := &Tracing{}
	tp := o.provider
	if tp == nil {
		sdk, err := newOTLPProvider(ctx, o.endpoint)
		if err != nil {
			return nil, err
		}
		tp, t.shutdown = sdk, sdk.Shutdown
	}
	t.tracer = tp.Tracer("chainmend/gateway")
	return t, nil
}

// newOTLPProvider is an SDK tracer provider that batches spans to an OTLP/HTTP collector.
func newOTLPProvider(ctx context.Context, endpoint string) (*sdktrace.TracerProvider, error) {
	var eopts []otlptracehttp.Option
	if endpoint != "" {
		u, err := otlpURL(endpoint)
		if err != nil {
			return nil, err
		}
		eopts = append(eopts, otlptracehttp.WithEndpointURL(u))
	}
	exp, err := otlptracehttp.New(ctx, eopts...)
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	// The service name comes first so that OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES,
	// detected after it, override it.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "chainmend")),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	// Batched: a turn only queues its spans, and a collector that is slow or down makes the
	// queue drop spans (OTEL_BSP_MAX_QUEUE_SIZE), never a turn wait.
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}

// otlpURL checks a collector URL and gives one without a path the standard traces path: the
// exporter would otherwise post to "/", which no collector serves.
func otlpURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("otlp endpoint: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("otlp endpoint %q: want http://host:port[/path] or https://…", s)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = defaultOTLPPath
	}
	return u.String(), nil
}

// Shutdown exports the spans still queued and stops the provider NewTracing built; with a
// provider of WithTracerProvider it does nothing. Call it after the gateway has closed, so
// that the last turns' spans are in the queue.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t.shutdown == nil {
		return nil
	}
	if err := t.shutdown(ctx); err != nil {
		return fmt.Errorf("trace shutdown: %w", err)
	}
	return nil
}

// turnSpan is what the hook keeps of a turn, in its context.
type turnSpan struct {
	span trace.Span
	// attempts counts the attempts upstream. The driver calls a turn's hooks one at a time,
	// so it needs no lock.
	attempts int
}

type turnSpanKey struct{}

func turnSpanOf(ctx context.Context) *turnSpan {
	ts, _ := ctx.Value(turnSpanKey{}).(*turnSpan)
	return ts
}

// infoCarrier reads the client's trace context headers from a TurnInfo.
type infoCarrier struct{ t *TurnInfo }

func (c infoCarrier) Get(key string) string {
	switch key {
	case "traceparent":
		return c.t.TraceParent
	case "tracestate":
		return c.t.TraceState
	}
	return ""
}

// Set is never called: the carrier is only extracted from.
func (c infoCarrier) Set(string, string) {}

func (c infoCarrier) Keys() []string { return []string{"traceparent", "tracestate"} }

// Begin starts the turn's span, a child of the client's trace context when it sent one.
func (t *Tracing) Begin(ctx context.Context, info *TurnInfo) context.Context {
	if info.TraceParent != "" {
		ctx = t.prop.Extract(ctx, infoCarrier{info})
	}
	ctx, span := t.tracer.Start(ctx, spanTurn, trace.WithSpanKind(trace.SpanKindServer))
	if span.IsRecording() {
		span.SetAttributes(
			attrTransport.String(info.Transport),
			attrLane.String(info.Lane),
			attrSession.String(info.Session),
			attrConn.String(info.Conn),
			attrTenant.String(info.Tenant[:min(8, len(info.Tenant))]),
			attrTurnNumber.Int(info.Number),
			attrServerStarted.Bool(info.ServerStarted),
			attrPolicySet.String(info.PolicySet),
			attrStore.String(info.Store),
		)
	}
	return context.WithValue(ctx, turnSpanKey{}, &turnSpan{span: span})
}

// Stage records the stage's verdict, an event per fired rule with its stage, rule and reason,
// and the reason of a recovery the rules chose.
func (t *Tracing) Stage(ctx context.Context, _ *TurnInfo, stage string, _ *engine.Turn, out *engine.Outcome) {
	ts := turnSpanOf(ctx)
	if ts == nil || !ts.span.IsRecording() {
		return
	}
	for _, f := range out.Fired {
		attrs := []attribute.KeyValue{attrStage.String(stage), attrPolicy.String(f.Policy), attrRule.String(f.Rule), attrReason.String(f.Reason)}
		if f.Shadow {
			attrs = append(attrs, attrShadow.Bool(true))
		}
		ts.span.AddEvent(eventRule, trace.WithAttributes(attrs...))
	}
	switch stage {
	case engine.StagePreSend:
		ts.span.SetAttributes(attrVerdictPreSend.String(string(out.Verdict)))
	case engine.StageOnUpstreamError:
		ts.span.SetAttributes(attrVerdictOnUpstreamError.String(string(out.Verdict)))
		if out.Verdict == engine.VerdictRetry {
			// The driver's recovery label: the reason of the decisive (last) rule.
			ts.span.SetAttributes(attrRecovery.String(lastReason(out.Reasons())))
		}
	case engine.StagePostResponse:
		ts.span.SetAttributes(attrVerdictPostResponse.String(string(out.Verdict)))
	}
	if out.Err != nil {
		// The engine stopped early (its cost limit, an expression's error) and the gateway
		// failed open. The error's text stays in the log: an expression's error may quote
		// what it read of the request.
		ts.span.AddEvent(eventStageError, trace.WithAttributes(attrStage.String(stage)))
	}
}

// Upstream starts the attempt's span and, on HTTP, puts its trace context on the request. A
// WebSocket attempt goes out on a connection whose handshake carried the client's headers,
// its traceparent included, so there is nothing to write.
func (t *Tracing) Upstream(ctx context.Context, info *TurnInfo, h http.Header) func(err error) {
	ts := turnSpanOf(ctx)
	if ts == nil {
		return nil
	}
	ts.attempts++
	if !ts.span.IsRecording() {
		// Not sampled: no span to record, but the upstream must learn the decision too,
		// with the trace's id; the turn's own (non-recording) span context says both.
		if h != nil {
			t.prop.Inject(ctx, propagation.HeaderCarrier(h))
		}
		return nil
	}
	ctx, span := t.tracer.Start(ctx, spanUpstream, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attrAttempt.Int(ts.attempts), attrTransport.String(info.Transport)))
	if h != nil {
		t.prop.Inject(ctx, propagation.HeaderCarrier(h))
	}
	return func(err error) { endSpan(span, err) }
}

// Commit starts the store commit's span.
func (t *Tracing) Commit(ctx context.Context, info *TurnInfo) func(err error) {
	if ts := turnSpanOf(ctx); ts == nil || !ts.span.IsRecording() {
		return nil
	}
	_, span := t.tracer.Start(ctx, spanCommit, trace.WithAttributes(attrStore.String(info.Store)))
	return func(err error) { endSpan(span, err) }
}

// End records the outcome and ends the turn's span.
func (t *Tracing) End(ctx context.Context, _ *TurnInfo, outcome string) {
	ts := turnSpanOf(ctx)
	if ts == nil {
		return
	}
	if ts.span.IsRecording() {
		ts.span.SetAttributes(attrOutcome.String(outcome), attrAttempts.Int(ts.attempts))
		if failedOutcome(outcome) {
			ts.span.SetStatus(codes.Error, outcome)
		}
	}
	ts.span.End()
}

// failedOutcome reports whether a turn outcome is a failure of the turn (the span's status):
// a rejection is the gateway answering as its rules say, and a client that left is the
// client's doing.
func failedOutcome(outcome string) bool {
	switch outcome {
	case "failed", "upstream_timeout", "upstream_error", "error_forwarded":
		return true
	}
	return false
}

// endSpan ends a child span with its error as the status.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, spanError(err))
	}
	span.End()
}

// spanError is an error's text for a span: without the URL of a url.Error, whose query
// could hold a credential of the upstream's.
func spanError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Op + ": " + ue.Err.Error()
	}
	return err.Error()
}
