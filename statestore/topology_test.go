package statestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/internal/redistest"
)

// logRecorder keeps the store's log records, to check what was said and how often.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}

func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

// lines returns "message | cause" of every record whose message starts with prefix.
func (l *logRecorder) lines(prefix string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.recs {
		if !strings.HasPrefix(r.Message, prefix) {
			continue
		}
		line := r.Message
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "cause" {
				line += " | " + a.Value.String()
			}
			return true
		})
		out = append(out, line)
	}
	return out
}

// readiness lines: one per change of state.
func (l *logRecorder) readiness() []string {
	var out []string
	for _, s := range l.lines("state store ") {
		if strings.HasPrefix(s, "state store ready") || strings.HasPrefix(s, "state store not ready") {
			out = append(out, s)
		}
	}
	return out
}

// open starts a store on url with test-friendly timing, closed when the test ends.
func open(t testing.TB, url string, opts ...Option) (*Tiered, *logRecorder, *prometheus.Registry) {
	t.Helper()
	rec := &logRecorder{}
	reg := prometheus.NewRegistry()
	base := []Option{
		WithRedisURL(url),
		WithLogger(slog.New(rec)),
		WithRegisterer(reg),
		WithBreaker(3, 200*time.Millisecond),
		WithOpTimeout(500 * time.Millisecond),
		WithHealthCheck(100 * time.Millisecond),
	}
	s, err := New(append(base, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s, rec, reg
}

func readyGauge(s *Tiered) float64 { return testutil.ToFloat64(s.metrics.ready) }

// waitReady waits until the store is ready.
func waitReady(t *testing.T, s *Tiered, within time.Duration) {
	t.Helper()
	eventually(t, within, func() bool { return s.Ready() == nil }, "store ready")
	assert.Equal(t, 1.0, readyGauge(s))
}

// shareState commits a turn on each of sessions sessions through w and reads every value
// back through r from Redis (r's local tier never held them), so that keys of every slot
// range are written and read through the clients the URLs chose.
func shareState(t *testing.T, w, r *Tiered, sessions int) {
	t.Helper()
	ctx := context.Background()
	ten := tenant(t)
	for i := 0; i < sessions; i++ {
		sc := Scope{Tenant: ten, Session: fmt.Sprintf("s%d", i)}
		resp := fmt.Sprintf("resp_%d", i)
		require.NoError(t, w.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: resp, Calls: calls1("c")},
			Anchor: strp(resp), ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 10)}, ReplayLastResponseID: resp}))
	}
	before := lookups(r, KindPending, tierRedis, Hit)
	for i := 0; i < sessions; i++ {
		sc := Scope{Tenant: ten, Session: fmt.Sprintf("s%d", i)}
		resp := fmt.Sprintf("resp_%d", i)
		calls, res := r.Pending(ctx, ten, resp)
		require.Equal(t, Hit, res, "pending %s", resp)
		assert.Equal(t, calls1("c"), calls)
		id, res := r.Anchor(ctx, sc)
		require.Equal(t, Hit, res)
		assert.Equal(t, resp, id)
		tr, res := r.Replay(ctx, sc)
		require.Equal(t, Hit, res)
		assert.Len(t, tr.Items, 1)
	}
	assert.Equal(t, float64(sessions), lookups(r, KindPending, tierRedis, Hit)-before, "read from Redis")
}

func TestReadyLocalOnly(t *testing.T) {
	s := newLocal(t)
	assert.NoError(t, s.Ready())
	assert.Equal(t, 1.0, readyGauge(s))
	require.NoError(t, s.Close())
	assert.ErrorIs(t, s.Ready(), ErrClosed)
	assert.Equal(t, 0.0, readyGauge(s))
}

// TestClusterURLForms: one 3-master Cluster reached by every URL form a go-redis user
// writes, each store sharing its state with a store on another form.
func TestClusterURLForms(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	n := c.Addrs()
	forms := []struct {
		name, url string
		seed      string // the one node a one-node URL names
	}{
		{"redis+cluster://", c.URL(), ""},
		{"go-redis addr= form", fmt.Sprintf("redis://%s?addr=%s&addr=%s", n[0], n[1], n[2]), ""},
		{"address list", strings.Join(n, ","), ""},
		{"URL list", "redis://" + strings.Join(n, ",redis://"), ""},
		{"one URL with several hosts", "redis://" + strings.Join(n, ",") + "/0?pool_size=8", ""},
		{"one node URL", "redis://" + n[1], n[1]},
		{"one bare node", n[2], n[2]},
	}
	stores := make([]*Tiered, len(forms))
	parent := t // the stores outlive their subtest: the next one reads through them
	for i, f := range forms {
		t.Run(f.name, func(t *testing.T) {
			s, rec, _ := open(parent, f.url)
			stores[i] = s
			assert.Equal(t, backendCluster, s.Backend())
			waitReady(t, s, 5*time.Second)
			if f.seed != "" {
				assert.NotEmpty(t, rec.lines("redis URL names "+f.seed+", a Redis Cluster node: using the cluster client"),
					"the choice is logged")
			}
			// Written through this form, read through the previous one (and the
			// first through the last form's neighbour, the redis+cluster:// store).
			other := stores[max(i-1, 0)]
			if i == 0 {
				other, _, _ = open(t, c.URL())
			}
			shareState(t, s, other, 24)
		})
	}
	// The keys are spread over every master: the client routed by slot.
	ctx := context.Background()
	for _, node := range c.Nodes {
		size, err := node.Client().DBSize(ctx).Result()
		require.NoError(t, err)
		assert.Positive(t, size, "master %s holds keys", node.Addr)
	}
}

// TestTopology runs a standalone master with a replica watched by two Sentinels, and a
// Cluster: the URLs that do not fit are refused at start with the form to write, the ones
// that do get the right client, the store suite runs through the Sentinels, and writes
// keep landing across a failover under load.
func TestTopology(t *testing.T) {
	d := redistest.StartSentinel(t, 1, 2)
	c := redistest.StartCluster(t, 3)
	master, replica, sentinel := d.Servers[0].Addr, d.Servers[1].Addr, d.Sentinels[0].Addr
	node := c.Nodes[0].Addr

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			name, url, want string
		}{
			{"cluster URL on a standalone server", "redis+cluster://" + master, "write redis://" + master},
			{"addr= form on standalone servers", "redis://" + master + "?addr=" + replica, "for one server write redis://" + master},
			{"address list on standalone servers", master + "," + replica, "(redis+cluster://, addr= or several nodes)"},
			{"one node URL on a Sentinel", "redis://" + sentinel, "write redis+sentinel://" + sentinel + "?master_name=" + redistest.MasterName},
			{"cluster URL on a Sentinel", "redis+cluster://" + sentinel, "write redis+sentinel://" + sentinel},
			{"one node URL on a replica", "redis://:pw@" + replica, "read-only replica of " + master + ": point the URL at the master (redis://" + master + ")"},
			{"unknown master name", "redis+sentinel://" + sentinel + "?master_name=other", `no master named "other" (it monitors: mymaster)`},
			{"sentinel URL on a standalone server", "redis+sentinel://" + master + "?master_name=mymaster", "not a Sentinel: for the server itself write redis://" + master},
			{"sentinel URL on a Cluster node", "redis+sentinel://" + node + "?master_name=mymaster", "not a Sentinel: write redis+cluster://" + node},
			{"Cluster node with a database", "redis://" + node + "/3", "only database 0"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				reg := prometheus.NewRegistry()
				start := time.Now()
				_, err := New(WithRedisURL(tc.url), WithLogger(quiet), WithRegisterer(reg))
				require.Error(t, err)
				assert.Less(t, time.Since(start), 3*time.Second)
				assert.ErrorIs(t, err, ErrRedisURL)
				assert.Contains(t, err.Error(), tc.want)
				assert.NotContains(t, err.Error(), "pw@")
				mfs, gerr := reg.Gather()
				require.NoError(t, gerr)
				assert.Empty(t, mfs, "a refusal registers nothing")
			})
		}
	})

	t.Run("detected", func(t *testing.T) {
		for _, tc := range []struct {
			name, url, backend string
		}{
			{"one node URL on a master", "redis://" + master, backendStandalone},
			{"one node URL on a Cluster node", "redis://" + node, backendCluster},
			{"redis+sentinel://", d.URL(), backendSentinel},
			{"master_name= form", fmt.Sprintf("redis://%s?master_name=%s&addr=%s", sentinel, redistest.MasterName, d.Sentinels[1].Addr), backendSentinel},
			{"Sentinel list", fmt.Sprintf("redis+sentinel://%s?master_name=%s", strings.Join(d.SentinelAddrs(), ","), redistest.MasterName), backendSentinel},
		} {
			t.Run(tc.name, func(t *testing.T) {
				a, _, _ := open(t, tc.url)
				b, _, _ := open(t, tc.url)
				assert.Equal(t, tc.backend, a.Backend())
				waitReady(t, a, 5*time.Second)
				shareState(t, a, b, 8)
			})
		}
	})

	t.Run("suite", func(t *testing.T) {
		e := &env{name: "sentinel", url: d.URL(), raw: d.Client()}
		for _, tc := range suite {
			switch tc.name {
			case "OutageAndRecovery", "SlowRedis":
				// Killing or pausing the master starts the Sentinels' own
				// failover; FailoverUnderLoad covers that.
				continue
			}
			t.Run(tc.name, func(t *testing.T) { tc.fn(t, e) })
		}
	})

	t.Run("FailoverUnderLoad", func(t *testing.T) { testFailoverUnderLoad(t, d) })
}

// testFailoverUnderLoad commits turns from four goroutines while the Sentinels fail the
// master over. Once the store follows the new master every commit lands there and another
// instance reads it; what was committed while the switch was in flight is written back; an
// instance holding a session's anchor hears of the next one although its subscription was on
// the old master.
func testFailoverUnderLoad(t *testing.T, d *redistest.Sentinel) {
	ctx := context.Background()
	a, rec, _ := open(t, d.URL())
	// A long hot TTL: B's copies may only go away through invalidations.
	b, _, _ := open(t, d.URL(), WithHotTTL(time.Minute))
	waitReady(t, a, 5*time.Second)
	waitReady(t, b, 5*time.Second)
	ten := tenant(t)
	watched := Scope{Tenant: ten, Session: "watched"}
	require.NoError(t, a.Commit(ctx, Batch{Scope: watched, Anchor: strp("resp_before")}))
	eventually(t, 2*time.Second, func() bool { id, r := b.Anchor(ctx, watched); return r == Hit && id == "resp_before" }, "B holds the anchor")

	type commit struct {
		resp  string
		start time.Time
		err   error
	}
	var (
		mu      sync.Mutex
		commits []commit
		wg      sync.WaitGroup
	)
	stop := make(chan struct{})
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := Scope{Tenant: ten, Session: fmt.Sprintf("load%d", g)}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				resp := fmt.Sprintf("resp_%d_%d", g, i)
				start := time.Now()
				err := a.Commit(ctx, Batch{Scope: sc, PutPending: &PendingPut{ResponseID: resp, Calls: calls1("c")}, Anchor: strp(resp)})
				mu.Lock()
				commits = append(commits, commit{resp, start, err})
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	oldMaster := d.MasterAddr()
	newMaster := d.Failover()
	require.NotEqual(t, oldMaster, newMaster)
	nm := redis.NewClient(&redis.Options{Addr: newMaster})
	defer nm.Close()

	// The store follows: a commit started after the failover lands on the new master.
	var settled time.Time
	eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		last := commits[len(commits)-1]
		mu.Unlock()
		if last.err != nil || !last.start.After(time.Now().Add(-time.Second)) {
			return false
		}
		n, err := nm.Exists(ctx, pendingKey(ten, last.resp)).Result()
		if err == nil && n == 1 {
			settled = last.start
			return true
		}
		return false
	}, "commits land on the new master")
	time.Sleep(time.Second) // load on the new master
	close(stop)
	wg.Wait()

	var after, degraded []commit
	for _, c := range commits {
		if errors.Is(c.err, ErrDegraded) {
			degraded = append(degraded, c)
		} else {
			require.NoError(t, c.err)
		}
		if c.start.After(settled) {
			after = append(after, c)
		}
	}
	lost := 0
	for _, c := range commits {
		if c.err == nil && !c.start.After(settled) {
			if n, err := nm.Exists(ctx, pendingKey(ten, c.resp)).Result(); err == nil && n == 0 {
				lost++ // confirmed by the old master after the promotion: Sentinel replication is asynchronous
			}
		}
	}
	t.Logf("%d commits, %d after the switch settled, %d kept locally while it was in flight, %d confirmed by the old master and lost",
		len(commits), len(after), len(degraded), lost)
	require.NotEmpty(t, after)
	for _, c := range after {
		require.NoError(t, c.err, "%s: every commit after the switch lands", c.resp)
		n, err := nm.Exists(ctx, pendingKey(ten, c.resp)).Result()
		require.NoError(t, err)
		require.Equal(t, int64(1), n, "%s is on the new master", c.resp)
		_, r := b.Pending(ctx, ten, c.resp)
		require.Equal(t, Hit, r, "%s is read by another instance", c.resp)
	}
	// What was kept locally during the switch reaches the new master too.
	for _, c := range degraded {
		eventually(t, 10*time.Second, func() bool {
			n, err := nm.Exists(ctx, pendingKey(ten, c.resp)).Result()
			return err == nil && n == 1
		}, c.resp+" written back")
	}
	// B's subscription was on the old master, which keeps its role for seconds: the store
	// subscribes again when the master moves, so B hears of A's next anchor well before the
	// Sentinels convert the old master.
	require.NoError(t, a.Commit(ctx, Batch{Scope: watched, Anchor: strp("resp_after")}))
	took := eventually(t, 5*time.Second, func() bool { id, r := b.Anchor(ctx, watched); return r == Hit && id == "resp_after" }, "B drops its copy")
	t.Logf("B read the new anchor after %s", took)
	assert.NotEmpty(t, rec.lines("sentinel failover: the redis master moved"))
	waitReady(t, a, 5*time.Second)
	waitReady(t, b, 5*time.Second)
}

// TestUnreachableAtStart: a store whose Redis is down at start starts (not ready, the cause
// logged once), keeps its commits locally, and once Redis answers picks the client that fits
// and writes them back; the readiness log has one line per change, not one per attempt.
func TestUnreachableAtStart(t *testing.T) {
	t.Run("standalone", func(t *testing.T) {
		srv := redistest.Start(t)
		srv.Kill()
		ctx := context.Background()
		a, rec, _ := open(t, srv.URL())
		err := a.Ready()
		require.ErrorIs(t, err, ErrDegraded)
		assert.Contains(t, err.Error(), "not reached yet")
		assert.Equal(t, 0.0, readyGauge(a))
		ten := tenant(t)
		assert.ErrorIs(t, a.Commit(ctx, Batch{Scope: Scope{Tenant: ten}, PutPending: &PendingPut{ResponseID: "resp_1", Calls: calls1("c")}}), ErrDegraded)
		time.Sleep(time.Second) // several attempts, one log line
		lines := rec.readiness()
		require.Len(t, lines, 1, "%q", lines)
		assert.Contains(t, lines[0], "not reached yet")

		srv.Restart()
		waitReady(t, a, 10*time.Second)
		assert.Equal(t, backendStandalone, a.Backend())
		b, _, _ := open(t, srv.URL())
		eventually(t, 5*time.Second, func() bool { _, r := b.Pending(ctx, ten, "resp_1"); return r == Hit }, "written back")
		lines = rec.readiness()
		require.Len(t, lines, 2, "%q", lines)
		assert.Equal(t, "state store ready", lines[1])
	})

	t.Run("one node URL, a Cluster behind it", func(t *testing.T) {
		c := redistest.StartCluster(t, 3)
		c.Kill()
		a, rec, _ := open(t, "redis://"+c.Nodes[0].Addr)
		assert.Equal(t, backendStandalone, a.Backend(), "what the URL names, until the server says")
		assert.Error(t, a.Ready())
		c.Restart()
		waitReady(t, a, 15*time.Second)
		assert.Equal(t, backendCluster, a.Backend())
		assert.NotEmpty(t, rec.lines("redis URL names "+c.Nodes[0].Addr+", a Redis Cluster node"))
		b, _, _ := open(t, c.URL())
		shareState(t, a, b, 24)
	})

	t.Run("cluster URL, a standalone server behind it", func(t *testing.T) {
		srv := redistest.Start(t)
		srv.Kill()
		ctx := context.Background()
		a, rec, _ := open(t, "redis+cluster://"+srv.Addr)
		srv.Restart()
		eventually(t, 10*time.Second, func() bool { return errors.Is(a.Ready(), ErrRedisURL) }, "mismatch found")
		assert.Contains(t, a.Ready().Error(), "for one server write redis://"+srv.Addr)
		assert.Equal(t, 0.0, readyGauge(a))
		require.ErrorIs(t, a.Commit(ctx, Batch{Scope: Scope{Tenant: tenant(t)}, PutPending: &PendingPut{ResponseID: "r"}}), ErrDegraded)
		time.Sleep(time.Second) // asked again and again, logged once
		var mismatches []string
		for _, l := range rec.readiness() {
			if strings.Contains(l, "does not fit the server") {
				mismatches = append(mismatches, l)
			}
		}
		assert.Len(t, mismatches, 1, "%q", rec.readiness())
		n, err := srv.Client().DBSize(ctx).Result()
		require.NoError(t, err)
		assert.Zero(t, n, "the wrong client never wrote")
	})
}

// TestReadyFollowsOutage: readiness follows an outage and a recovery with no traffic at all
// (the health check notices both, and probes the open breaker), and says why.
func TestReadyFollowsOutage(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	s, rec, reg := open(t, srv.URL())
	waitReady(t, s, 5*time.Second)
	assert.Equal(t, 1.0, gathered(t, reg, "chainmend_store_ready"))
	srv.Kill()
	eventually(t, 5*time.Second, func() bool { return errors.Is(s.Ready(), ErrDegraded) }, "not ready")
	assert.Equal(t, 0.0, gathered(t, reg, "chainmend_store_ready"))
	// Reads open the breaker; then nothing runs.
	for i := 0; i < 5; i++ {
		s.Pending(ctx, "t", fmt.Sprintf("r%d", i))
	}
	eventually(t, 2*time.Second, func() bool { return s.breaker.current() == breakerOpen }, "breaker open")
	time.Sleep(500 * time.Millisecond)
	srv.Restart()
	waitReady(t, s, 10*time.Second)
	assert.Equal(t, breakerClosed, s.breaker.current())
	lines := rec.readiness()
	t.Logf("%q", lines)
	for i := 1; i < len(lines); i++ {
		assert.NotEqual(t, lines[i-1], lines[i], "one line per change")
	}
	assert.LessOrEqual(t, len(lines), 8, "a handful of changes, not a line per attempt")
	assert.Equal(t, "state store ready", lines[len(lines)-1])
}

// TestReadyReplicaAndCredentials: a master that becomes a replica, and a server that refuses
// the URL's credentials, are configuration errors: not ready, ErrRedisURL, and ready again
// when fixed.
func TestReadyReplicaAndCredentials(t *testing.T) {
	ctx := context.Background()
	t.Run("master demoted", func(t *testing.T) {
		srv, other := redistest.Start(t), redistest.Start(t)
		s, _, _ := open(t, srv.URL())
		waitReady(t, s, 5*time.Second)
		host, port, _ := strings.Cut(other.Addr, ":")
		require.NoError(t, srv.Client().ReplicaOf(ctx, host, port).Err())
		eventually(t, 5*time.Second, func() bool { return errors.Is(s.Ready(), ErrRedisURL) }, "demotion noticed")
		assert.Contains(t, s.Ready().Error(), "is now a read-only replica of "+other.Addr)
		require.NoError(t, srv.Client().ReplicaOf(ctx, "NO", "ONE").Err())
		waitReady(t, s, 5*time.Second)
	})
	t.Run("credentials refused", func(t *testing.T) {
		srv := redistest.Start(t)
		require.NoError(t, srv.Client().ConfigSet(ctx, "requirepass", "s3cret").Err())
		s, _, _ := open(t, "redis://:hunter2-pw@"+srv.Addr)
		err := s.Ready()
		require.ErrorIs(t, err, ErrRedisURL, "started, not refused: the credentials may be fixed without a restart")
		assert.Contains(t, err.Error(), "refused the credentials")
		assert.NotContains(t, err.Error(), "hunter2")
		// The operator fixes the server side.
		admin := redis.NewClient(&redis.Options{Addr: srv.Addr, Password: "s3cret"})
		defer admin.Close()
		require.NoError(t, admin.ConfigSet(ctx, "requirepass", "hunter2-pw").Err())
		waitReady(t, s, 10*time.Second)
	})
}
