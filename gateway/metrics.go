package gateway

import "github.com/prometheus/client_golang/prometheus"

// metrics are the gateway's own series; the engine and the store register theirs.
type metrics struct {
	turns       *prometheus.CounterVec
	turnSeconds *prometheus.HistogramVec
	recoveries  *prometheus.CounterVec
	upstream    *prometheus.CounterVec
	frames      *prometheus.CounterVec
	badFrames   *prometheus.CounterVec
	clients     prometheus.Gauge
	activeSet   *prometheus.GaugeVec
	storeErrors prometheus.Counter
	limits      *prometheus.CounterVec

	// The pass-through's series, by route class (never a path: ids would make them unbounded).
	passRequests *prometheus.CounterVec
	passSeconds  *prometheus.HistogramVec

	// The frame counters, resolved once: relaying an event must not hash a label value.
	toClient, toUpstream prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		turns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chainmend", Name: "turns_total",
			Help: "Turns by transport and outcome (completed, failed, rejected, error_forwarded, upstream_error, client_gone).",
		}, []string{"transport", "outcome"}),
		turnSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "chainmend", Name: "turn_duration_seconds",
			Help:    "Time from a client's create to the turn's end.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"transport"}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chainmend", Name: "recoveries_total",
			Help: "Recovery decisions of on_upstream_error by reason and result (retried, succeeded, failed, forwarded).",
		}, []string{"reason", "result"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chainmend", Name: "upstream_connections_total",
			Help: "Upstream connection events (dialed, dial_failed, rotated, lost, closed).",
		}, []string{"event"}),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chainmend", Name: "frames_relayed_total",
			Help: "Frames relayed, by direction (to_upstream, to_client).",
		}, []string{"direction"}),
		badFrames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chainmend", Name: "bad_frames_total",
			Help: "Client frames refused, by code.",
		}, []string{"code"}),
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "chainmend", Name: "client_connections",
			Help: "Open client WebSocket connections.",
		}),
		activeSet: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "chainmend", Name: "policy_set_active",
			Help: "1 for the active policy set's hash.",
		}, []string{"hash"}),
		limits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chainmend", Name: "limit_rejections_total",
			Help: "Requests refused by a limit (connections, tenant_connections, queued_frames, frame_size, shutting_down).",
		}, []string{"limit"}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "chainmend", Name: "bookkeeping_errors_total",
			Help: "Turn bookkeeping writes the store reported as failed (the local copy is kept).",
		}),
		passRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "chainmend", Name: "passthrough_requests_total",
			Help: "Requests passed through to the upstream (every endpoint but the Responses creates), by route class and status code (499: the client left before the upstream answered).",
		}, []string{"route", "code"}),
		passSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "chainmend", Name: "passthrough_duration_seconds",
			Help:    "Time from a passed-through request to the end of its response (a stream's end; an upgraded connection's close).",
			Buckets: prometheus.ExponentialBuckets(0.005, 4, 9),
		}, []string{"route"}),
	}
	reg.MustRegister(m.turns, m.turnSeconds, m.recoveries, m.upstream, m.frames, m.badFrames,
		m.clients, m.activeSet, m.storeErrors, m.limits, m.passRequests, m.passSeconds)
	m.toClient = m.frames.WithLabelValues("to_client")
	m.toUpstream = m.frames.WithLabelValues("to_upstream")
	return m
}
