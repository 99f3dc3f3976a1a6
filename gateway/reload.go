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
	"chainmend/internal/policytest"
)

// reloadDebounce lets an editor's or a ConfigMap's burst of events settle into one reload.
const reloadDebounce = time.Second

// Reloader keeps the active policy set in step with the policy directory: file events on
// the directory (never filtered by name: a ConfigMap update only touches hidden ..data
// entries, editors rename over files), a periodic checksum poll as a safety net, and forced
// reloads (SIGHUP). A set that does not compile, or fails the reload gate, is refused and
// the last good one stays active.
type Reloader struct {
	srv      *Server
	force    chan struct{}
	lastSeen string

	ok        prometheus.Gauge
	okTime    prometheus.Gauge
	failures  prometheus.Counter
	successes prometheus.Counter
}

// NewReloader registers the reload metrics.
func NewReloader(s *Server) *Reloader {
	r := &Reloader{srv: s, force: make(chan struct{}, 1)}
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

// Reload compiles the directory and activates it when it is good. It returns the findings.
func (r *Reloader) Reload() (engine.Diagnostics, error) {
	dir := r.srv.cfg.Policies
	srcs, err := engine.ReadSources(dir)
	if err != nil {
		r.refused(err)
		return nil, err
	}
	r.lastSeen = checksum(srcs)
	snap, diags := engine.Compile(srcs, engine.WithObserver(r.srv.engine))
	if snap == nil {
		err := fmt.Errorf("policy set does not compile:\n%w", diags)
		r.refused(err)
		return diags, err
	}
	if gate := r.srv.cfg.ReloadGate; gate != "" {
		files, err := policytest.LoadFiles(gate)
		if err != nil {
			r.refused(err)
			return diags, err
		}
		rep, err := policytest.Run(snap, files, nil)
		if err == nil && (rep.Failed > 0 || len(rep.Results) == 0) {
			err = fmt.Errorf("reload gate: %d of %d fixtures failed", rep.Failed, len(rep.Results))
		}
		if err != nil {
			r.refused(err)
			return diags, err
		}
	}
	prev := r.srv.Snapshot()
	r.srv.SetSnapshot(snap)
	r.ok.Set(1)
	r.okTime.SetToCurrentTime()
	r.successes.Inc()
	if prev == nil || prev.Hash != snap.Hash {
		r.srv.log.Info("policy set active", "set", snap.Hash, "rules", len(snap.Rules()), "dir", dir)
	}
	return diags, nil
}

func (r *Reloader) refused(err error) {
	r.ok.Set(0)
	r.failures.Inc()
	r.srv.log.Error("policy reload refused; the last good set stays active", "err", err.Error())
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
