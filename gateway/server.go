// Package gateway is the Responses API proxy: it accepts WebSocket (and HTTP/SSE) clients,
// holds one upstream connection per client connection, and puts every turn through the
// policy engine with state from the statestore. It holds no normalization logic of its own:
// the policies decide, the gateway builds the turn context, applies the verdict and keeps
// the books.
package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"chainmend/engine"
	"chainmend/responses"
	"chainmend/statestore"
)

// Server is the gateway. Create it with New, serve Handler, and Close it.
type Server struct {
	cfg     Config
	wsURL   string
	httpURL string
	store   statestore.Store
	log     *slog.Logger
	reg     *prometheus.Registry
	regr    prometheus.Registerer
	metrics *metrics
	engine  *engine.Metrics
	snap    atomic.Pointer[engine.Snapshot]
	client  *http.Client

	mu       sync.Mutex
	sessions map[*session]struct{}
	tenants  map[string]int
	sources  map[string]int
	conns    int
	closed   bool
	draining bool
	connSeq  atomic.Uint64
	instance string
	// hooks observe every turn (tracing, the decision log).
	hooks hookSet
	// bodies bounds the HTTP request bodies held at once; queued the creates that wait for
	// their lanes, across connections.
	bodies, queued byteBudget
}

// Option configures a Server.
type Option func(*Server)

// WithStore sets the state store (default: a local-only statestore).
func WithStore(s statestore.Store) Option { return func(srv *Server) { srv.store = s } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(srv *Server) { srv.log = l } }

// WithRegistry sets the Prometheus registry the gateway's metrics are registered on and
// /metrics serves.
func WithRegistry(r *prometheus.Registry) Option { return func(srv *Server) { srv.reg = r } }

// WithRegisterer registers the gateway's metrics through r instead of the registry itself
// (for wrapping registerers, such as ones that add constant labels).
func WithRegisterer(r prometheus.Registerer) Option { return func(srv *Server) { srv.regr = r } }

// WithHTTPClient sets the client of the HTTP/SSE path and of WebSocket dials.
func WithHTTPClient(c *http.Client) Option { return func(srv *Server) { srv.client = c } }

// New builds a gateway. It does not load policies: build its Reloader (NewReloader) and
// call Reload before serving, the one activation path, gated and counted like every later
// reload; /readyz answers 503 until a policy set is active.
func New(cfg Config, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.SessionHeaders == nil {
		// An explicit empty list reads no header; an unset one reads the defaults.
		cfg.SessionHeaders = DefaultSessionHeaders
	}
	if cfg.TenantHeaders == nil {
		cfg.TenantHeaders = DefaultTenantHeaders
	}
	s := &Server{cfg: cfg, sessions: map[*session]struct{}{}, tenants: map[string]int{}, sources: map[string]int{}}
	s.bodies.max.Store(cfg.MaxBodyBytesInFlight)
	s.queued.max.Store(cfg.MaxQueuedBytesTotal)
	for _, o := range opts {
		o(s)
	}
	var err error
	if s.wsURL, s.httpURL, err = Endpoints(cfg.Upstream); err != nil {
		return nil, err
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
	}
	if s.client == nil {
		s.client = &http.Client{Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			ForceAttemptHTTP2:   true,
		}}
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	s.instance = hex.EncodeToString(b[:])
	if s.regr == nil {
		s.regr = s.reg
	}
	s.metrics = newMetrics(s.regr)
	s.regr.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "chainmend", Name: "request_body_bytes",
		Help: "Bytes of HTTP request bodies the gateway holds (buffers, as they grew), against --max-body-bytes-in-flight.",
	}, func() float64 { return float64(s.bodies.used.Load()) }))
	s.engine = engine.NewMetrics(s.regr)
	if s.store == nil {
		st, err := statestore.New(
			statestore.WithRegisterer(s.regr),
			statestore.WithLogger(s.log),
			statestore.WithTTL(statestore.KindPending, cfg.PendingTTL),
			statestore.WithTTL(statestore.KindAnchor, cfg.AnchorTTL),
			statestore.WithTTL(statestore.KindReplay, cfg.ReplayTTL),
			statestore.WithReplayCap(cfg.ReplayCapBytes),
		)
		if err != nil {
			return nil, fmt.Errorf("state store: %w", err)
		}
		s.store = st
	}
	return s, nil
}

// Registry returns the registry /metrics serves, for wiring other components' metrics.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// setSnapshot activates a compiled policy set; only the Reloader calls it, after the set
// passed its gate. Turns in flight keep the snapshot they started with.
func (s *Server) setSnapshot(snap *engine.Snapshot) {
	s.snap.Store(snap)
	s.metrics.activeSet.Reset()
	s.metrics.activeSet.WithLabelValues(snap.Hash).Set(1)
}

// Snapshot returns the active policy set, or nil before the first load.
func (s *Server) Snapshot() *engine.Snapshot { return s.snap.Load() }

// HTTPServer returns an http.Server for the gateway's Handler with its client-side timeouts:
// request headers must arrive within 10 seconds, and keep-alive connections idle longer than
// Config.ClientIdleTimeout are closed. Request bodies have their own timeout (readBody).
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: s.cfg.ClientIdleTimeout}
}

// MetricsHandler serves the registry /metrics exposes.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg})
}

// Handler returns the gateway's HTTP handler: the Responses create endpoints, /healthz,
// /readyz and /metrics are the gateway's; every other request passes through to the upstream.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	pass := s.passthrough()
	mux.Handle("/", pass)
	mux.Handle("/v1/responses", s.createOr(pass))
	mux.Handle("/responses", s.createOr(pass))
	// Without these, the catch-all would send a POST /healthz upstream.
	mux.HandleFunc("/healthz", getOnly)
	mux.HandleFunc("/readyz", getOnly)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s.Draining() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		if s.snap.Load() == nil {
			http.Error(w, "no policy set loaded", http.StatusServiceUnavailable)
			return
		}
		// A store that cannot work as configured (a URL that does not fit the server,
		// refused credentials) is not ready; an outage is served from the local tier (fail
		// open), so it is said, not refused: taking every instance out of rotation at once
		// when the shared Redis blinks would be worse. chainmend_store_ready tells both.
		if r, ok := s.store.(interface{ Ready() error }); ok {
			if err := r.Ready(); err != nil {
				if !errors.Is(err, statestore.ErrDegraded) {
					http.Error(w, "state store: "+err.Error(), http.StatusServiceUnavailable)
					return
				}
				_, _ = w.Write([]byte("ready (state store degraded: " + err.Error() + ")\n"))
				return
			}
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if s.cfg.MetricsListen == "" {
		mux.HandleFunc("/metrics", getOnly)
		mux.Handle("GET /metrics", s.MetricsHandler())
	} else {
		// Served on its own listener: here it is answered, not passed through upstream.
		mux.HandleFunc("/metrics", http.NotFound)
	}
	return mux
}

func (s *Server) serveResponses(w http.ResponseWriter, r *http.Request) {
	if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		s.serveWebSocket(w, r)
		return
	}
	if r.Method == http.MethodPost {
		s.serveHTTP(w, r)
		return
	}
	w.Header().Set("Allow", "GET (WebSocket), POST")
	http.Error(w, "use a WebSocket upgrade or POST", http.StatusMethodNotAllowed)
}

// Close closes every client session and the store.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	for _, ss := range sessions {
		ss.shutdown()
	}
	return s.store.Close()
}

// refuseAdmission answers a connection or request that a limit refused.
func (s *Server) refuseAdmission(w http.ResponseWriter, limit string) {
	s.metrics.limits.WithLabelValues(limit).Inc()
	status, msg := http.StatusTooManyRequests, "too many open connections"
	switch limit {
	case "tenant_connections":
		msg = fmt.Sprintf("too many open connections for this credential (limit %d)", s.cfg.MaxTenantConnections)
	case "source_connections":
		msg = fmt.Sprintf("too many open connections from this address (limit %d)", s.cfg.MaxSourceConnections)
	case "shutting_down":
		status, msg = http.StatusServiceUnavailable, "the gateway is shutting down; reconnect"
	}
	httpError(w, responses.ErrorBody{Status: status, Type: "rate_limit_error", Code: limit, Message: msg})
}

// admit reserves a connection slot for a tenant from a source address, or says which
// limit refuses it. The per-tenant and per-source limits come before the global one, so that
// no one credential, and no one address with random credentials, can fill it.
func (s *Server) admit(tenant, source string) (limit string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed || s.draining:
		return "shutting_down", false
	case s.tenants[tenant] >= s.cfg.MaxTenantConnections:
		return "tenant_connections", false
	case s.cfg.MaxSourceConnections > 0 && s.sources[source] >= s.cfg.MaxSourceConnections:
		return "source_connections", false
	case s.conns >= s.cfg.MaxConnections:
		return "connections", false
	}
	s.conns++
	s.tenants[tenant]++
	s.sources[source]++
	return "", true
}

func (s *Server) release(tenant, source string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns--
	if s.tenants[tenant]--; s.tenants[tenant] <= 0 {
		delete(s.tenants, tenant)
	}
	if s.sources[source]--; s.sources[source] <= 0 {
		delete(s.sources, source)
	}
}

// sourceOf is the address a request comes from, without its port.
func sourceOf(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

func (s *Server) track(ss *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.sessions[ss] = struct{}{}
	s.metrics.clients.Inc()
	return true
}

func (s *Server) untrack(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
	s.metrics.clients.Dec()
}

// Shutdown drains the gateway: no new connections or turns, turns in flight run to their
// end, then every client is closed with 1001 (going away). When ctx ends first, the
// remaining sessions are closed at once. Turn bookkeeping is written synchronously, so
// the store holds everything once Shutdown returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	for _, ss := range sessions {
		ss.drain()
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		n := len(s.sessions)
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			s.mu.Lock()
			for ss := range s.sessions {
				ss.shutdown()
			}
			s.mu.Unlock()
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Draining reports whether Shutdown has begun.
func (s *Server) Draining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// forwardHeaders copies the client's headers for the upstream: Authorization and every
// identity header go through; hop-by-hop and handshake headers do not.
func forwardHeaders(in http.Header) http.Header {
	out := make(http.Header, len(in))
	for k, v := range in {
		switch http.CanonicalHeaderKey(k) {
		case "Connection", "Upgrade", "Host", "Content-Length", "Transfer-Encoding",
			"Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "Te", "Trailer",
			"Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions",
			"Sec-Websocket-Protocol", "Accept-Encoding":
			continue
		}
		// The values are shared, not copied: the incoming request's header is not used
		// again, and the full slice expression makes an append copy instead of writing
		// into it.
		out[k] = v[:len(v):len(v)]
	}
	return out
}

// detach returns a context that keeps the values of ctx but not its cancellation, for
// bookkeeping that must finish after the client left.
func detach(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }
