package gateway_test

// Helpers of the end-to-end suite (issue 4, SPEC §5, §9): a real emulator, the real gateway
// Handler behind httptest, real WebSocket and HTTP clients.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
	"chainmend/engine"
	"chainmend/gateway"
	"chainmend/internal/e2etest"
	"chainmend/statestore"
)

// testSecret is the client credential of every test; it must never reach a log line.
const testSecret = "sk-test-secret-e2e-7f3a9c"

// clientTimeout bounds every client read: a turn that does not end in time fails the test
// instead of hanging it.
const clientTimeout = 10 * time.Second

// ---- Coverage of the default policy's reasons (SPEC §5.1, §5.2), checked in TestMain.

var (
	coverageMu sync.Mutex
	coverage   = map[string]float64{}
)

// specReasons are the reasons of every row of SPEC §5.1 and §5.2; the suite must make each
// fire through the running gateway at least once.
var specReasons = []string{
	// §5.1
	"prev_not_response_id", "input_edited", "anchor_reset", "pending_prev_infer", "pending_prev_align",
	"aborted_injected", "function_call_output_prev_infer", "function_call_output_prev_align",
	"aborted_injected_inline", "orphan_output_removed", "has_function_call_output",
	"function_call_output_call_id_match", "missing_last_turn_response_id", "previous_response_id_mismatch",
	"missing_previous_turn_payload", "non_input_changed", "strict_incremental_ok", "fresh_connection_replay",
	"proactive_tool_output_reject",
	// §5.2
	"tool_output_not_found_drop_prev_replay", "set_previous_response_id_retry", "align_previous_response_id_retry",
	"drop_previous_response_id_full_replay", "abort_no_replay", "transport_retry", "upstream_error_forwarded",
	// §5.3, the bookkeeping
	"pending_recorded", "pending_answered", "anchor_advanced", "anchor_cleared", "transcript_reset",
	"transcript_appended", "transcript_gap_cleared", "upstream_cached", "upstream_cache_cleared",
	// §10
	"duplicate_item_full_create", "duplicate_item_replay", "anchor_steered", "interrupt_calls_pending",
	"upstream_cache_evicted", "upstream_timeout",
}

// unreachableReasons cannot fire through a running gateway with the default policies, only
// in policytests: function_call_output_call_id_mismatch needs outputs that do not answer
// the pending calls of the anchor, and rows 5, 7 and 9 have repaired (or, strict, rejected)
// exactly that before row 10 runs; with the anchor unknown has_function_call_output wins.
var unreachableReasons = []string{"function_call_output_call_id_mismatch"}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	full := flag.Lookup("test.run").Value.String() == "" && flag.Lookup("test.skip").Value.String() == "" &&
		!testing.Short()
	if code == 0 && full {
		var missing []string
		for _, r := range specReasons {
			if coverage[r] == 0 {
				missing = append(missing, r)
			}
		}
		if len(missing) > 0 {
			fmt.Fprintf(os.Stderr, "e2e coverage: no test made these SPEC §5/§10 reasons fire through the gateway: %s\n",
				strings.Join(missing, ", "))
			code = 1
		}
		for _, r := range unreachableReasons {
			if coverage[r] > 0 {
				fmt.Fprintf(os.Stderr, "e2e coverage: %s fired; move it from unreachableReasons to specReasons\n", r)
			}
		}
	}
	os.Exit(code)
}

// ---- The stack: emulator + gateway.

// testStore is the real local store with a switch that makes pending lookups answer
// Unknown, as a Redis outage would (SPEC R3: "outputs present but pending unknown").
type testStore struct {
	statestore.Store
	pendingDown atomic.Bool

	mu      sync.Mutex
	batches []statestore.Batch
}

// Conversation passes the conversation index through (issue 17).
func (s *testStore) Conversation(ctx context.Context, tenant, responseID string) (statestore.Scope, statestore.Result) {
	return s.Store.(statestore.ConversationFinder).Conversation(ctx, tenant, responseID)
}

// Prefetch passes the store's one-round-trip read through, so the tests take the path the
// gateway takes with the real store.
func (s *testStore) Prefetch(ctx context.Context, scope statestore.Scope, responseIDs ...string) {
	s.Store.(statestore.Prefetcher).Prefetch(ctx, scope, responseIDs...)
}

// Commit records each batch before the real store writes it.
func (s *testStore) Commit(ctx context.Context, b statestore.Batch) error {
	s.mu.Lock()
	s.batches = append(s.batches, b)
	s.mu.Unlock()
	return s.Store.Commit(ctx, b)
}

// lastBatch is the latest batch committed.
func (s *testStore) lastBatch() statestore.Batch {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.batches) == 0 {
		return statestore.Batch{}
	}
	return s.batches[len(s.batches)-1]
}

func (s *testStore) Pending(ctx context.Context, tenant, id string) ([]statestore.Call, statestore.Result) {
	if s.pendingDown.Load() {
		return nil, statestore.Unknown
	}
	return s.Store.Pending(ctx, tenant, id)
}

type stack struct {
	t       *testing.T
	emu     *emulator.Emulator
	srv     *gateway.Server
	reg     *prometheus.Registry
	store   *testStore
	logs    *e2etest.SyncBuffer
	hs      *httptest.Server
	wsURL   string
	httpURL string
}

type stackOpts struct {
	cfg     gateway.Config
	emuOpts []emulator.Option
	// front, when set, stands between the gateway and the emulator: it gets the emulator's
	// URL and returns the one the gateway uses.
	front func(emuURL string) string
	// srvOpts are more options of the gateway's (e2e_options_test.go).
	srvOpts []gateway.Option
}

// withFront puts an HTTP server of the test's between the gateway and the emulator.
func withFront(fn func(emuURL string) string) stackOpt { return func(o *stackOpts) { o.front = fn } }

type stackOpt func(*stackOpts)

func withConfig(fn func(*gateway.Config)) stackOpt { return func(o *stackOpts) { fn(&o.cfg) } }

func withMode(mode string) stackOpt { return withConfig(func(c *gateway.Config) { c.Mode = mode }) }

func withEmulator(opts ...emulator.Option) stackOpt {
	return func(o *stackOpts) { o.emuOpts = append(o.emuOpts, opts...) }
}

// newStack starts an emulator answering from script and the gateway in front of it, with the
// default policies, the local store, small timeouts, a debug logger into a buffer and its own
// registry. Cleanup checks that the credential never reached the logs and records which
// reasons fired.
func newStack(t *testing.T, script emulator.Script, opts ...stackOpt) *stack {
	t.Helper()
	o := stackOpts{cfg: gateway.DefaultConfig()}
	o.cfg.Policies = "../policies"
	o.cfg.Mode = engine.ModeRepair
	o.cfg.DialTimeout = 2 * time.Second
	o.cfg.FirstEventTimeout = 5 * time.Second
	o.cfg.IdleTimeout = 5 * time.Second
	o.cfg.WriteTimeout = 2 * time.Second
	for _, fn := range opts {
		fn(&o)
	}
	emu := emulator.StartTest(t, append([]emulator.Option{emulator.WithScript(script)}, o.emuOpts...)...)
	o.cfg.Upstream = emu.URL()
	if o.front != nil {
		o.cfg.Upstream = o.front(emu.URL())
	}

	logs := &e2etest.SyncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	inner, err := statestore.New(statestore.WithRegisterer(reg), statestore.WithLogger(logger))
	require.NoError(t, err)
	store := &testStore{Store: inner}
	srv, err := gateway.New(o.cfg, append([]gateway.Option{gateway.WithStore(store), gateway.WithLogger(logger), gateway.WithRegistry(reg)}, o.srvOpts...)...)
	require.NoError(t, err)
	_, err = gateway.NewReloader(srv).Reload()
	require.NoError(t, err)
	hs := httptest.NewServer(srv.Handler())
	s := &stack{
		t: t, emu: emu, srv: srv, reg: reg, store: store, logs: logs, hs: hs,
		wsURL:   "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/responses",
		httpURL: hs.URL + "/v1/responses",
	}
	t.Cleanup(func() {
		_ = srv.Close()
		hs.Close()
		fired := sumBy(t, s.reg, "chainmend_rule_fired_total", "reason")
		coverageMu.Lock()
		for r, v := range fired {
			coverage[r] += v
		}
		coverageMu.Unlock()
		out := logs.String()
		assert.NotContains(t, out, testSecret, "the client's credential reached the logs")
		assert.NotContains(t, out, "sk-test-secret", "part of the client's credential reached the logs")
	})
	return s
}

// with returns the stack bound to a subtest, so that its helpers fail the subtest.
func (s *stack) with(t *testing.T) *stack {
	c := *s
	c.t = t
	return &c
}

// fired sums chainmend_rule_fired_total of the normalizer and the recovery by reason; the
// post_response bookkeeping fires on every response and is asserted on its own (booked).
func (s *stack) fired() map[string]float64 {
	s.t.Helper()
	all := sumBy(s.t, s.reg, "chainmend_rule_fired_total", "reason")
	for r, v := range s.booked() {
		if all[r] -= v; all[r] == 0 {
			delete(all, r)
		}
	}
	return all
}

// booked sums the post_response rules that fired, by reason.
func (s *stack) booked() map[string]float64 {
	s.t.Helper()
	return sumBy(s.t, s.reg, "chainmend_rule_fired_total", "reason", "stage", engine.StagePostResponse)
}

// counter sums a counter family over the series whose labels match.
func (s *stack) counter(name string, labels map[string]string) float64 {
	s.t.Helper()
	mfs, err := s.reg.Gather()
	require.NoError(s.t, err)
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// counterReaches waits until a counter reaches want: the gateway counts a turn after its
// last frame went to the client.
func (s *stack) counterReaches(name string, labels map[string]string, want float64) {
	s.t.Helper()
	eventually(s.t, fmt.Sprintf("%s%v to reach %v", name, labels, want), func() bool { return s.counter(name, labels) >= want })
	assert.Equal(s.t, want, s.counter(name, labels), "%s%v", name, labels)
}

// sumBy sums a counter family by one label, over the series that carry every label pair of
// where.
func sumBy(t *testing.T, reg *prometheus.Registry, name, label string, where ...string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(where); i += 2 {
				if !hasLabel(m, where[i], where[i+1]) {
					continue series
				}
			}
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label {
					out[lp.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name && lp.GetValue() == value {
			return true
		}
	}
	return false
}

// firedSince lists the reasons that fired since before, sorted.
func (s *stack) firedSince(before map[string]float64) []string {
	s.t.Helper()
	var out []string
	for r, v := range s.fired() {
		if v > before[r] {
			out = append(out, r)
		}
	}
	sort.Strings(out)
	return out
}

// requireFired asserts that each reason fired since before, and that none of the reasons
// in not did.
func (s *stack) requireFired(before map[string]float64, reasons []string, not ...string) {
	s.t.Helper()
	got := s.firedSince(before)
	for _, r := range reasons {
		assert.Contains(s.t, got, r, "reason %s should have fired; fired: %v", r, got)
	}
	for _, r := range not {
		assert.NotContains(s.t, got, r, "reason %s should not have fired; fired: %v", r, got)
	}
}

// ---- Upstream records.

// creates returns the creates the emulator received.
func (s *stack) creates() []emulator.Create { return s.emu.Creates() }

// lastCreate returns the emulator's last create.
func (s *stack) lastCreate() emulator.Create {
	s.t.Helper()
	cs := s.emu.Creates()
	require.NotEmpty(s.t, cs, "the emulator received no create")
	return cs[len(cs)-1]
}

// frameOf decodes a create frame.
func frameOf(t *testing.T, frame []byte) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(frame, &m), "%s", frame)
	return m
}

// summary renders the input items of a frame compactly (e2etest.Summary: "msg:user",
// "rs", "fc:call_A", "fco:call_A=aborted", …); a frame that is not JSON fails the test here
// rather than as a puzzling difference in a list.
func summary(t *testing.T, frame []byte) []string {
	t.Helper()
	frameOf(t, frame)
	return e2etest.Summary(frame)
}

// sameJSON asserts two JSON documents are equal as values (key order and whitespace aside).
func sameJSON(t *testing.T, want, got []byte, msgAndArgs ...any) {
	t.Helper()
	var w, g any
	require.NoError(t, json.Unmarshal(want, &w))
	require.NoError(t, json.Unmarshal(got, &g))
	assert.Equal(t, w, g, msgAndArgs...)
}

// ---- Frames a client sends.

type obj = map[string]any

func user(text string) obj {
	return obj{"type": "message", "role": "user", "content": []obj{{"type": "input_text", "text": text}}}
}

func fco(callID, output string) obj {
	return obj{"type": "function_call_output", "call_id": callID, "output": output}
}

func fcall(callID, name, args string) obj {
	return obj{"type": "function_call", "call_id": callID, "name": name, "arguments": args}
}

// create builds a response.create (model gpt-5, store:false unless fields say otherwise);
// a nil value in fields removes the key; "prev" is short for previous_response_id.
func create(fields obj, items ...obj) string {
	m := obj{"type": "response.create", "model": "gpt-5", "store": false, "stream": true}
	if items == nil {
		items = []obj{}
	}
	m["input"] = items
	for k, v := range fields {
		if k == "prev" {
			k = "previous_response_id"
		}
		if v == nil {
			delete(m, k)
			continue
		}
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// chained is create({"prev": prev}, items...).
func chained(prev string, items ...obj) string { return create(obj{"prev": prev}, items...) }

// ---- The WebSocket client.

type wsClient struct {
	t *testing.T
	c *websocket.Conn
}

// event is the part of a server frame the tests look at.
type event struct {
	Type     string `json:"type"`
	Status   int    `json:"status"`
	StreamID string `json:"stream_id"`
	Response struct {
		ID     string            `json:"id"`
		Status string            `json:"status"`
		Output []json.RawMessage `json:"output"`
	} `json:"response"`
	Error struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
		Param   string `json:"param"`
	} `json:"error"`
	Item json.RawMessage `json:"item"`
	Raw  []byte          `json:"-"`
}

// callIDs returns the call ids of the function calls in a terminal event's output.
func (e event) callIDs() []string {
	var out []string
	for _, raw := range e.Response.Output {
		var it struct {
			Type   string `json:"type"`
			CallID string `json:"call_id"`
		}
		_ = json.Unmarshal(raw, &it)
		if it.Type == "function_call" {
			out = append(out, it.CallID)
		}
	}
	return out
}

func isTerminal(typ string) bool {
	switch typ {
	case "error", "response.completed", "response.failed", "response.incomplete", "response.done", "response.cancelled":
		return true
	}
	return false
}

// dial opens a client connection to the gateway as session, with the test credential.
func (s *stack) dial(session string) *wsClient {
	s.t.Helper()
	return s.dialHeader(http.Header{"Authorization": {"Bearer " + testSecret}, "Session-Id": {session}})
}

func (s *stack) dialHeader(h http.Header) *wsClient {
	s.t.Helper()
	return dialURL(s.t, s.wsURL, h)
}

func dialURL(t *testing.T, url string, h http.Header) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	require.NoError(t, err)
	c.SetReadLimit(64 << 20)
	t.Cleanup(func() { _ = c.CloseNow() })
	return &wsClient{t: t, c: c}
}

func (c *wsClient) send(frame string) {
	c.t.Helper()
	c.sendType(websocket.MessageText, []byte(frame))
}

func (c *wsClient) sendType(typ websocket.MessageType, data []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	require.NoError(c.t, c.c.Write(ctx, typ, data))
}

// next reads one frame.
func (c *wsClient) next() (event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	_, data, err := c.c.Read(ctx)
	if err != nil {
		return event{}, err
	}
	var e event
	if err := json.Unmarshal(data, &e); err != nil {
		return event{}, fmt.Errorf("frame is not JSON: %w: %s", err, data)
	}
	e.Raw = data
	return e, nil
}

// turnResult is everything a client saw of one turn.
type turnResult struct {
	events []event
	items  []json.RawMessage
	last   event
}

func (r turnResult) types() []string {
	out := make([]string, len(r.events))
	for i, e := range r.events {
		out[i] = e.Type
	}
	return out
}

// count returns how many frames of a type the turn had.
func (r turnResult) count(typ string) int {
	n := 0
	for _, e := range r.events {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// collect reads to the terminal event or an error frame.
func (c *wsClient) collect() turnResult {
	c.t.Helper()
	var r turnResult
	for {
		e, err := c.next()
		require.NoError(c.t, err, "after %v", r.types())
		r.events = append(r.events, e)
		if e.Type == "response.output_item.done" {
			r.items = append(r.items, e.Item)
		}
		if isTerminal(e.Type) {
			r.last = e
			return r
		}
	}
}

// turn sends a frame and reads the turn to its end.
func (c *wsClient) turn(frame string) turnResult {
	c.t.Helper()
	c.send(frame)
	return c.collect()
}

// ok runs a turn that must complete without any error frame, and returns its terminal event.
func (c *wsClient) ok(frame string) event {
	c.t.Helper()
	r := c.turn(frame)
	require.Equal(c.t, "response.completed", r.last.Type, "turn did not complete: %s", r.last.Raw)
	require.Zero(c.t, r.count("error"), "error frames: %v", r.types())
	return r.last
}

// fails runs a turn that must end in exactly one error frame with a top-level status and
// nothing else, and returns it.
func (c *wsClient) fails(frame string) event {
	c.t.Helper()
	r := c.turn(frame)
	return c.oneError(r)
}

func (c *wsClient) oneError(r turnResult) event {
	c.t.Helper()
	require.Equal(c.t, "error", r.last.Type, "expected an error frame, got %v", r.types())
	require.Equal(c.t, 1, r.count("error"))
	assert.NotZero(c.t, r.last.Status, "an error frame needs a top-level status: %s", r.last.Raw)
	assert.NotEmpty(c.t, r.last.Error.Message, "%s", r.last.Raw)
	return r.last
}

// ---- Scripts.

// callScript answers every generating create with a reasoning item and one function call
// (emulator-issued call ids).
func callScript() emulator.Script {
	return emulator.ScriptFunc(func(*emulator.Request) emulator.Turn {
		return emulator.CallTurn(emulator.FunctionCall("exec", `{"cmd":"true"}`))
	})
}

// ---- Codex captures (testdata/codex).

type capture struct {
	Frame      json.RawMessage `json:"frame"`
	ResponseID string          `json:"emulator_response_id"`
}

func loadCapture(t *testing.T, name string) capture {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "codex", "codex-0.169.0-"+name+".json"))
	require.NoError(t, err)
	var c capture
	require.NoError(t, json.Unmarshal(b, &c))
	require.NotEmpty(t, c.Frame)
	return c
}

// loadHeaders returns the captured request headers minus the handshake's own, with the
// Authorization value replaced by the test credential.
func loadHeaders(t *testing.T, name string) http.Header {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "codex", "codex-0.169.0-"+name+".json"))
	require.NoError(t, err)
	var v struct {
		Headers map[string]string `json:"headers"`
	}
	require.NoError(t, json.Unmarshal(b, &v))
	h := http.Header{}
	for k, val := range v.Headers {
		switch http.CanonicalHeaderKey(k) {
		case "Connection", "Upgrade", "Content-Length", "Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions":
			continue
		}
		h.Set(k, val)
	}
	h.Set("Authorization", "Bearer "+testSecret)
	return h
}

// codexScript answers the way the capture's emulator did.
func codexScript() emulator.Script {
	return emulator.Sequence(
		emulator.Turn{Output: []emulator.Output{
			emulator.Reason("Run the command."),
			emulator.FunctionCallID("call_codex_echo_1", "exec_command", `{"cmd":"echo acceptance-ok","yield_time_ms":1000}`),
		}},
		emulator.TextTurn("acceptance-ok"),
	)
}

// ---- HTTP/SSE.

type sseEvent struct {
	name string
	data []byte
}

// post sends a body to the gateway's POST /v1/responses.
func (s *stack) post(body string, session string) (*http.Response, []byte) {
	s.t.Helper()
	return s.postHeader([]byte(body), http.Header{"Authorization": {"Bearer " + testSecret}, "Session-Id": {session}})
}

func (s *stack) postHeader(body []byte, h http.Header) (*http.Response, []byte) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.httpURL, bytes.NewReader(body))
	require.NoError(s.t, err)
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(s.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(s.t, err)
	return resp, b
}

func parseSSE(t *testing.T, body []byte) []sseEvent {
	t.Helper()
	var out []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.name != "" || cur.data != nil {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "event:"):
			cur.name = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			cur.data = append(cur.data, strings.TrimSpace(strings.TrimPrefix(line, "data:"))...)
		}
	}
	require.NoError(t, sc.Err())
	if cur.name != "" || cur.data != nil {
		out = append(out, cur)
	}
	return out
}

// ---- Misc.

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitUpstreamClosed waits until the emulator ended its connection seq, and gives the
// gateway's upstream reader a moment to see it.
func (s *stack) waitUpstreamClosed(seq int) {
	s.t.Helper()
	eventually(s.t, fmt.Sprintf("upstream connection %d to be registered", seq), func() bool { return s.emu.Conn(seq) != nil })
	select {
	case <-s.emu.Conn(seq).Done():
	case <-time.After(5 * time.Second):
		s.t.Fatalf("upstream connection %d did not close", seq)
	}
	time.Sleep(100 * time.Millisecond)
}

func closeStatus(err error) websocket.StatusCode {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}
