// Command gateway runs chainmend: the policy-driven gateway for the OpenAI Responses API.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"chainmend/gateway"
	"chainmend/internal/settings"
	"chainmend/statestore"
)

// traceFlushTimeout bounds the export of the last spans at exit.
const traceFlushTimeout = 5 * time.Second

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

func run() error {
	st, err := settings.Parse(os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	log := gateway.NewLogger(os.Stderr, st.LogLevel, st.LogFormat)
	statestore.RouteRedisLogs(log)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// The reload gate (--reload-gate) is wired here, through settings, and not in the
	// gateway: the fixture harness it runs is no part of the runtime.
	srv, reloader, err := st.NewGateway(log, reg)
	if err != nil {
		return err
	}
	// Deferred before Close so that it runs after it (and after the graceful shutdown), when
	// the last turns' spans are queued. Bounded: a collector that is down must not hold up
	// the exit.
	defer func() {
		fctx, cancel := context.WithTimeout(context.Background(), traceFlushTimeout)
		defer cancel()
		if err := st.ShutdownTracing(fctx); err != nil {
			log.Warn("spans not exported at exit", "err", err)
		}
	}()
	// The decision log's queued records are written after the last turns (runs before the
	// span flush above, after Close below).
	defer func() {
		if err := st.CloseDecisionLog(); err != nil {
			log.Warn("decision log not closed cleanly", "err", err)
		}
	}()
	defer srv.Close()
	if diags, err := reloader.Reload(); err != nil {
		return err
	} else if len(diags) > 0 {
		log.Warn("policy lint findings", "findings", diags.Error())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			reloader.Force()
		}
	}()
	go func() {
		if err := reloader.Run(ctx); err != nil {
			log.Error("policy watcher stopped", "err", err)
		}
	}()
	ln, err := net.Listen("tcp", st.Listen)
	if err != nil {
		return err
	}
	hs := srv.HTTPServer()
	log.Info("gateway listening", "addr", ln.Addr().String(), "upstream", st.Upstream, "mode", st.Mode,
		"store", storeKind(st.Redis), "policies", st.Policies)
	errc := make(chan error, 2)
	go func() { errc <- hs.Serve(ln) }()
	if st.MetricsListen != "" {
		// /metrics on a listener of its own (and not on the main one), for a network that
		// only the scraper reaches.
		mln, err := net.Listen("tcp", st.MetricsListen)
		if err != nil {
			return err
		}
		ms := &http.Server{Handler: srv.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second}
		defer ms.Close()
		log.Info("metrics listening", "addr", mln.Addr().String())
		go func() { errc <- ms.Serve(mln) }()
	}
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	case <-ctx.Done():
		// Stop accepting, let turns in flight finish within the grace period, close
		// WebSocket clients with 1001; bookkeeping is already in the store.
		log.Info("shutting down", "grace", st.ShutdownGrace)
		sctx, cancel := context.WithTimeout(context.Background(), st.ShutdownGrace)
		defer cancel()
		done := make(chan struct{})
		go func() { _ = hs.Shutdown(sctx); close(done) }()
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("grace period over; remaining clients closed", "err", err)
		}
		<-done
		log.Info("stopped")
	}
	return nil
}

func storeKind(url string) string {
	if url == "" {
		return "local"
	}
	return "redis"
}
