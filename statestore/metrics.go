package statestore

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// tier labels: the tier that answered a lookup.
const (
	tierLocal = iota
	tierRedis
	numTiers
)

var tierNames = [numTiers]string{"local", "redis"}

// op labels for Redis operations.
type op uint8

const (
	opPending op = iota
	opAnchor
	opReplay
	opConversation
	opCommit
	opSubscribe
	opWriteback
	opHealth
	numOps
)

var opNames = [numOps]string{"pending", "anchor", "replay", "conversation", "commit", "subscribe", "writeback", "health"}

// Breaker state gauge values: higher is worse.
const (
	breakerClosed   = 0
	breakerHalfOpen = 1
	breakerOpen     = 2
)

// metrics are resolved to concrete counters once, so the hot path only does
// an atomic add and never hashes label values.
type metrics struct {
	lookups       [numKinds][numTiers][Unknown + 1]prometheus.Counter
	redisErrors   [numOps]prometheus.Counter
	redisSkipped  [numOps]prometheus.Counter
	breakerState  prometheus.Gauge
	ready         prometheus.Gauge
	invalSent     prometheus.Counter
	invalReceived prometheus.Counter
	flushes       prometheus.Counter
	commits       [numCommitResults]prometheus.Counter
	replayTrims   prometheus.Counter
	writebacks    [numWritebackResults]prometheus.Counter
}

// commit results.
const (
	commitRedis     = iota // written to both tiers
	commitLocalOnly        // no Redis configured
	commitDegraded         // Redis failed or breaker open; kept locally
	numCommitResults
)

var commitNames = [numCommitResults]string{"redis", "local_only", "degraded"}

// write-back results, per key (see writeback.go).
const (
	wbWritten    = iota // the local value is in Redis now
	wbSuperseded        // Redis held a newer value; the local copy was dropped
	wbDeleted           // no write-back possible; the Redis copy was deleted (or marked broken)
	wbFailed            // not even the delete worked
	wbUntracked         // a lost value could not be remembered (tracking bound reached)
	numWritebackResults
)

var writebackNames = [numWritebackResults]string{"written", "superseded", "deleted", "failed", "untracked"}

const namespace = "chainmend_store"

func newMetrics(reg prometheus.Registerer, local *localTier) (*metrics, error) {
	m := &metrics{}
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "lookups_total",
		Help: "State lookups by kind, the tier that answered (local, redis) and result (hit, miss, unknown).",
	}, []string{"kind", "tier", "result"})
	for k := Kind(0); k < numKinds; k++ {
		for t := 0; t < numTiers; t++ {
			for r := Miss; r <= Unknown; r++ {
				m.lookups[k][t][r] = lookups.WithLabelValues(k.String(), tierNames[t], r.String())
			}
		}
	}
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "redis_errors_total",
		Help: "Failed Redis operations (every attempt, retries included) by operation.",
	}, []string{"op"})
	skipped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "redis_skipped_total",
		Help: "Redis operations not attempted because the circuit breaker was open, by operation.",
	}, []string{"op"})
	for o := op(0); o < numOps; o++ {
		m.redisErrors[o] = errs.WithLabelValues(opNames[o])
		m.redisSkipped[o] = skipped.WithLabelValues(opNames[o])
	}
	m.breakerState = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "breaker_state",
		Help: "Redis circuit breaker state: 0 closed, 1 half-open, 2 open.",
	})
	m.ready = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "ready",
		Help: "1 when the store works as configured (always, local-only), 0 when not: Redis not reached yet, a URL that does not fit the server, breaker open, failed health check or invalidation subscription down; the log names the cause.",
	})
	m.invalSent = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "invalidations_sent_total",
		Help: "Keys announced as changed to other instances.",
	})
	m.invalReceived = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "invalidations_received_total",
		Help: "Keys dropped from the local tier on another instance's announcement.",
	})
	m.flushes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "local_flushes_total",
		Help: "Local tier flushes after the invalidation subscription was lost and restored.",
	})
	commits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "commits_total",
		Help: "Turn commits by result (redis, local_only, degraded).",
	}, []string{"result"})
	for c := 0; c < numCommitResults; c++ {
		m.commits[c] = commits.WithLabelValues(commitNames[c])
	}
	m.replayTrims = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "replay_trims_total",
		Help: "Replay transcripts trimmed in whole units to respect the byte cap.",
	})
	writebacks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "writeback_keys_total",
		Help: "Keys committed while Redis was unreachable, by what happened when it answered again (written, superseded, deleted, failed, untracked).",
	}, []string{"result"})
	for w := 0; w < numWritebackResults; w++ {
		m.writebacks[w] = writebacks.WithLabelValues(writebackNames[w])
	}
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "local_entries",
		Help: "Entries in the local tier.",
	}, func() float64 { return float64(local.nEntries.Load()) })
	bytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "local_bytes",
		Help: "Approximate bytes held by the local tier.",
	}, func() float64 { return float64(local.nBytes.Load()) })

	evictions := &evictionCollector{local: local, desc: prometheus.NewDesc(namespace+"_local_evictions_total",
		"Entries the local tier evicted, by reason: entries or bytes (its bounds), tenant_share (a tenant over its share gave up an entry in place of an older one of a tenant within its own), oversize (a value too large to keep).",
		[]string{"reason"}, nil)}

	if reg == nil {
		return m, nil
	}
	collectors := []prometheus.Collector{lookups, errs, skipped, m.breakerState, m.ready, m.invalSent,
		m.invalReceived, m.flushes, commits, m.replayTrims, writebacks, entries, bytes, evictions}
	for i, c := range collectors {
		if err := reg.Register(c); err != nil {
			// Leave the registerer as it was, so a caller may retry.
			for _, done := range collectors[:i] {
				reg.Unregister(done)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("statestore: metrics already registered (one store per registerer): %w", err)
			}
			return nil, fmt.Errorf("statestore: register metrics: %w", err)
		}
	}
	return m, nil
}

// evictionCollector reports the local tier's eviction counters, which the tier
// keeps itself: it exists before the metrics, and counts under its own lock.
type evictionCollector struct {
	local *localTier
	desc  *prometheus.Desc
}

func (c *evictionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *evictionCollector) Collect(ch chan<- prometheus.Metric) {
	for r := 0; r < numEvictReasons; r++ {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(c.local.evictions[r].Load()), evictNames[r])
	}
}
