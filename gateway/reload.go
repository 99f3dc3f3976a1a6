package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"

	"chainmend/engine"
)

// reloadDebounce lets an editor's or a ConfigMap's burst of events settle into one reload.
const reloadDebounce = time.Second

// Reloader keeps the active policy set in step with the policy directory: file events on
// the directory (never filtered by name: a ConfigMap update only touches hidden ..data
// entries, editors rename over files), a periodic checksum poll as a safety net, and forced
// reloads (SIGHUP). A set that does not compile, or fails the reload gate, is refused and
// the last good one stays active. It is the only way a policy set becomes active, so that
// every activation goes through the gate and shows in the reload metrics.
type Reloader struct {
	srv      *Server
	gate     ReloadGate
	force    chan struct{}
	lastSeen string
	// refusals counts the reloads refused since the last good one, so that the reload
	// that ends a bad spell says so.
	refusals int

	ok        prometheus.Gauge
	okTime    prometheus.Gauge
	failures  prometheus.Counter
	successes prometheus.Counter
}

// ReloadGate checks a policy set that compiled before it is activated; an error refuses
// the set. The error is logged as the reason for the refusal, so it should say which check
// failed and why. An error that is (or wraps) engine.Diagnostics holding lint findings
// only does not refuse the set: it is activated, and the findings are logged with it and
// returned by Reload. The gateway injects no gate of its own: the fixture gate of
// --reload-gate is built by the process (internal/settings), so that the runtime never
// imports a test harness.
type ReloadGate func(snap *engine.Snapshot) error

// ReloaderOption configures a Reloader.
type ReloaderOption func(*Reloader)

// WithReloadGate makes every reload pass gate before its set is activated. The gate gets
// a compilation of the set of its own that reports to no observer: whatever it evaluates
// is not traffic, and the engine metrics on /metrics count only the turns the gateway
// served.
func WithReloadGate(gate ReloadGate) ReloaderOption {
	return func(r *Reloader) { r.gate = gate }
}

// NewReloader registers the reload metrics. Call it once per Server: it is the server's
// activation path.
func NewReloader(s *Server, opts ...ReloaderOption) *Reloader {
	r := &Reloader{srv: s, force: make(chan struct{}, 1)}
	for _, o := range opts {
		o(r)
	}
	r.ok = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "chainmend", Name: "policy_last_reload_successful",
		Help: "1 when the last policy reload succeeded."})
	r.okTime = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "chainmend", Name: "policy_last_reload_success_timestamp_seconds",
		Help: "Time of the last successful policy reload."})
	r.failures = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "chainmend", Name: "policy_reload_failures_total",
		Help: "Policy reloads refused (compile errors or a failed reload gate)."})
	r.successes = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "chainmend", Name: "policy_reloads_total",
		Help: "Policy sets activated."})
	s.regr.MustRegister(r.ok, r.okTime, r.failures, r.successes)
	return r
}

// Force asks for a reload now (SIGHUP).
func (r *Reloader) Force() {
	select {
	case r.force <- struct{}{}:
	default:
	}
}

// Reload compiles the directory and activates it when it is good. It returns the findings:
// the compiler's, and the lint findings of the gate. While no set was ever activated (at
// start-up) a refusal's error says that there is no good set to fall back on.
func (r *Reloader) Reload() (engine.Diagnostics, error) {
	dir := r.srv.cfg.Policies
	srcs, err := engine.ReadSources(dir)
	if err != nil {
		return nil, r.refused(err)
	}
	r.lastSeen = checksum(srcs)
	snap, diags := engine.Compile(srcs, engine.WithObserver(r.srv.engine))
	if snap == nil {
		return diags, r.refused(fmt.Errorf("policy set does not compile:\n%w", diags))
	}
	if r.gate != nil {
		if err := r.runGate(srcs); err != nil {
			var lint engine.Diagnostics
			if !errors.As(err, &lint) || lint.HasErrors() {
				return diags, r.refused(fmt.Errorf("reload gate: %w", err))
			}
			diags = append(diags, lint...)
		}
	}
	prev := r.srv.Snapshot()
	r.srv.setSnapshot(snap)
	r.ok.Set(1)
	r.okTime.SetToCurrentTime()
	r.successes.Inc()
	switch {
	case r.refusals > 0:
		// The bad spell is over: the change was fixed or reverted. Operators watching the
		// refusals need the line that says so, even when the set is the one that stayed.
		r.srv.log.Info("policy reload good again", "set", snap.Hash, "rules", len(snap.Rules()), "dir", dir,
			"refused_before", r.refusals, "same_set", prev != nil && prev.Hash == snap.Hash)
	case prev == nil || prev.Hash != snap.Hash:
		r.srv.log.Info("policy set active", "set", snap.Hash, "rules", len(snap.Rules()), "dir", dir)
	}
	r.refusals = 0
	if lints := diags.Lints(); len(lints) > 0 {
		r.srv.log.Warn("policy set active with lint findings", "set", snap.Hash, "lint", len(lints), "findings", lints.Error())
	}
	return diags, nil
}

// runGate runs the gate on a second compilation of srcs without an observer: the
// snapshot that becomes active reports to the gateway's engine metrics, and the gate's
// evaluations must not count there.
func (r *Reloader) runGate(srcs []engine.Source) error {
	private, diags := engine.Compile(srcs)
	if private == nil {
		// The same sources compiled a moment ago; a failure here is a bug, not a policy.
		return fmt.Errorf("policy set does not compile a second time:\n%w", diags)
	}
	return r.gate(private)
}

// refused records a refused reload and returns its error. Without an active set (at
// start-up) there is no last good set to keep, and the log line and the error say so.
func (r *Reloader) refused(err error) error {
	r.ok.Set(0)
	r.failures.Inc()
	r.refusals++
	if active := r.srv.Snapshot(); active != nil {
		r.srv.log.Error("policy reload refused; the last good set stays active", "set", active.Hash, "err", err.Error())
		return err
	}
	r.srv.log.Error("policy set refused; there is no good policy set to serve", "dir", r.srv.cfg.Policies, "err", err.Error())
	return fmt.Errorf("no good policy set to serve: %w", err)
}

func checksum(srcs []engine.Source) string {
	h := sha256.New()
	for _, s := range srcs {
		fmt.Fprintf(h, "%s\x00%d\x00", s.Name, len(s.Data))
		h.Write(s.Data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Run watches until ctx ends.
func (r *Reloader) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch policies: %w", err)
	}
	defer w.Close()
	if err := w.Add(r.srv.cfg.Policies); err != nil {
		return fmt.Errorf("watch policies: %w", err)
	}
	poll := time.NewTicker(r.srv.cfg.ReloadPoll)
	defer poll.Stop()
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("policy watcher closed")
			}
			_ = ev
			debounce = time.After(reloadDebounce)
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("policy watcher closed")
			}
			r.srv.log.Warn("policy watcher", "err", err)
		case <-poll.C:
			// The poll only arms a reload that no event armed yet: re-arming it on every
			// tick would postpone the reload for as long as the change stands.
			if debounce != nil {
				continue
			}
			if srcs, err := engine.ReadSources(r.srv.cfg.Policies); err == nil && checksum(srcs) != r.lastSeen {
				debounce = time.After(reloadDebounce)
			}
		case <-r.force:
			_, _ = r.Reload()
		case <-debounce:
			debounce = nil
			_, _ = r.Reload()
		}
	}
}
