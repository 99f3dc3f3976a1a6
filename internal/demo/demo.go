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
	// needs is how many tool calls of an earlier turn input answers: a policy set that
	// rejected that turn leaves none, and the step is then skipped, not sent.
	needs int
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
		needs: 2,
		input: func(prev string, calls []string) string {
			return create(prev, output(calls[0], "README.md go.mod"), output(calls[1], "# chainmend"))
		},
		before: func(e *emulator.Emulator) { e.UpdateFaults(func(f *emulator.Faults) { f.CloseAfterCompleted = true }) }},
	{title: "next user turn, chained to a response the new upstream connection never saw",
		input: func(prev string, _ []string) string { return create(prev, userMsg("Now run the tests.")) },
		before: func(e *emulator.Emulator) {
			e.UpdateFaults(func(f *emulator.Faults) { f.CloseAfterCompleted = false })
			// A user types for longer than a close frame takes on loopback. Sent at once, the
			// turn may meet the closing connection, which the recovery stage retries
			// (transport_retry) instead of the replay this turn is here to show.
			time.Sleep(50 * time.Millisecond)
		}},
	{title: "ESC: the user interrupts; the client sends one output, no previous_response_id",
		needs: 1,
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
	tally, err := converse(ctx, w, direct.WebSocketURL(), direct, nil)
	direct.Close()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "   -> %d of %d turns failed upstream%s\n\n", tally.failed, len(steps), tally.skippedNote())

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
	tally, err = converse(ctx, w, "ws://"+ln.Addr().String()+"/v1/responses", emu, logs)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "   -> %d of %d turns failed%s%s\n\n", tally.failed, len(steps), tally.rejectedNote(), tally.skippedNote())
	// The gateway logs a turn after its last event reached the client: give the last line
	// a moment.
	waitTurnLines(logs, tally.sent)
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

// tally counts how the turns of a conversation ended.
type tally struct {
	// sent turns reached the other end; failed ended in an error, rejected of them by
	// the gateway's policies; skipped were not sent (their calls never came).
	sent, failed, rejected, skipped int
}

func (t tally) skippedNote() string {
	if t.skipped == 0 {
		return ""
	}
	return fmt.Sprintf(", %d skipped", t.skipped)
}

func (t tally) rejectedNote() string {
	if t.rejected == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d rejected by the policies)", t.rejected)
}

// waitTurnLines waits, briefly, until the gateway logged n turns: it logs a turn after its
// last frame reached the client.
func waitTurnLines(logs *lockedBuffer, n int) {
	for i := 0; i < 100 && strings.Count(logs.String(), "msg=turn ") < n; i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

// turnLine returns the gateway's log line of the n-th turn (from 1), or "".
func turnLine(logs *lockedBuffer, n int) string {
	waitTurnLines(logs, n)
	var lines []string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "msg=turn ") {
			lines = append(lines, l)
		}
	}
	if n > len(lines) {
		return ""
	}
	return lines[n-1]
}

// logField returns the value of key=value in a text log line.
func logField(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// converse runs the script against url and counts how its turns ended. With the gateway's
// logs, an error the policies chose is shown as a rejection with its reasons.
func converse(ctx context.Context, w io.Writer, url string, emu *emulator.Emulator, logs *lockedBuffer) (tally, error) {
	var tl tally
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
		return tl, err
	}
	defer func() { _ = conn.CloseNow() }()
	prev, calls := "", []string{}
	for i, st := range steps {
		fmt.Fprintf(w, "   turn %d: %s\n", i+1, st.title)
		if len(calls) < st.needs {
			// An earlier turn was rejected or failed before the model called its tools:
			// there is nothing to answer, as a real client would find.
			fmt.Fprintf(w, "           skipped: it answers %d tool call(s) of an earlier turn, and none came\n", st.needs)
			tl.skipped++
			continue
		}
		if st.before != nil {
			st.before(emu)
		}
		frame := st.input(prev, calls)
		res, err := exchange(ctx, conn, frame)
		tl.sent++
		if err != nil {
			// The socket died (the upstream dropped it, without a gateway in between):
			// a client reconnects and carries on.
			fmt.Fprintf(w, "           connection lost: %v; reconnecting\n", err)
			if err := dial(); err != nil {
				return tl, err
			}
			tl.failed++
			continue
		}
		if res.errCode != "" {
			tl.failed++
			if logs != nil {
				if line := turnLine(logs, tl.sent); logField(line, "outcome") == "rejected" {
					tl.rejected++
					fmt.Fprintf(w, "           REJECTED by the policies (reasons %s): %d %s: %s\n", logField(line, "reasons"), res.status, res.errCode, res.errMsg)
					continue
				}
			}
			fmt.Fprintf(w, "           ERROR %d %s: %s\n", res.status, res.errCode, res.errMsg)
			continue
		}
		fmt.Fprintf(w, "           ok: %s, %d call(s)\n", res.id, len(res.calls))
		prev = res.id
		if len(res.calls) > 0 {
			calls = res.calls
		}
	}
	return tl, nil
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
