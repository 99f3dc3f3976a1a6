package gateway

// Micro-benchmarks of the gateway's hot pieces (issue 7), each with its baseline in the same
// benchmark so that both see the same machine load:
//
//	go test -run '^$' -bench . -benchmem ./gateway/
//
// BenchmarkRelay       one streamed turn of many text deltas: through the gateway, through a
//                      raw WebSocket copy (the least a proxy can do), and direct.
// BenchmarkTurnWS      one chained 3 KB WebSocket turn end to end (client, gateway, emulator in
//                      this process): gateway vs raw copy vs direct; the difference in
//                      ns/op and allocs/op is what the gateway adds per turn.
// BenchmarkBuildTurn   the turn context build with the local store vs the three store reads
//                      it makes.

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"chainmend/emulator"
	"chainmend/responses"
	"chainmend/statestore"
)

// benchStack is an emulator, a gateway in front of it, and a raw copying proxy in front of
// it, all in this process.
type benchStack struct {
	emu *emulator.Emulator
	gw  *httptest.Server
	raw *httptest.Server
	srv *Server
	reg *prometheus.Registry
}

func newBenchStack(b *testing.B, opts ...emulator.Option) *benchStack {
	b.Helper()
	emu := emulator.New(append([]emulator.Option{emulator.WithRecording(false)}, opts...)...)
	if err := emu.Listen("127.0.0.1:0"); err != nil {
		b.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Upstream = emu.URL() + "/v1"
	cfg.Policies = "../policies"
	reg := prometheus.NewRegistry()
	srv, err := New(cfg, WithLogger(slog.New(slog.DiscardHandler)), WithRegistry(reg))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := NewReloader(srv).Reload(); err != nil {
		b.Fatal(err)
	}
	st := &benchStack{emu: emu, srv: srv, reg: reg, gw: httptest.NewServer(srv.Handler()), raw: httptest.NewServer(rawProxy(emu.WebSocketURL()))}
	b.Cleanup(func() {
		st.gw.Close()
		st.raw.Close()
		_ = srv.Close()
		emu.Close()
	})
	return st
}

// rawProxy is the baseline: a WebSocket proxy that copies frames both ways and does nothing
// else (no parsing, no policies, no state).
func rawProxy(upstream string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			return
		}
		c.SetReadLimit(64 << 20)
		ctx := context.Background()
		u, _, err := websocket.Dial(ctx, upstream, &websocket.DialOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			_ = c.CloseNow()
			return
		}
		u.SetReadLimit(64 << 20)
		go func() {
			for {
				_, f, err := u.Read(ctx)
				if err != nil {
					_ = c.CloseNow()
					return
				}
				if c.Write(ctx, websocket.MessageText, f) != nil {
					return
				}
			}
		}()
		for {
			_, f, err := c.Read(ctx)
			if err != nil {
				_ = u.CloseNow()
				return
			}
			if u.Write(ctx, websocket.MessageText, f) != nil {
				return
			}
		}
	})
}

func wsURL(s *httptest.Server) string {
	return "ws" + strings.TrimPrefix(s.URL, "http") + "/v1/responses"
}

type benchClient struct {
	c    *websocket.Conn
	prev string
}

func dialBench(b *testing.B, url string) *benchClient {
	b.Helper()
	h := http.Header{}
	h.Set("Authorization", "Bearer sk-bench")
	h.Set("Session-Id", fmt.Sprintf("bench-%d", time.Now().UnixNano()))
	c, _, err := websocket.Dial(context.Background(), url, &websocket.DialOptions{HTTPHeader: h, CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		b.Fatal(err)
	}
	c.SetReadLimit(64 << 20)
	b.Cleanup(func() { _ = c.CloseNow() })
	return &benchClient{c: c}
}

// turn sends one create and reads to the terminal event; it returns the number of events.
func (bc *benchClient) turn(b *testing.B, frame []byte) int {
	ctx := context.Background()
	if err := bc.c.Write(ctx, websocket.MessageText, frame); err != nil {
		b.Fatal(err)
	}
	for n := 1; ; n++ {
		_, f, err := bc.c.Read(ctx)
		if err != nil {
			b.Fatal(err)
		}
		kind := responses.EventKind(f)
		if kind == responses.EventError {
			b.Fatalf("error frame: %s", f)
		}
		if responses.IsTerminal(kind) {
			ev, _ := responses.ParseEvent(f)
			bc.prev = ev.ResponseID
			return n
		}
	}
}

// BenchmarkRelay streams one turn of 2,000 text deltas per op; events/s is the relay
// throughput of one session (issue 7 target: ≥ 100,000 through the gateway).
func BenchmarkRelay(b *testing.B) {
	const deltas = 2000
	st := newBenchStack(b, emulator.WithScript(emulator.ScriptFunc(func(*emulator.Request) emulator.Turn {
		return emulator.Turn{Output: []emulator.Output{emulator.Say(strings.Repeat("tok ", deltas))}, TextDeltas: deltas}
	})))
	frame := []byte(`{"type":"response.create","model":"m","store":false,"input":[{"type":"message","role":"user","content":"stream"}]}`)
	for _, tc := range []struct{ name, url string }{
		{"gateway", wsURL(st.gw)}, {"raw_copy", wsURL(st.raw)}, {"direct", st.emu.WebSocketURL()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			bc := dialBench(b, tc.url)
			b.ReportAllocs()
			events := 0
			for b.Loop() {
				events += bc.turn(b, frame)
			}
			b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
		})
	}
	// The three interleaved turn by turn, so that they see the same machine load.
	b.Run("interleaved", func(b *testing.B) {
		cs := []*benchClient{dialBench(b, wsURL(st.gw)), dialBench(b, wsURL(st.raw)), dialBench(b, st.emu.WebSocketURL())}
		var t [3]time.Duration
		events := 0
		for b.Loop() {
			for i, bc := range cs {
				t0 := time.Now()
				n := bc.turn(b, frame)
				t[i] += time.Since(t0)
				if i == 0 {
					events += n
				}
			}
		}
		b.ReportMetric(float64(events)/t[0].Seconds(), "gateway-events/s")
		b.ReportMetric(float64(events)/t[1].Seconds(), "raw-events/s")
		b.ReportMetric(float64(events)/t[2].Seconds(), "direct-events/s")
		b.ReportMetric(float64(t[0])/float64(t[1]), "gateway/raw")
	})
}

// BenchmarkTurnWS is one ~3 KB chained turn, the common Codex turn: alternately a tool
// output (answered with reasoning and text) and a user message (answered with reasoning and
// a function call). Every 50 turns the chain restarts with a full create so the emulator's
// context stays small.
func BenchmarkTurnWS(b *testing.B) {
	st := newBenchStack(b, emulator.WithScript(emulator.ToolLoop("exec_command", `{"cmd":"ls"}`)))
	text := strings.Repeat("line of tool output ", 140)
	const tools = `"tools":[{"type":"function","name":"exec_command","parameters":{"type":"object","properties":{"cmd":{"type":"string"}}}}]`
	full := []byte(`{"type":"response.create","model":"gpt-5.5","store":false,` + tools + `,"input":[{"type":"message","role":"user","content":"run ls"}]}`)
	for _, tc := range []struct{ name, url string }{
		{"gateway", wsURL(st.gw)}, {"raw_copy", wsURL(st.raw)}, {"direct", st.emu.WebSocketURL()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			bc := dialBench(b, tc.url)
			i, call := 0, ""
			b.ReportAllocs()
			cpu0 := processCPU()
			defer func() { b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op") }()
			for b.Loop() {
				var frame []byte
				switch {
				case i%50 == 0:
					frame = full
				case i%2 == 1:
					frame = fmt.Appendf(nil, `{"type":"response.create","model":"gpt-5.5","store":false,"previous_response_id":%q,`+tools+
						`,"input":[{"type":"function_call_output","call_id":%q,"output":%q}]}`, bc.prev, call, text)
				default:
					frame = fmt.Appendf(nil, `{"type":"response.create","model":"gpt-5.5","store":false,"previous_response_id":%q,`+tools+
						`,"input":[{"type":"message","role":"user","content":"turn %d: %s"}]}`, bc.prev, i, text)
				}
				call = bc.turnCall(b, frame)
				i++
			}
		})
	}
	// The three interleaved turn by turn (each its own conversation), so that they see the
	// same machine load; per-turn times and the gateway's ratio to the raw copy.
	b.Run("interleaved", func(b *testing.B) {
		cs := []*benchClient{dialBench(b, wsURL(st.gw)), dialBench(b, wsURL(st.raw)), dialBench(b, st.emu.WebSocketURL())}
		var calls [3]string
		var t [3]time.Duration
		i := 0
		for b.Loop() {
			for k, bc := range cs {
				var frame []byte
				switch {
				case i%50 == 0:
					frame = full
				case i%2 == 1:
					frame = fmt.Appendf(nil, `{"type":"response.create","model":"gpt-5.5","store":false,"previous_response_id":%q,`+tools+
						`,"input":[{"type":"function_call_output","call_id":%q,"output":%q}]}`, bc.prev, calls[k], text)
				default:
					frame = fmt.Appendf(nil, `{"type":"response.create","model":"gpt-5.5","store":false,"previous_response_id":%q,`+tools+
						`,"input":[{"type":"message","role":"user","content":"turn %d: %s"}]}`, bc.prev, i, text)
				}
				t0 := time.Now()
				calls[k] = bc.turnCall(b, frame)
				t[k] += time.Since(t0)
			}
			i++
		}
		b.ReportMetric(float64(t[0].Nanoseconds())/float64(i), "gateway-ns/turn")
		b.ReportMetric(float64(t[1].Nanoseconds())/float64(i), "raw-ns/turn")
		b.ReportMetric(float64(t[2].Nanoseconds())/float64(i), "direct-ns/turn")
		b.ReportMetric(float64(t[0]-t[1])/float64(i), "added-over-raw-ns/turn")
		for stage, sec := range st.policySeconds(b) {
			b.ReportMetric(sec*1e9/float64(i), stage+"-ns/turn")
		}
	})
}

// turnCall runs a turn and returns the call id the response asks for.
func (bc *benchClient) turnCall(b *testing.B, frame []byte) string {
	ctx := context.Background()
	if err := bc.c.Write(ctx, websocket.MessageText, frame); err != nil {
		b.Fatal(err)
	}
	for {
		_, f, err := bc.c.Read(ctx)
		if err != nil {
			b.Fatal(err)
		}
		kind := responses.EventKind(f)
		if kind == responses.EventError {
			b.Fatalf("error frame: %s", f)
		}
		if responses.IsTerminal(kind) {
			ev, _ := responses.ParseEvent(f)
			bc.prev = ev.ResponseID
			for _, it := range ev.Output {
				if it.IsCall() {
					return it.CallID
				}
			}
			return ""
		}
	}
}

// BenchmarkBuildTurn builds the turn context of a chained turn whose session state is in
// the local store (anchor, pending calls, a 40-item transcript); the baseline is the three
// store reads alone.
func BenchmarkBuildTurn(b *testing.B) {
	st := newBenchStack(b)
	srv := st.srv
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer sk-bench")
	hdr.Set("Session-Id", "bench-build")
	tenant, _ := TenantOf(hdr, DefaultTenantHeaders)
	scope := statestore.Scope{Tenant: tenant, Session: "bench-build"}
	items := make([]statestore.ReplayItem, 40)
	for i := range items {
		items[i] = statestore.ReplayItem{Raw: []byte(`{"type":"message","role":"user","content":"x"}`), Type: "message"}
	}
	anchor := "resp_bench1"
	ctx := context.Background()
	if err := srv.store.Commit(ctx, statestore.Batch{Scope: scope, Anchor: &anchor,
		PutPending:  &statestore.PendingPut{ResponseID: anchor, Calls: []statestore.Call{{ID: "call_1", Kind: "function_call"}}},
		ReplayReset: true, ReplayAppend: items, ReplayLastResponseID: anchor}); err != nil {
		b.Fatal(err)
	}
	req, err := responses.Parse([]byte(`{"type":"response.create","model":"m","store":false,"previous_response_id":"resp_bench1","input":[{"type":"function_call_output","call_id":"call_1","output":"ok"}]}`))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("build_turn", func(b *testing.B) {
		b.ReportAllocs()
		snap := srv.Snapshot()
		tr := &httpConn{srv: srv}
		for b.Loop() {
			tc := srv.newTurn(ctx, tr, &laneState{}, req, srv.scopeOf(hdr, req, "c1"), snap)
			if !tc.t.Pending.Known {
				b.Fatal("pending not found")
			}
		}
	})
	b.Run("baseline_store_reads", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			a, _ := srv.store.Anchor(ctx, scope)
			_, _ = srv.store.Pending(ctx, scope.Tenant, a)
			_, _ = srv.store.Replay(ctx, scope)
		}
	})
}

// BenchmarkTurnWSFull175K is a full create of about 175 KB (a transcript of 13 rounds of
// reasoning with 8 KB of encrypted_content, a call and its output) on a fresh chain every
// turn, as Codex sends after a reconnect.
func BenchmarkTurnWSFull175K(b *testing.B) {
	st := newBenchStack(b, emulator.WithScript(emulator.Reply("ok")))
	var sb strings.Builder
	sb.WriteString(`{"type":"response.create","model":"gpt-5.5","store":false,"input":[`)
	enc := strings.Repeat("gAAAAABo", 1024)
	for i := 0; i < 13; i++ {
		fmt.Fprintf(&sb, `{"type":"reasoning","id":"rs_%d","summary":[],"encrypted_content":"%s"},`, i, enc)
		fmt.Fprintf(&sb, `{"type":"function_call","id":"fc_%d","call_id":"call_%d","name":"exec","arguments":"{}"},`, i, i)
		fmt.Fprintf(&sb, `{"type":"function_call_output","call_id":"call_%d","output":%q},`, i, strings.Repeat("line of output\n", 360))
	}
	sb.WriteString(`{"type":"message","role":"user","content":"go on"}]}`)
	frame := []byte(sb.String())
	for _, tc := range []struct{ name, url string }{
		{"gateway", wsURL(st.gw)}, {"raw_copy", wsURL(st.raw)}, {"direct", st.emu.WebSocketURL()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			bc := dialBench(b, tc.url)
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				bc.turn(b, frame)
			}
		})
	}
	b.Run("interleaved", func(b *testing.B) {
		cs := []*benchClient{dialBench(b, wsURL(st.gw)), dialBench(b, wsURL(st.raw)), dialBench(b, st.emu.WebSocketURL())}
		var t [3]time.Duration
		n := 0
		for b.Loop() {
			for k, bc := range cs {
				t0 := time.Now()
				bc.turn(b, frame)
				t[k] += time.Since(t0)
			}
			n++
		}
		b.ReportMetric(float64(t[0].Nanoseconds())/float64(n), "gateway-ns/turn")
		b.ReportMetric(float64(t[1].Nanoseconds())/float64(n), "raw-ns/turn")
		b.ReportMetric(float64(t[2].Nanoseconds())/float64(n), "direct-ns/turn")
		b.ReportMetric(float64(t[0]-t[1])/float64(n), "added-over-raw-ns/turn")
	})
}

// policySeconds is the time the gateway spent evaluating policies so far, every stage, as
// its own histogram counts it.
func (st *benchStack) policySeconds(b *testing.B) map[string]float64 {
	mfs, err := st.reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	sum := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "chainmend_policy_evaluation_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "stage" {
					sum[l.GetValue()] += m.GetHistogram().GetSampleSum()
				}
			}
		}
	}
	return sum
}

// processCPU is the CPU time the process has used (user and system), in ns: with the client
// and the emulator the same in every arm, the arms' difference per turn is the hop's CPU.
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
