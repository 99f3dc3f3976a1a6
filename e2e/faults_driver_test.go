package e2e

// The compact load driver of the fault suites (faults_*_test.go): a few hundred concurrent
// agent conversations against one or more gateway processes, each conversation behaving as
// Codex does (one create per turn, chained with previous_response_id, tool outputs for
// the model's calls; after an error frame a new socket and the full input), with knobs for
// the behaviours the faults need (resend incrementally after a broken socket, reconnect
// between turns, check that nothing follows an error frame). It never calls t.Fatal from
// its goroutines: every problem is returned in the conversation's stats.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"chainmend/emulator"
	"chainmend/internal/e2etest"
)

// loadSessions is the number of concurrent conversations of the load phases: a few
// hundred, fewer under -race (the race detector makes every process several times slower
// on the 2-core CI machine, and the suite must stay within its time budget).
func loadSessions() int {
	if raceEnabled {
		return 100
	}
	return 300
}

// LoadScript plays the model of the load conversations: a user message "finish…" gets a
// text answer, any other user message a reasoning item and one function call (with an
// emulator-issued call id), anything else a text. It depends only on the request.
func LoadScript() emulator.Script {
	return emulator.ScriptFunc(func(r *emulator.Request) emulator.Turn {
		last := r.LastInput()
		if last.Type != emulator.TypeMessage {
			return emulator.TextTurn("ok")
		}
		if raws, _ := r.InputRaw(); len(raws) > 0 && bytes.Contains(raws[len(raws)-1], []byte(`"finish`)) {
			return emulator.TextTurn("done")
		}
		return emulator.CallTurn(emulator.FunctionCall("exec", `{"cmd":"true"}`))
	})
}

// convSpec is one conversation of a load run.
type convSpec struct {
	session string
	hdr     http.Header
	// turns is the number of turns; every turn but the last answers the previous
	// turn's calls and asks for more work, the last one says "finish".
	turns int
	// urls are the gateways, tried in order: the client moves on to the next when one
	// refuses a connection.
	urls []string
	// deadline bounds one attempt of a turn, from the send to its terminal frame; a turn
	// that takes longer is a hang.
	deadline time.Duration
	// attempts bounds the attempts of one turn.
	attempts int
	// incremental: after a broken socket, resend the turn chained to the last response on
	// the new socket (the gateway repairs it from the shared state) instead of the full
	// input.
	incremental bool
	// reconnectEvery > 0 closes the socket after every that many turns and goes on with the
	// full input on a new one, as Codex does after an error.
	reconnectEvery int
	// quietAfterError waits this long after an error frame for any further frame of the
	// turn (there must be none).
	quietAfterError time.Duration
	// progress, when set, counts the turns completed (so that a test can inject its fault
	// mid-run).
	progress *atomic.Int64
}

// convStats is what one conversation saw.
type convStats struct {
	session   string
	completed int
	latencies []time.Duration
	// errorCodes lists the error frames (code, or status if it had none).
	errorCodes []string
	broken     int // sockets that broke mid-turn or refused a send
	hangs      int // attempts that hit the deadline
	stray      int // frames after an error frame of the same turn
	problems   []string
	err        error
}

type convClient struct {
	spec  convSpec
	st    *convStats
	conn  *websocket.Conn
	url   int
	input []json.RawMessage // the full input so far
	prev  string
	calls []string
	full  bool // the next create carries the full input
}

// runConversations runs every spec concurrently and returns their stats in order.
func runConversations(specs []convSpec) []*convStats {
	out := make([]*convStats, len(specs))
	var wg sync.WaitGroup
	for i, sp := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = runConversation(sp)
		}()
	}
	wg.Wait()
	return out
}

func runConversation(sp convSpec) *convStats {
	if sp.attempts == 0 {
		sp.attempts = 6
	}
	if sp.deadline == 0 {
		sp.deadline = ClientTimeout
	}
	c := &convClient{spec: sp, st: &convStats{session: sp.session}}
	defer c.close()
	for k := 1; k <= sp.turns; k++ {
		if err := c.turn(k); err != nil {
			c.st.err = fmt.Errorf("session %s turn %d: %w", sp.session, k, err)
			return c.st
		}
		if sp.progress != nil {
			sp.progress.Add(1)
		}
		if sp.reconnectEvery > 0 && k%sp.reconnectEvery == 0 && k < sp.turns {
			c.close()
			c.full = true
		}
	}
	return c.st
}

func (c *convClient) close() {
	if c.conn != nil {
		_ = c.conn.CloseNow()
		c.conn = nil
	}
}

func (c *convClient) dial() error {
	var last error
	for i := 0; i < 2*len(c.spec.urls); i++ {
		url := c.spec.urls[c.url%len(c.spec.urls)]
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: c.spec.hdr})
		cancel()
		if err == nil {
			conn.SetReadLimit(64 << 20)
			c.conn = conn
			return nil
		}
		last = err
		c.url++
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("dial: %w", last)
}

func userItem(text string) json.RawMessage {
	b, _ := json.Marshal(User(text))
	return b
}

func fcoItem(callID string) json.RawMessage {
	b, _ := json.Marshal(FCO(callID, "ok-"+callID))
	return b
}

// createFrame builds a store:false create of raw items.
func createFrame(prev string, items []json.RawMessage) []byte {
	var b bytes.Buffer
	b.WriteString(`{"type":"response.create","model":"gpt-5","store":false,`)
	if prev != "" {
		b.WriteString(`"previous_response_id":`)
		b.WriteString(strconv.Quote(prev))
		b.WriteByte(',')
	}
	b.WriteString(`"input":[`)
	for i, it := range items {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(it)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

func (c *convClient) turn(k int) error {
	newItems := make([]json.RawMessage, 0, len(c.calls)+1)
	for _, id := range c.calls {
		newItems = append(newItems, fcoItem(id))
	}
	text := fmt.Sprintf("step %d of %s", k, c.spec.session)
	if k == c.spec.turns {
		text = "finish " + c.spec.session
	}
	newItems = append(newItems, userItem(text))
	var lastErr error
	for attempt := 0; attempt < c.spec.attempts; attempt++ {
		if c.conn == nil {
			if err := c.dial(); err != nil {
				lastErr = err
				continue
			}
		}
		var frame []byte
		if c.full || c.prev == "" {
			frame = createFrame("", append(append([]json.RawMessage(nil), c.input...), newItems...))
		} else {
			frame = createFrame(c.prev, newItems)
		}
		start := time.Now()
		ev, hang, err := c.exchange(frame)
		switch {
		case hang:
			c.st.hangs++
			c.close()
			c.full = true
			lastErr = fmt.Errorf("no terminal frame within %s", c.spec.deadline)
		case err != nil:
			// The socket broke (an instance died, or the gateway cut it).
			c.st.broken++
			c.close()
			c.url++ // try the next instance first
			c.full = !c.spec.incremental
			lastErr = err
		case ev.Type == "response.completed":
			c.st.completed++
			c.st.latencies = append(c.st.latencies, time.Since(start))
			c.input = append(c.input, newItems...)
			c.input = append(c.input, ev.Response.Output...)
			c.prev, c.calls, c.full = ev.Response.ID, ev.CallIDs(), false
			return nil
		default:
			code := ev.Type
			if ev.Error != nil && ev.Error.Code != "" {
				code = ev.Error.Code
			}
			c.st.errorCodes = append(c.st.errorCodes, code)
			if ev.Type == "error" && ev.Status < 400 {
				c.st.problems = append(c.st.problems, fmt.Sprintf("error frame without a 4xx/5xx status: %s", ev.Raw))
			}
			if c.spec.quietAfterError > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), c.spec.quietAfterError)
				if _, data, err := c.conn.Read(ctx); err == nil {
					c.st.stray++
					c.st.problems = append(c.st.problems, fmt.Sprintf("frame after the error frame: %.200s", data))
				}
				cancel()
			}
			// As Codex: a new socket and the full input.
			c.close()
			c.full = true
			lastErr = fmt.Errorf("%s: %.300s", code, ev.Raw)
		}
	}
	return fmt.Errorf("lost after %d attempts: %w", c.spec.attempts, lastErr)
}

// exchange sends a frame and reads until the turn's terminal frame.
func (c *convClient) exchange(frame []byte) (Event, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.spec.deadline)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, frame); err != nil {
		return Event{}, false, err
	}
	for {
		_, data, err := c.conn.Read(ctx)
		if err != nil {
			return Event{}, errors.Is(ctx.Err(), context.DeadlineExceeded), err
		}
		var head struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(data, &head) != nil || !IsTerminal(head.Type) {
			continue
		}
		ev, err := ParseEvent(data)
		return ev, false, err
	}
}

// loadResult sums the stats of a run.
type loadResult struct {
	sessions, completed, broken, hangs, stray int
	errorCodes                                map[string]int
	latencies                                 []time.Duration
	failures                                  []string
}

func summarize(stats []*convStats) loadResult {
	r := loadResult{sessions: len(stats), errorCodes: map[string]int{}}
	for _, s := range stats {
		r.completed += s.completed
		r.broken += s.broken
		r.hangs += s.hangs
		r.stray += s.stray
		r.latencies = append(r.latencies, s.latencies...)
		for _, c := range s.errorCodes {
			r.errorCodes[c]++
		}
		for _, p := range s.problems {
			r.failures = append(r.failures, s.session+": "+p)
		}
		if s.err != nil {
			r.failures = append(r.failures, s.err.Error())
		}
	}
	sort.Slice(r.latencies, func(i, j int) bool { return r.latencies[i] < r.latencies[j] })
	return r
}

func (r loadResult) errors() int {
	n := 0
	for _, v := range r.errorCodes {
		n += v
	}
	return n
}

// pctl returns the q-quantile of sorted latencies.
func pctl(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func (r loadResult) String() string {
	return fmt.Sprintf("%d sessions, %d turns completed, %d error frames %v, %d broken sockets, %d hangs, p50 %s, p99 %s",
		r.sessions, r.completed, r.errors(), r.errorCodes, r.broken, r.hangs,
		pctl(r.latencies, 0.5).Round(10*time.Microsecond), pctl(r.latencies, 0.99).Round(10*time.Microsecond))
}

// specs returns n conversations of turns turns against urls, with session ids prefix-i.
func specs(prefix string, n, turns int, urls []string, edit func(i int, sp *convSpec)) []convSpec {
	out := make([]convSpec, n)
	for i := range out {
		out[i] = convSpec{session: fmt.Sprintf("%s-%d", prefix, i), turns: turns, urls: urls}
		out[i].hdr = header(out[i].session)
		if edit != nil {
			edit(i, &out[i])
		}
	}
	return out
}

// checkUpstream asserts what the emulator saw of a run: every response it completed was
// created from a valid paired context, and it refused nothing (the gateway repaired every
// turn before sending it). It returns the number of completed creates.
func checkUpstream(t *testing.T, emu *emulator.Emulator, wantNoErrors bool) int {
	t.Helper()
	n, bad := 0, 0
	for _, c := range emu.Creates() {
		if wantNoErrors && c.Outcome == emulator.OutcomeError {
			bad++
			if bad <= 5 {
				t.Errorf("the upstream refused create %d: %v: %.300s", c.Seq, c.Error, c.Frame)
			}
		}
		if c.Outcome != emulator.OutcomeCompleted {
			continue
		}
		n++
		if err := e2etest.Paired(c); err != nil {
			bad++
			if bad <= 5 {
				t.Errorf("unpaired context sent upstream: %v", err)
			}
		}
	}
	if bad > 5 {
		t.Errorf("... %d problems upstream in all", bad)
	}
	return n
}

// Kill ends the gateway process with SIGKILL (no shutdown, no last writes) and waits for
// it.
func (g *Gateway) Kill() {
	g.mu.Lock()
	if g.stopped {
		g.mu.Unlock()
		return
	}
	g.stopped = true
	g.mu.Unlock()
	_ = g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.done
}

// RSS returns the gateway process's resident set size in bytes (0 when unknown).
func (g *Gateway) RSS() int64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(g.cmd.Process.Pid), "status"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// Alive reports whether the process still runs.
func (g *Gateway) Alive() bool {
	select {
	case <-g.done:
		return false
	default:
		return true
	}
}

// waitProgress waits until n turns were completed (or the conversations ended).
func waitProgress(p *atomic.Int64, n int64, done <-chan struct{}) bool {
	for p.Load() < n {
		select {
		case <-done:
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return true
}
