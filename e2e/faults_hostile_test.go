package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"chainmend/emulator"
)

// hostileFrames is the number of frames TestFaultHostileFrames sends.
const hostileFrames = 10000

// hostileMaxFrame is the gateway's frame limit in that test: small, so that frames over it
// are cheap to send and "huge" strings within it still go through.
const hostileMaxFrame = 1 << 20

// expectation is what a hostile frame must get back.
type expectation int

const (
	// expectError: one error frame with a 4xx status and a code.
	expectError expectation = iota
	// expectAnswer: the frame may be a usable create: a terminal event, or one error frame
	// with a status.
	expectAnswer
	// expectTooBig: the connection is closed with 1009.
	expectTooBig
)

type hostile struct {
	kind   string
	typ    websocket.MessageType
	data   []byte
	expect expectation
}

// hostileCorpus reads the seed corpora of the fuzz targets that take frames or events
// (responses, emulator): every []byte or string argument is one frame. Acks
// (response.processed get no answer by design) are left out.
func hostileCorpus(t *testing.T) []hostile {
	t.Helper()
	root := RepoRoot(t)
	var out []hostile
	for _, dir := range []string{
		"responses/testdata/fuzz/FuzzParseCreate", "responses/testdata/fuzz/FuzzPatch",
		"responses/testdata/fuzz/FuzzSSE", "responses/testdata/fuzz/FuzzEvent",
		"emulator/testdata/fuzz/FuzzCreate",
	} {
		files, err := filepath.Glob(filepath.Join(root, dir, "*"))
		require.NoError(t, err)
		require.NotEmpty(t, files, dir)
		for _, f := range files {
			b, err := os.ReadFile(f)
			require.NoError(t, err)
			for _, line := range strings.Split(string(b), "\n") {
				var lit string
				switch {
				case strings.HasPrefix(line, "[]byte(") && strings.HasSuffix(line, ")"):
					lit = line[len("[]byte(") : len(line)-1]
				case strings.HasPrefix(line, "string(") && strings.HasSuffix(line, ")"):
					lit = line[len("string(") : len(line)-1]
				default:
					continue
				}
				v, err := strconv.Unquote(lit)
				require.NoError(t, err, "%s: %s", f, line)
				if strings.Contains(v, `"response.processed"`) {
					continue
				}
				h := hostile{kind: "corpus", typ: websocket.MessageText, data: []byte(v), expect: expectAnswer}
				if len(v) > hostileMaxFrame {
					h.expect = expectTooBig
				}
				out = append(out, h)
			}
		}
	}
	return out
}

// generateHostile returns n generated frames of many kinds, deterministically. Most are
// malformed (answered by the gateway itself); a few hundred are usable but odd creates
// that go upstream, and a few dozen are huge (within or over the limit), since those are
// what costs time.
func generateHostile(n int) []hostile {
	rng := rand.New(rand.NewPCG(1, 9))
	valid := Create(nil, User("hello"))
	text := func(kind string, s string, e expectation) hostile {
		return hostile{kind: kind, typ: websocket.MessageText, data: []byte(s), expect: e}
	}
	nest := func(depth int) string {
		return `{"type":"response.create","model":"gpt-5","input":[` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `]}`
	}
	huge := strings.Repeat("A", hostileMaxFrame-4096)
	type gen struct {
		count int
		make  func(i int) hostile
	}
	gens := []gen{
		// Malformed JSON: truncated creates, garbage, trailing bytes. The count of the first
		// is set below so that the total is n.
		{0, func(int) hostile { return text("truncated", valid[:1+rng.IntN(len(valid)-2)], expectError) }},
		{1400, func(int) hostile {
			b := make([]byte, 1+rng.IntN(64))
			for i := range b {
				b[i] = byte(' ' + rng.IntN(95))
			}
			b[0] = '{'
			return text("garbage", string(b), expectError)
		}},
		{600, func(int) hostile { return text("trailing", valid+` {"x":1}`, expectError) }},
		{500, func(int) hostile { return text("unterminated", `{"type":"response.create","input":["`, expectError) }},
		// Not an object.
		{1000, func(i int) hostile {
			return text("not-object", []string{`[]`, `1`, `"response.create"`, `null`, `true`, ``, ` `, `[{"type":"response.create"}]`}[i%8], expectError)
		}},
		// Nesting past the parser's bound, and far past it.
		{400, func(i int) hostile {
			depth := []int{600, 5000}[i%2]
			if i%20 == 0 {
				depth = 200000
			}
			return text("deep", nest(depth), expectError)
		}},
		// Nesting within the bound, in an unknown field: passes through to the upstream.
		{30, func(int) hostile {
			return text("deep-ok", `{"type":"response.create","model":"gpt-5","store":false,"metadata":{"x":`+strings.Repeat("[", 300)+strings.Repeat("]", 300)+`},"input":[{"type":"message","role":"user","content":"hi"}]}`, expectAnswer)
		}},
		// Huge strings within the frame limit.
		{5, func(int) hostile { return text("huge-type", `{"type":"`+huge+`"}`, expectError) }},
		// Too long for the item-id rule's regular expression within the CEL cost limit: that
		// rule does not fire, and the chain rules drop the unknown id.
		{5, func(int) hostile {
			return text("huge-prev", `{"type":"response.create","model":"gpt-5","store":false,"previous_response_id":"msg_`+huge+`","input":[]}`, expectAnswer)
		}},
		{5, func(int) hostile {
			return text("huge-instructions", `{"type":"response.create","model":"gpt-5","store":false,"instructions":"`+huge+`","input":[{"type":"message","role":"user","content":"hi"}]}`, expectAnswer)
		}},
		// Invalid UTF-8 and control bytes in text frames.
		{800, func(i int) hostile {
			bad := []string{"\xff\xfe", "\xc3\x28", "\xed\xa0\x80", "\x00", "\xef\xbb\xbf"}[i%5]
			if i%2 == 0 {
				return text("bad-utf8-type", `{"type":"response.create`+bad+`"}`, expectError)
			}
			return text("bad-utf8-frame", bad+valid, expectError)
		}},
		{50, func(i int) hostile {
			bad := []string{"\xff\xfe", "\xc3\x28", "\xed\xa0\x80", "\x00", "\xef\xbb\xbf"}[i%5]
			return text("bad-utf8-input", `{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"message","role":"user","content":"`+bad+`"}]}`, expectAnswer)
		}},
		// Binary frames.
		{1000, func(i int) hostile {
			b := make([]byte, rng.IntN(256))
			for j := range b {
				b[j] = byte(rng.IntN(256))
			}
			if i%2 == 0 {
				b = []byte(valid)
			}
			return hostile{kind: "binary", typ: websocket.MessageBinary, data: b, expect: expectError}
		}},
		// response.append, unknown types, odd types.
		{600, func(int) hostile {
			return text("append", `{"type":"response.append","input":[{"type":"message","role":"user","content":"x"}]}`, expectError)
		}},
		{1000, func(i int) hostile {
			types := []string{`"session.update"`, `"response.cancel"`, `"RESPONSE.CREATE"`, `"response.create "`, `""`, `1`, `null`, `{}`, `["response.create"]`, `"response.created"`}
			return text("unknown-type", `{"type":`+types[i%len(types)]+`,"input":[]}`, expectError)
		}},
		{400, func(int) hostile {
			return text("duplicate-type", `{"type":"response.create","type":"response.append","model":"gpt-5","input":[]}`, expectError)
		}},
		// A message or item id as previous_response_id.
		{700, func(i int) hostile {
			id := []string{"msg_", "item_", "chatcmpl_", "chatcmpl-", "fc_", "rs_"}[i%6] + strconv.Itoa(rng.IntN(1e6))
			return text("prev-not-response", Create(Item{"prev": id}, User("x")), expectError)
		}},
		// An id that is no response id but no known item id either: the chain rules drop it.
		{50, func(int) hostile {
			return text("prev-unknown", Create(Item{"prev": "msg-" + strconv.Itoa(rng.IntN(1e6))}, User("x")), expectAnswer)
		}},
		// Creates with hostile content that a policy or the upstream answers.
		{100, func(i int) hostile {
			frames := []string{
				`{"type":"response.create","model":123,"input":[]}`,
				`{"type":"response.create","model":"gpt-5","store":false,"input":"just text"}`,
				`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"function_call_output","call_id":"call_nobody","output":"x"}]}`,
				`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"function_call","call_id":"call_x","name":"f","arguments":"{}"}]}`,
				`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"item_reference","id":"msg_1"}]}`,
				`{"type":"response.create","model":"gpt-5","store":false,"previous_response_id":"resp_nope","input":[{"type":"message","role":"user","content":"x"}]}`,
				`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"brand_new_item","x":1e999}]}`,
				`{"type":"response.create","model":"gpt-5","store":false,"input":[{"type":"reasoning","id":"rs_1","summary":[]}]}`,
				`{"type":"response.create","input":[]}`,
			}
			return text("hostile-create", frames[i%len(frames)], expectAnswer)
		}},
		// Over the frame limit: closed with 1009.
		{12, func(int) hostile {
			return text("too-big", `{"type":"response.create","instructions":"`+strings.Repeat("B", hostileMaxFrame)+`"}`, expectTooBig)
		}},
	}
	others := 0
	for _, g := range gens[1:] {
		others += g.count
	}
	gens[0].count = max(n-others, 0)
	out := make([]hostile, 0, n)
	for _, g := range gens {
		for i := 0; i < g.count; i++ {
			out = append(out, g.make(i))
		}
	}
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out[:n]
}

// TestFaultHostileFrames sends 10,000 malformed or hostile frames (the fuzz seed corpora
// plus generated ones) over eight concurrent connections. Each must be answered with one
// clear error frame (a 4xx status and a code), or, for frames that are usable creates, a
// terminal event or error frame; a frame over the limit closes its connection with 1009.
// The process keeps serving: a normal conversation completes at the end.
func TestFaultHostileFrames(t *testing.T) {
	t.Parallel()
	bin := Build(t, "./cmd/gateway")
	emu := emulator.StartTest(t, emulator.WithScript(LoadScript()), emulator.WithRecording(false))
	g := StartGateway(t, bin, "A", "--upstream", emu.URL(), "--policies", policiesDir(t), "--reload-poll", "1h", "--log-level", "info",
		"--max-frame-bytes", strconv.Itoa(hostileMaxFrame))

	frames := hostileCorpus(t)
	corpus := len(frames)
	frames = append(frames, generateHostile(hostileFrames-corpus)...)
	require.Len(t, frames, hostileFrames)

	const workers = 8
	type tally struct {
		answers  map[string]int // kind → answer
		spent    map[string]time.Duration
		failures []string
	}
	tallies := make([]tally, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tl := &tallies[w]
			tl.answers = map[string]int{}
			tl.spent = map[string]time.Duration{}
			fail := func(format string, args ...any) {
				if len(tl.failures) < 20 {
					tl.failures = append(tl.failures, fmt.Sprintf(format, args...))
				}
			}
			var conn *websocket.Conn
			defer func() {
				if conn != nil {
					_ = conn.CloseNow()
				}
			}()
			for i := w; i < len(frames); i += workers {
				h := frames[i]
				if conn == nil {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					c, _, err := websocket.Dial(ctx, g.WSURL(), &websocket.DialOptions{HTTPHeader: header(fmt.Sprintf("hostile-%d", w))})
					cancel()
					if err != nil {
						fail("dial: %v", err)
						return
					}
					c.SetReadLimit(64 << 20)
					conn = c
				}
				t0 := time.Now()
				answer, err := hostileExchange(conn, h)
				tl.spent[h.kind] += time.Since(t0)
				if err != nil {
					fail("frame %d (%s, %.80q): %v", i, h.kind, h.data, err)
					_ = conn.CloseNow()
					conn = nil
					continue
				}
				tl.answers[h.kind+" → "+answer]++
				if answer == "close 1009" {
					conn = nil
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	answers := map[string]int{}
	spent := map[string]time.Duration{}
	total := 0
	for _, tl := range tallies {
		for k, v := range tl.spent {
			spent[k] += v
		}
		for k, v := range tl.answers {
			answers[k] += v
			total += v
		}
		for _, f := range tl.failures {
			t.Error(f)
		}
	}
	keys := make([]string, 0, len(answers))
	for k := range answers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var report strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&report, "\n  %6d  %s", answers[k], k)
	}
	t.Logf("%d frames (%d from the fuzz corpora) answered in %s:%s", total, corpus, elapsed.Round(time.Millisecond), report.String())
	t.Logf("time by kind: %v", spent)
	assert.Equal(t, hostileFrames, total, "every frame answered")
	assert.True(t, g.Alive(), "the gateway is still running")
	assert.NotContains(t, g.Logs(), "panic")
	assert.Positive(t, g.Sum(t, "chainmend_bad_frames_total", nil))

	// The process keeps serving a normal session.
	res := summarize(runConversations(specs("after-hostile", 3, 3, []string{g.WSURL()}, nil)))
	for _, f := range res.failures {
		t.Error(f)
	}
	assert.Equal(t, 9, res.completed, "a normal session after the flood")
	assert.Zero(t, res.errors())
	waitFor(t, "every hostile connection released", 10*time.Second, func() bool {
		return g.Sum(t, "chainmend_client_connections", nil) == 0
	})
}

// hostileExchange sends one frame and reads its answer: "error CODE", a terminal event
// type, or "close CODE". It fails when the answer does not match the expectation.
func hostileExchange(conn *websocket.Conn, h hostile) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := conn.Write(ctx, h.typ, h.data); err != nil {
		if h.expect == expectTooBig {
			return closeAnswer(err)
		}
		return "", fmt.Errorf("write: %w", err)
	}
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			if h.expect == expectTooBig {
				return closeAnswer(err)
			}
			return "", fmt.Errorf("no answer: %w", err)
		}
		var head struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(data, &head); err != nil {
			return "", fmt.Errorf("the gateway sent invalid JSON: %.200q", data)
		}
		if !IsTerminal(head.Type) {
			if h.expect == expectError {
				return "", fmt.Errorf("expected an error frame, got %s", head.Type)
			}
			continue
		}
		ev, err := ParseEvent(data)
		if err != nil {
			return "", err
		}
		switch {
		case h.expect == expectTooBig:
			return "", fmt.Errorf("expected close 1009, got %.200s", data)
		case ev.Type == "error":
			if ev.Status < 400 || ev.Status > 599 || ev.Error == nil || ev.Error.Message == "" {
				return "", fmt.Errorf("unclear error frame: %.300s", data)
			}
			code := ev.Error.Code
			if code == "" {
				code = ev.Error.Type
			}
			if h.expect == expectError && (ev.Status >= 500 || code == "") {
				return "", fmt.Errorf("expected a 4xx error with a code: %.300s", data)
			}
			return "error " + strconv.Itoa(ev.Status) + " " + code, nil
		case h.expect == expectError:
			return "", fmt.Errorf("expected an error frame, got %s", ev.Type)
		default:
			return ev.Type, nil
		}
	}
}

func closeAnswer(err error) (string, error) {
	if code := websocket.CloseStatus(err); code == websocket.StatusMessageTooBig {
		return "close 1009", nil
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return "", fmt.Errorf("closed with %d, expected 1009", ce.Code)
	}
	return "", fmt.Errorf("expected close 1009, got %w", err)
}
