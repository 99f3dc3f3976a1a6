// Package demo runs chainmend's demonstration: the gateway in front of the upstream
// emulator, and a scripted Codex-like client whose conversation would break without it.
// Everything runs in-process on loopback; no network, no API key.
package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"chainmend/emulator"
	"chainmend/gateway"
)

// step is one client turn of the script.
type step struct {
	title string
	// input builds the frame from the previous response id and its calls.
	input func(prev string, calls []string) string
	// before runs before the turn (a fault to inject).
	before func(e *emulator.Emulator)
}

func create(prev string, items ...string) string {
	p := ""
	if prev != "" {
		p = fmt.Sprintf(`,"previous_response_id":%q`, prev)
	}
	return `{"type":"response.create","model":"gpt-5.5","store":false` + p +
		`,"input":[` + strings.Join(items, ",") + `]}`
}

func userMsg(text string) string {
	return fmt.Sprintf(`{"type":"message","role":"user","content":[{"type":"input_text","text":%q}]}`, text)
}

func output(callID, text string) string {
	return fmt.Sprintf(`{"type":"function_call_output","call_id":%q,"output":%q}`, callID, text)
}

var steps = []step{
	{title: "user asks; the model calls two tools",
		input: func(string, []string) string { return create("", userMsg("List the repo and show the README.")) }},
	{title: "the client answers both calls, chained; the upstream then drops the connection",
		input: func(prev string, calls []string) string {
			return create(prev, output(calls[0], "README.md go.mod"), output(calls[1], "# chainmend"))
		},
		before: func(e *emulator.Emulator) { e.UpdateFaults(func(f *emulator.Faults) { f.CloseAfterCompleted = true }) }},
	{title: "next user turn, chained to a response the new upstream connection never saw",
		input: func(prev string, _ []string) string { return create(prev, userMsg("Now run the tests.")) },
		before: func(e *emulator.Emulator) {
			e.UpdateFaults(func(f *emulator.Faults) { f.CloseAfterCompleted = false })
		}},
	{title: "ESC: the user interrupts; the client sends one output, no previous_response_id",
		input: func(_ string, calls []string) string {
			return create("", output(calls[0], "ok  chainmend/engine"), userMsg("Stop. Summarise instead."))
		}},
}

// Run runs the demo and writes its report to w.
func Run(ctx context.Context, w io.Writer, policies string) error {
	script := emulator.Sequence(
		emulator.CallTurn(emulator.FunctionCall("exec_command", `{"cmd":"ls"}`), emulator.FunctionCall("exec_command", `{"cmd":"cat README.md"}`)),
		emulator.TextTurn("The repo holds a Go module."),
		emulator.CallTurn(emulator.FunctionCall("exec_command", `{"cmd":"go test ./engine"}`), emulator.FunctionCall("exec_command", `{"cmd":"go test ./gateway"}`)),
		emulator.TextTurn("Engine tests pass; the gateway run was interrupted."),
	)

	fmt.Fprintln(w, "== 1. The conversation straight to the upstream (no gateway)")
	direct := emulator.New(emulator.WithScript(script), emulator.WithRecording(true))
	if err := direct.Start(); err != nil {
		return err
	}
	failures, err := converse(ctx, w, direct.WebSocketURL(), direct)
	direct.Close()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "   -> %d of %d turns failed upstream\n\n", failures, len(steps))

	script = emulator.Sequence(
		emulator.CallTurn(emulator.FunctionCall("exec_command", `{"cmd":"ls"}`), emulator.FunctionCall("exec_command", `{"cmd":"cat README.md"}`)),
		emulator.TextTurn("The repo holds a Go module."),
		emulator.CallTurn(emulator.FunctionCall("exec_command", `{"cmd":"go test ./engine"}`), emulator.FunctionCall("exec_command", `{"cmd":"go test ./gateway"}`)),
		emulator.TextTurn("Engine tests pass; the gateway run was interrupted."),
	)
	emu := emulator.New(emulator.WithScript(script), emulator.WithRecording(true))
	if err := emu.Start(); err != nil {
		return err
	}
	defer emu.Close()
	cfg := gateway.DefaultConfig()
	cfg.Upstream = emu.URL()
	cfg.Policies = policies
	reg := prometheus.NewRegistry()
	logs := &lockedBuffer{}
	srv, err := gateway.New(cfg, gateway.WithRegistry(reg), gateway.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	if err != nil {
		return err
	}
	defer srv.Close()
	if _, err := gateway.NewReloader(srv).Reload(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := srv.HTTPServer()
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()

	fmt.Fprintf(w, "== 2. The same conversation through chainmend (gateway %s, policy set %s)\n", ln.Addr(), srv.Snapshot().Hash)
	before := firedCounts(reg)
	failures, err = converse(ctx, w, "ws://"+ln.Addr().String()+"/v1/responses", emu)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "   -> %d of %d turns failed\n\n", failures, len(steps))
	// The gateway logs a turn after its last event reached the client: give the last line
	// a moment.
	for i := 0; i < 50 && strings.Count(logs.String(), "msg=turn ") < len(steps); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Fprintln(w, "== What the policies did, turn by turn (gateway log)")
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	for sc.Scan() {
		if line := sc.Text(); strings.Contains(line, "msg=turn ") {
			fmt.Fprintln(w, "   "+compactLog(line))
		}
	}
	fmt.Fprintln(w, "\n== Metrics that moved (chainmend_rule_fired_total by reason)")
	after := firedCounts(reg)
	keys := make([]string, 0, len(after))
	for k := range after {
		if after[k] != before[k] && !strings.HasPrefix(k, "pairing_checked") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "   %-48s +%g\n", k, after[k]-before[k])
	}
	fmt.Fprintln(w, "\n   (scrape them live at /metrics: `make run`, then curl 127.0.0.1:8787/metrics)")
	return nil
}

// lockedBuffer is the gateway's log sink: the gateway writes from its goroutines while the
// demo reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func compactLog(line string) string {
	var keep []string
	for _, f := range strings.Fields(line) {
		for _, k := range []string{"turn=", "reasons=", "outcome=", "ms="} {
			if !strings.HasPrefix(f, k) {
				continue
			}
			if k == "reasons=" {
				// pairing_checked fires on every turn; it says nothing here.
				var rs []string
				for _, r := range strings.Split(strings.TrimPrefix(f, k), ",") {
					if r != "pairing_checked" && r != "" {
						rs = append(rs, r)
					}
				}
				if len(rs) == 0 {
					rs = []string{"(nothing to repair)"}
				}
				f = k + strings.Join(rs, ",")
			}
			keep = append(keep, f)
		}
	}
	return strings.Join(keep, "  ")
}

func firedCounts(reg *prometheus.Registry) map[string]float64 {
	out := map[string]float64{}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "chainmend_rule_fired_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var reason, stage string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "reason":
					reason = l.GetValue()
				case "stage":
					stage = l.GetValue()
				}
			}
			out[reason+" ("+stage+")"] += m.GetCounter().GetValue()
		}
	}
	return out
}

// converse runs the script against url and returns how many turns ended in an error.
func converse(ctx context.Context, w io.Writer, url string, emu *emulator.Emulator) (int, error) {
	var conn *websocket.Conn
	dial := func() error {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(dctx, url, &websocket.DialOptions{HTTPHeader: http.Header{
			"Authorization": {"Bearer demo-key"}, "Session-Id": {"demo-session"}}})
		if err != nil {
			return err
		}
		c.SetReadLimit(64 << 20)
		conn = c
		return nil
	}
	if err := dial(); err != nil {
		return 0, err
	}
	defer func() { _ = conn.CloseNow() }()
	prev, calls, failures := "", []string{}, 0
	for i, st := range steps {
		if st.before != nil {
			st.before(emu)
		}
		frame := st.input(prev, calls)
		fmt.Fprintf(w, "   turn %d: %s\n", i+1, st.title)
		res, err := exchange(ctx, conn, frame)
		if err != nil {
			// The socket died (the upstream dropped it, without a gateway in between):
			// a client reconnects and carries on.
			fmt.Fprintf(w, "           connection lost: %v; reconnecting\n", err)
			if err := dial(); err != nil {
				return failures, err
			}
			failures++
			continue
		}
		if res.errCode != "" {
			failures++
			fmt.Fprintf(w, "           ERROR %d %s: %s\n", res.status, res.errCode, res.errMsg)
			continue
		}
		fmt.Fprintf(w, "           ok: %s, %d call(s)\n", res.id, len(res.calls))
		prev = res.id
		if len(res.calls) > 0 {
			calls = res.calls
		}
	}
	return failures, nil
}

type result struct {
	id, errCode, errMsg string
	status              int
	calls               []string
}

func exchange(ctx context.Context, c *websocket.Conn, frame string) (result, error) {
	var res result
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Write(tctx, websocket.MessageText, []byte(frame)); err != nil {
		return res, err
	}
	for {
		_, data, err := c.Read(tctx)
		if err != nil {
			return res, err
		}
		var ev struct {
			Type     string `json:"type"`
			Status   int    `json:"status"`
			Response struct {
				ID string `json:"id"`
			} `json:"response"`
			Item struct {
				Type   string `json:"type"`
				CallID string `json:"call_id"`
			} `json:"item"`
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(data, &ev); err != nil {
			return res, err
		}
		switch ev.Type {
		case "error":
			res.status, res.errCode, res.errMsg = ev.Status, ev.Error.Code, ev.Error.Message
			if res.errCode == "" {
				res.errCode = "error"
			}
			return res, nil
		case "response.output_item.done":
			if ev.Item.Type == "function_call" {
				res.calls = append(res.calls, ev.Item.CallID)
			}
		case "response.completed", "response.failed", "response.incomplete":
			res.id = ev.Response.ID
			return res, nil
		}
	}
}
