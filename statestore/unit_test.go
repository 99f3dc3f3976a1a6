package statestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var quiet = slog.New(slog.DiscardHandler)

func newLocal(t testing.TB, opts ...Option) *Tiered {
	t.Helper()
	s, err := New(append([]Option{WithLogger(quiet)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func strp(s string) *string { return &s }

func TestPendingCodec(t *testing.T) {
	for _, calls := range [][]Call{
		{},
		{{ID: "call_1", Kind: "function_call"}},
		{{ID: "call_1", Kind: "function_call"}, {ID: "c\x00\n{}", Kind: "custom_tool_call"},
			{ID: "ls", Kind: "local_shell_call"}, {ID: "x", Kind: "some_future_call"}},
	} {
		exp := time.Now().Add(time.Hour).UnixMilli()
		b := encodePending(calls, exp)
		got, gotExp, err := decodePending(string(b))
		require.NoError(t, err)
		assert.Equal(t, calls, got)
		assert.Equal(t, exp, gotExp)
	}
	for _, bad := range []string{"", "2", "1", "1\x00f", "1\x00f\x05ab", "1\x00q\x01a"} {
		_, _, err := decodePending(bad)
		assert.ErrorIs(t, err, errCorrupt, "%q", bad)
	}
	v := encodePending([]Call{{ID: "call_abc", Kind: "function_call"}}, time.Now().UnixMilli())
	assert.LessOrEqual(t, len(v), 1+6+1+1+8, "values stay compact")

}

// TestAbsent: a missing key and a tombstone are no value; anything else, or an error, is not.
func TestAbsent(t *testing.T) {
	for _, tc := range []struct {
		name string
		val  string
		err  error
		want bool
	}{
		{"missing key", "", redis.Nil, true},
		{"tombstone", string(encodeTombstone(42)), nil, true},
		{"pending value", string(encodePending(nil, 42)), nil, false},
		{"anchor", string(encodeAnchor("resp_1", 42)), nil, false},
		{"redis error", "", errors.New("boom"), false},
	} {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, absent(tc.val, tc.err)) })
	}
}

// TestAnchorCodec: plain anchors, and anchors that carry their response's pending calls.
func TestAnchorCodec(t *testing.T) {
	calls := []Call{{ID: "call_1", Kind: "function_call"}, {ID: "x", Kind: "some_future_call"}}
	for _, tc := range []struct {
		name string
		enc  []byte
		want anchorValue
	}{
		{"plain", encodeAnchor("resp_1", 42), anchorValue{id: "resp_1", expiresMs: 42}},
		{"carrying", encodeAnchorCarrying("resp_1", 42, calls, 7),
			anchorValue{id: "resp_1", expiresMs: 42, carries: true, calls: calls, callsExpMs: 7}},
		{"carrying nothing pending", encodeAnchorCarrying("resp_1", 42, nil, 7),
			anchorValue{id: "resp_1", expiresMs: 42, carries: true, calls: []Call{}, callsExpMs: 7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeAnchor(string(tc.enc))
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	for _, bad := range []string{"", "3", "2", "2\x00", "2\x00\x09resp", "2\x00\x01r", "2\x00\x01r\x00q"} {
		_, err := decodeAnchor(bad)
		assert.ErrorIs(t, err, errCorrupt, "%q", bad)
	}
}

func TestReplayItemCodec(t *testing.T) {
	it := ReplayItem{Raw: []byte(`{"type":"function_call","call_id":"c1","x":"\u0000"}`), Type: "function_call", CallID: "c1"}
	got, err := decodeReplayItem(encodeReplayItem(it))
	require.NoError(t, err)
	assert.Equal(t, it, got)
	// A NUL in the header fields cannot break the framing.
	it2 := ReplayItem{Raw: []byte("{}"), Type: "message", CallID: "a\x00b"}
	got, err = decodeReplayItem(encodeReplayItem(it2))
	require.NoError(t, err)
	assert.Equal(t, "a\uFFFDb", got.CallID)
	assert.Equal(t, "{}", string(got.Raw))
}

func TestInvalidationCodec(t *testing.T) {
	keys := []lkey{{KindPending, "t1", "resp_1"}, {KindAnchor, "t1", "s\n:{}"}, {KindReplay, "t2", ""}}
	from, got, err := decodeInvalidation(encodeInvalidation("inst", keys))
	require.NoError(t, err)
	assert.Equal(t, "inst", from)
	assert.Equal(t, keys, got)
	_, _, err = decodeInvalidation("no newline")
	assert.Error(t, err)
}

func TestKeysShareSlotPerSession(t *testing.T) {
	a := sessionKey("t", "s", suffixAnchor)
	r := sessionKey("t", "s", suffixReplay)
	m := sessionKey("t", "s", suffixReplayMeta)
	tag := func(k string) string { return k[strings.IndexByte(k, '{')+1 : strings.IndexByte(k, '}')] }
	assert.Equal(t, "cm:{t:t:s:s}:anchor", a)
	assert.Equal(t, tag(a), tag(r))
	assert.Equal(t, tag(a), tag(m))
	assert.Equal(t, "cm:{t:t:r:resp_1}:pending", pendingKey("t", "resp_1"))
}

// item builds a replay item whose Raw has exactly n bytes.
func item(typ, callID string, n int) ReplayItem {
	raw := fmt.Sprintf(`{"type":%q,"call_id":%q,"p":"`, typ, callID)
	if pad := n - len(raw) - 2; pad > 0 {
		raw += strings.Repeat("a", pad)
	}
	raw += `"}`
	return ReplayItem{Raw: []byte(raw), Type: typ, CallID: callID}
}

func TestTrimPoint(t *testing.T) {
	msg := func(n int) ReplayItem { return item("message", "", n) }
	call := func(id string, n int) ReplayItem { return item("function_call", id, n) }
	out := func(id string, n int) ReplayItem { return item("function_call_output", id, n) }
	rs := func(n int) ReplayItem { return item("reasoning", "", n) }
	total := func(items []ReplayItem) int {
		n := 0
		for _, it := range items {
			n += len(it.Raw)
		}
		return n
	}
	for _, tc := range []struct {
		name  string
		items []ReplayItem
		cap   int
		want  int
	}{
		{"under cap", []ReplayItem{msg(100), msg(100)}, 1000, 0},
		{"plain messages cut to three quarters", []ReplayItem{msg(100), msg(100), msg(100), msg(100), msg(100)}, 400, 2},
		{"call stays with its output", []ReplayItem{call("a", 100), msg(100), out("a", 100), msg(100), msg(100)}, 400, 3},
		{"reasoning stays with its item", []ReplayItem{rs(100), call("a", 100), out("a", 100), msg(100), msg(100)}, 400, 3},
		{"parallel calls are one unit", []ReplayItem{call("a", 60), call("b", 60), out("b", 60), out("a", 60), msg(100), msg(100)}, 300, 4},
		{"orphan output may go", []ReplayItem{out("z", 100), msg(100), msg(100), msg(100), msg(100)}, 400, 2},
		{"unanswered call blocks every cut", []ReplayItem{call("a", 300), msg(300), msg(300)}, 400, 0},
		{"no cut reaches the target: largest valid", []ReplayItem{msg(100), msg(100), call("a", 400), msg(100)}, 400, 2},
		{"first under cap beats emptying", []ReplayItem{msg(100), msg(390)}, 400, 1},
		{"one item over the cap empties", []ReplayItem{msg(300), msg(500)}, 400, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cut, cutBytes := trimPoint(tc.items, total(tc.items), tc.cap)
			assert.Equal(t, tc.want, cut)
			assert.Equal(t, total(tc.items[:cut]), cutBytes)
		})
	}
}

func TestLocalOnly(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	s := newLocal(t, WithRegisterer(reg))
	assert.Equal(t, "local", s.Backend())
	ten := TenantOf("k")
	sc := Scope{Tenant: ten, Session: "s1"}

	_, r := s.Pending(ctx, ten, "resp_1")
	assert.Equal(t, Miss, r, "local-only: absent means miss, never unknown")
	_, r = s.Anchor(ctx, sc)
	assert.Equal(t, Miss, r)

	require.NoError(t, s.Commit(ctx, Batch{
		Scope:                sc,
		PutPending:           &PendingPut{ResponseID: "resp_1", Calls: []Call{{ID: "call_1", Kind: "function_call"}}},
		Anchor:               strp("resp_1"),
		ReplayReset:          true,
		ReplayAppend:         []ReplayItem{item("message", "", 10), item("function_call", "call_1", 10)},
		ReplayLastResponseID: "resp_1",
	}))
	calls, r := s.Pending(ctx, ten, "resp_1")
	assert.Equal(t, Hit, r)
	assert.Equal(t, []Call{{ID: "call_1", Kind: "function_call"}}, calls)
	a, r := s.Anchor(ctx, sc)
	assert.Equal(t, Hit, r)
	assert.Equal(t, "resp_1", a)
	tr, r := s.Replay(ctx, sc)
	assert.Equal(t, Hit, r)
	assert.Len(t, tr.Items, 2)
	assert.Equal(t, "resp_1", tr.LastResponseID)

	// The next turn answers the call and clears nothing else.
	require.NoError(t, s.Commit(ctx, Batch{
		Scope: sc, DeletePending: []string{"resp_1"},
		PutPending:           &PendingPut{ResponseID: "resp_2"},
		Anchor:               strp("resp_2"),
		ReplayAppend:         []ReplayItem{item("function_call_output", "call_1", 10), item("message", "", 10)},
		ReplayLastResponseID: "resp_2",
	}))
	_, r = s.Pending(ctx, ten, "resp_1")
	assert.Equal(t, Miss, r)
	calls, r = s.Pending(ctx, ten, "resp_2")
	assert.Equal(t, Hit, r, "an empty pending list is known, not a miss")
	assert.Empty(t, calls)
	tr2, _ := s.Replay(ctx, sc)
	assert.Len(t, tr2.Items, 4)
	assert.Len(t, tr.Items, 2, "an earlier transcript is not changed by later appends")

	// Clearing the anchor.
	require.NoError(t, s.Commit(ctx, Batch{Scope: sc, Anchor: strp("")}))
	_, r = s.Anchor(ctx, sc)
	assert.Equal(t, Miss, r)

	assert.Equal(t, 3.0, testutil.ToFloat64(s.metrics.commits[commitLocalOnly]))
	assert.Equal(t, 2.0, gathered(t, reg, "chainmend_store_lookups_total", "kind", "pending", "tier", "local", "result", "hit"))
	assert.Equal(t, 0.0, gathered(t, reg, "chainmend_store_lookups_total", "tier", "redis"))
}

func TestCommitCopiesCallerBuffers(t *testing.T) {
	ctx := context.Background()
	s := newLocal(t)
	sc := Scope{Tenant: "t", Session: "s"}
	raw := []byte(`{"type":"message"}`)
	require.NoError(t, s.Commit(ctx, Batch{Scope: sc, ReplayReset: true, ReplayAppend: []ReplayItem{{Raw: raw, Type: "message"}}}))
	copy(raw, "XXXXXXXXXXXXXXXXXX")
	tr, _ := s.Replay(ctx, sc)
	assert.Equal(t, `{"type":"message"}`, string(tr.Items[0].Raw))
}

func TestLocalTTLAndBounds(t *testing.T) {
	ctx := context.Background()
	t.Run("ttl", func(t *testing.T) {
		s := newLocal(t, WithTTL(KindPending, 50*time.Millisecond))
		require.NoError(t, s.Commit(ctx, Batch{Scope: Scope{Tenant: "t"}, PutPending: &PendingPut{ResponseID: "r"}}))
		_, r := s.Pending(ctx, "t", "r")
		assert.Equal(t, Hit, r)
		time.Sleep(80 * time.Millisecond)
		_, r = s.Pending(ctx, "t", "r")
		assert.Equal(t, Miss, r)
	})
	t.Run("per-put ttl", func(t *testing.T) {
		s := newLocal(t)
		require.NoError(t, s.Commit(ctx, Batch{Scope: Scope{Tenant: "t"}, PutPending: &PendingPut{ResponseID: "r", TTL: 30 * time.Millisecond}}))
		time.Sleep(60 * time.Millisecond)
		_, r := s.Pending(ctx, "t", "r")
		assert.Equal(t, Miss, r)
	})
	t.Run("entries", func(t *testing.T) {
		s := newLocal(t, WithLocalEntries(10))
		for i := 0; i < 50; i++ {
			require.NoError(t, s.Commit(ctx, Batch{Scope: Scope{Tenant: "t"}, PutPending: &PendingPut{ResponseID: fmt.Sprint(i)}}))
		}
		assert.Equal(t, 10, s.local.len())
		_, r := s.Pending(ctx, "t", "49")
		assert.Equal(t, Hit, r)
	})
	t.Run("bytes", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		s := newLocal(t, WithLocalBytes(64<<10), WithReplayCap(1<<20), WithRegisterer(reg))
		for i := 0; i < 40; i++ {
			require.NoError(t, s.Commit(ctx, Batch{Scope: Scope{Tenant: "t", Session: fmt.Sprint(i)}, ReplayReset: true,
				ReplayAppend: []ReplayItem{item("message", "", 4000)}}))
		}
		assert.LessOrEqual(t, s.local.nBytes.Load(), int64(64<<10))
		assert.Positive(t, s.local.len())
		assert.Less(t, s.local.len(), 40)
		assert.Equal(t, float64(s.local.nBytes.Load()), gathered(t, reg, "chainmend_store_local_bytes"))
		assert.Equal(t, float64(s.local.len()), gathered(t, reg, "chainmend_store_local_entries"))
	})
}

func TestReplayCapLocal(t *testing.T) {
	ctx := context.Background()
	s := newLocal(t, WithReplayCap(1000))
	sc := Scope{Tenant: "t", Session: "s"}
	require.NoError(t, s.Commit(ctx, Batch{Scope: sc, ReplayReset: true, ReplayAppend: []ReplayItem{item("message", "", 200)}}))
	for i := 0; i < 10; i++ {
		id := fmt.Sprintf("call_%d", i)
		require.NoError(t, s.Commit(ctx, Batch{Scope: sc, ReplayAppend: []ReplayItem{
			item("reasoning", "", 50), item("function_call", id, 100), item("function_call_output", id, 100),
		}}))
	}
	tr, r := s.Replay(ctx, sc)
	require.Equal(t, Hit, r)
	assert.True(t, tr.Trimmed)
	assert.LessOrEqual(t, tr.Bytes, 1000)
	assertWholeUnits(t, tr)
}

// assertWholeUnits checks that a transcript is valid on its own: every call
// answered, every output with its call, no reasoning at the end of a unit.
func assertWholeUnits(t *testing.T, tr Transcript) {
	t.Helper()
	calls := map[string]bool{}
	for i, it := range tr.Items {
		switch classOf(it.Type) {
		case classCall:
			calls[it.CallID] = true
		case classOutput:
			assert.True(t, calls[it.CallID], "output %s without its call", it.CallID)
			delete(calls, it.CallID)
		case classReasoning:
			assert.Less(t, i+1, len(tr.Items), "reasoning without its item")
		}
	}
	assert.Empty(t, calls, "calls without output")
	require.NotEmpty(t, tr.Items)
	assert.NotEqual(t, "function_call_output", tr.Items[0].Type, "a cut never leaves an output first")
	sum := 0
	for _, it := range tr.Items {
		sum += len(it.Raw)
	}
	assert.Equal(t, sum, tr.Bytes)
}

func TestCommitValidation(t *testing.T) {
	s := newLocal(t)
	ctx := context.Background()
	assert.Error(t, s.Commit(ctx, Batch{PutPending: &PendingPut{ResponseID: "r"}}))
	assert.Error(t, s.Commit(ctx, Batch{Scope: Scope{Tenant: "t"}, PutPending: &PendingPut{}}))
	assert.Error(t, s.Commit(ctx, Batch{Scope: Scope{Tenant: "t"}, Anchor: strp("r")}))
	require.NoError(t, s.Close())
	assert.ErrorIs(t, s.Commit(ctx, Batch{Scope: Scope{Tenant: "t"}}), ErrClosed)
}

func TestRedisURLs(t *testing.T) {
	for _, tc := range []struct {
		url     string
		backend string
		implied bool     // one node: the server decides
		addrs   []string // the nodes, in order
		wantErr string   // a part of the error; "" for none
	}{
		{url: "redis://127.0.0.1:1", backend: backendStandalone, implied: true, addrs: []string{"127.0.0.1:1"}},
		{url: "127.0.0.1:1", backend: backendStandalone, implied: true, addrs: []string{"127.0.0.1:1"}},
		{url: "redis://", backend: backendStandalone, implied: true, addrs: []string{"localhost:6379"}},
		{url: "rediss://user:pw@127.0.0.1:1/2", backend: backendStandalone, implied: true, addrs: []string{"127.0.0.1:1"}},
		{url: "redis://u:a,b@127.0.0.1:1", backend: backendStandalone, implied: true, addrs: []string{"127.0.0.1:1"}},
		{url: "redis://127.0.0.1:1?client_name=a,b", backend: backendStandalone, implied: true, addrs: []string{"127.0.0.1:1"}},
		{url: "unix:///run/redis.sock", backend: backendStandalone, implied: true, addrs: []string{"/run/redis.sock"}},
		{url: "redis+cluster://127.0.0.1:1?addr=127.0.0.1:2", backend: backendCluster, addrs: []string{"127.0.0.1:1", "127.0.0.1:2"}},
		{url: "rediss+cluster://u:pw@127.0.0.1:1", backend: backendCluster, addrs: []string{"127.0.0.1:1"}},
		{url: "redis+cluster://127.0.0.1:1/0", backend: backendCluster, addrs: []string{"127.0.0.1:1"}},
		{url: "redis+cluster://127.0.0.1:1?db=0", backend: backendCluster, addrs: []string{"127.0.0.1:1"}},
		{url: "redis://127.0.0.1:1?addr=127.0.0.1:2&addr=127.0.0.1:3", backend: backendCluster,
			addrs: []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}},
		{url: "127.0.0.1:1, 127.0.0.1:2,127.0.0.1:3", backend: backendCluster,
			addrs: []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}},
		{url: "redis://:pw@127.0.0.1:1,redis://:pw@127.0.0.1:2", backend: backendCluster, addrs: []string{"127.0.0.1:1", "127.0.0.1:2"}},
		{url: "redis://:pw@127.0.0.1:1,127.0.0.1:2", backend: backendCluster, addrs: []string{"127.0.0.1:1", "127.0.0.1:2"}},
		{url: "redis://:pw@h1:1,h2,h3:3/0?pool_size=4", backend: backendCluster, addrs: []string{"h1:1", "h2:6379", "h3:3"}},
		{url: "redis://127.0.0.1:1?master_name=m&addr=127.0.0.1:2", backend: backendSentinel, addrs: []string{"127.0.0.1:1", "127.0.0.1:2"}},
		{url: "redis+sentinel://127.0.0.1:1?master_name=m", backend: backendSentinel, addrs: []string{"127.0.0.1:1"}},
		{url: "redis+sentinel://127.0.0.1:1,127.0.0.1:2?master_name=m", backend: backendSentinel, addrs: []string{"127.0.0.1:1", "127.0.0.1:2"}},
		{url: "redis+sentinel://127.0.0.1:1", wantErr: "master_name"},
		{url: "redis+cluster://127.0.0.1:1/2", wantErr: "only database 0"},
		{url: "redis://127.0.0.1:1,127.0.0.1:2?db=3", wantErr: "only database 0"},
		{url: "redis://:supersecret@127.0.0.1:1,redis://:other@127.0.0.1:2", wantErr: "share scheme, credentials"},
		{url: "redis://127.0.0.1:1,rediss://127.0.0.1:2", wantErr: "share scheme, credentials"},
		{url: "redis+shard://127.0.0.1:1", wantErr: "unknown redis URL scheme"},
		{url: "http://127.0.0.1", wantErr: "unknown redis URL scheme"},
		{url: "redis://u:supersecret@127.0.0.1:1/notadb", wantErr: "database number"},
		{url: "redis://u:supersecret@[::1", wantErr: "invalid redis URL"},
		{url: "redis://u:supersecret@127.0.0.1:1?frobnicate=1", wantErr: "unexpected option"},
		{url: "redis://u:supersecret@h1:1,h2:x", wantErr: "invalid"},
		{url: "  ", wantErr: "empty redis URL"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			tg, err := parseTarget(tc.url)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				assert.NotContains(t, err.Error(), "supersecret", "errors never carry the password")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.backend, tg.backend)
			assert.Equal(t, tc.implied, tg.implied)
			assert.Equal(t, tc.addrs, tg.addrs)
			switch tg.backend {
			case backendCluster:
				assert.Equal(t, tc.addrs, tg.cluster.Addrs, "every node is a seed")
			case backendSentinel:
				assert.Equal(t, tc.addrs, tg.failover.SentinelAddrs)
				assert.Equal(t, "m", tg.failover.MasterName)
			}
		})
	}
	// A one-node URL keeps what it would take to reach a Cluster behind it.
	tg, err := parseTarget("rediss://u:pw@127.0.0.1:1?pool_size=3")
	require.NoError(t, err)
	require.NotNil(t, tg.cluster)
	assert.Equal(t, []string{"127.0.0.1:1"}, tg.cluster.Addrs)
	assert.Equal(t, "pw", tg.cluster.Password)
	assert.Equal(t, 3, tg.cluster.PoolSize)
	assert.NotNil(t, tg.cluster.TLSConfig)
	for _, u := range []string{"redis://127.0.0.1:1/2", "unix:///run/redis.sock"} {
		tg, err = parseTarget(u)
		require.NoError(t, err)
		assert.Error(t, tg.clusterErr, "%s cannot be a Cluster seed", u)
	}
}

// TestDecide: what the store makes of each answer a server can give, for each URL form.
func TestDecide(t *testing.T) {
	master := nodeInfo{mode: "standalone", role: "master"}
	replica := nodeInfo{mode: "standalone", role: "slave", master: "10.0.0.1:6379"}
	cluster := nodeInfo{mode: "cluster", role: "master"}
	sentinel := nodeInfo{mode: "sentinel", masters: []string{"mymaster"}}
	for _, tc := range []struct {
		name    string
		url     string
		info    nodeInfo
		backend string // the client chosen; "" when refused
		want    string // a part of the refusal, or of the note
	}{
		{"standalone master", "redis://h:1", master, backendStandalone, ""},
		{"unknown mode", "redis://h:1", nodeInfo{}, backendStandalone, ""},
		{"one node of a cluster", "redis://h:1", cluster, backendCluster, "redis+cluster://h:1 says so"},
		{"one node of a cluster, TLS", "rediss://h:1", cluster, backendCluster, "rediss+cluster://h:1"},
		{"cluster node with a database", "redis://h:1/3", cluster, "", "only database 0"},
		{"cluster node over a socket", "unix:///s.sock", cluster, "", "over TCP"},
		{"replica", "redis://:pw@h:1", replica, "", "read-only replica of 10.0.0.1:6379: point the URL at the master (redis://10.0.0.1:6379)"},
		{"sentinel behind redis://", "redis://h:26379", sentinel, "", "Sentinel, not a data node: write redis+sentinel://h:1?master_name=mymaster"},
		{"cluster URL on a cluster", "redis+cluster://h:1", cluster, backendCluster, ""},
		{"addr= form on a standalone server", "redis://h:1?addr=h:2", master, "", "for one server write redis://h:1"},
		{"node list on a sentinel", "h:1,h:2", sentinel, "", "redis+sentinel://h:1?master_name=mymaster"},
		{"sentinel URL on a sentinel", "redis+sentinel://h:1?master_name=mymaster", sentinel, backendSentinel, ""},
		{"unknown master name", "redis+sentinel://h:1?master_name=other", sentinel, "", `no master named "other" (it monitors: mymaster)`},
		{"sentinel URL on a server", "redis+sentinel://h:1?master_name=m", master, "", "not a Sentinel: for the server itself write redis://h:1"},
		{"sentinel URL on a cluster", "redis+sentinel://h:1?master_name=m", cluster, "", "write redis+cluster://h:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg, err := parseTarget(tc.url)
			require.NoError(t, err)
			v := tg.decide("h:1", tc.info)
			if v.conn != nil {
				defer v.conn.close()
			}
			if tc.backend == "" {
				require.Nil(t, v.conn)
				assert.True(t, v.refuse)
				assert.ErrorIs(t, v.err, ErrRedisURL)
				assert.Contains(t, v.err.Error(), tc.want)
				assert.NotContains(t, v.err.Error(), "pw")
				return
			}
			require.NotNil(t, v.conn, "%v", v.err)
			assert.Equal(t, tc.backend, v.conn.backend)
			assert.Equal(t, tc.backend == backendCluster, v.conn.sharded)
			assert.Contains(t, v.note, tc.want)
		})
	}
}

func TestParseInfo(t *testing.T) {
	for _, tc := range []struct {
		name string
		info string
		want nodeInfo
	}{
		{"master", "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n",
			nodeInfo{mode: "standalone", role: "master"}},
		{"replica", "redis_mode:standalone\r\nrole:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6380\r\nmaster_link_status:up\r\n",
			nodeInfo{mode: "standalone", role: "slave", master: "10.0.0.1:6380"}},
		{"cluster", "redis_mode:cluster\r\nrole:master\r\n# Cluster\r\ncluster_enabled:1\r\n", nodeInfo{mode: "cluster", role: "master"}},
		{"old cluster", "role:master\r\ncluster_enabled:1\r\n", nodeInfo{mode: "cluster", role: "master"}},
		{"sentinel", "redis_mode:sentinel\r\n# Sentinel\r\nsentinel_masters:2\r\n" +
			"master0:name=a,status=ok,address=127.0.0.1:1,slaves=1,sentinels=1\r\nmaster1:name=b,status=odown,address=127.0.0.1:2,slaves=0,sentinels=1\r\n",
			nodeInfo{mode: "sentinel", masters: []string{"a", "b"}}},
	} {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, parseInfo(tc.info)) })
	}
}

func TestMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	newLocal(t, WithRegisterer(reg))
	_, err := New(WithRegisterer(reg), WithLogger(quiet))
	require.Error(t, err)
	var are prometheus.AlreadyRegisteredError
	assert.True(t, errors.As(err, &are))

	// A failed New leaves the registerer as it was.
	reg2 := prometheus.NewRegistry()
	squatter := prometheus.NewGauge(prometheus.GaugeOpts{Name: "chainmend_store_local_bytes", Help: "Approximate bytes held by the local tier."})
	require.NoError(t, reg2.Register(squatter))
	_, err = New(WithRegisterer(reg2), WithLogger(quiet))
	require.Error(t, err)
	reg2.Unregister(squatter)
	newLocal(t, WithRegisterer(reg2))
}

// gathered sums the samples of a metric family whose labels match the given
// name/value pairs, read from the registry like a scrape would.
func gathered(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// TenantOf stands in for the gateway's tenant hash in the store's tests: any fixed-length
// id works, and a hash keeps test names out of Redis keys.
func TenantOf(cred string) string {
	sum := sha256.Sum256([]byte(cred))
	return hex.EncodeToString(sum[:16])
}
