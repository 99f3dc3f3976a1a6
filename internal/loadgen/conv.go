package loadgen

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"

	"chainmend/emulator"
)

// A load conversation is shaped like a Codex CLI session (testdata/codex): the first create
// carries the whole input and no previous_response_id; every later create chains to the
// previous response over the same WebSocket and carries only the new items (the output of
// the call the model just made, or the user's next message). Every cycleLen turns the
// client sends a full create again, as Codex does after a reconnect or a compaction; those
// carry a long transcript (reasoning with encrypted_content, calls, tool outputs) of
// bigSize bytes. Over HTTP there is no chain (store:false), so every turn is a full create:
// smallSize bytes, and bigSize bytes every cycleLen turns.
const (
	smallSize = 3 * 1024
	bigSize   = 175 * 1024
	cycleLen  = 8
)

// Turn classes, the rows of the latency tables.
const (
	classWSFull3K    = "ws_full_3k"
	classWSChained3K = "ws_chained_3k"
	classWSFull175K  = "ws_full_175k"
	classHTTP3K      = "http_3k"
	classHTTP175K    = "http_175k"
)

// The emulator's answers (see script): after a tool output the model reasons and answers
// in text; after anything else it reasons and calls exec_command.
const (
	toolName = "exec_command"
	toolArgs = `{"cmd":"go test ./... 2>&1 | tail -n 40","workdir":"/home/dev/project","yield_time_ms":10000}`
	// streamModel selects the streaming turn: one assistant message in streamDeltas
	// output_text.delta events.
	streamModel = "loadgen-stream"
)

func script(streamDeltas int) emulator.Script {
	streamText := strings.Repeat("tok ", streamDeltas)
	return emulator.ScriptFunc(func(r *emulator.Request) emulator.Turn {
		if r.Model == streamModel {
			return emulator.Turn{Output: []emulator.Output{emulator.Say(streamText)}, TextDeltas: streamDeltas}
		}
		if r.LastInput().IsOutput() {
			return emulator.Turn{Output: []emulator.Output{
				emulator.Reason("Summarize the test run."),
				emulator.Say("All 214 tests pass; the flaky TestReload was a timing assumption, now fixed."),
			}}
		}
		return emulator.CallTurn(emulator.FunctionCall(toolName, toolArgs))
	})
}

func jstr(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// filler returns n bytes of printable, JSON-safe text that looks like tool output.
func filler(rng *rand.Rand, n int) string {
	words := []string{"ok", "PASS", "chainmend/gateway", "0.412s", "--- RUN", "TestTurn", "coverage:", "87.1%",
		"of", "statements", "github.com/redis/go-redis/v9", "func", "return", "err", "nil", "ctx", "build"}
	var b strings.Builder
	b.Grow(n + 32)
	col := 0
	for b.Len() < n {
		w := words[rng.IntN(len(words))]
		b.WriteString(w)
		col += len(w)
		if col > 70 {
			b.WriteString(`\n`)
			col = 0
		} else {
			b.WriteByte(' ')
		}
	}
	return b.String()[:n]
}

func encrypted(rng *rand.Rand, n int) string {
	raw := make([]byte, n*3/4)
	for i := range raw {
		raw[i] = byte(rng.Uint32())
	}
	s := "gAAAAAB" + base64.StdEncoding.EncodeToString(raw)
	return s[:n]
}

// payloads are one session's request bodies. Chained creates are built per turn from
// prefix + previous_response_id + item.
type payloads struct {
	sid        string
	envelope   string // the members every create carries, without braces, trailing comma
	small      []byte // full create, ~3 KB (WebSocket)
	big        []byte // full create, ~175 KB (WebSocket)
	httpSmall  []byte // the same bodies without "type" for POST
	httpBig    []byte
	outputText string // a tool output of the size that makes a chained create ~3 KB
	userText   string // a user message of that size
	stream     []byte // the streaming turn (WebSocket)
}

func newPayloads(sid string, seed uint64) *payloads {
	rng := rand.New(rand.NewPCG(seed, 0x10ad))
	p := &payloads{sid: sid}
	tools := `[{"type":"function","name":"exec_command","description":"Runs a command in a PTY, returning output or a session ID for ongoing interaction.","strict":false,` +
		`"parameters":{"type":"object","properties":{"cmd":{"type":"string","description":"Shell command to execute."},"workdir":{"type":"string"},"yield_time_ms":{"type":"number"}},"required":["cmd"],"additionalProperties":false}},` +
		`{"type":"function","name":"apply_patch","description":"Apply a patch to files in the workspace.","strict":false,` +
		`"parameters":{"type":"object","properties":{"input":{"type":"string","description":"The patch."}},"required":["input"],"additionalProperties":false}}]`
	meta := fmt.Sprintf(`{"session_id":%s,"thread_id":%s,"x-codex-installation-id":"fd704177-cb94-4a77-851f-458a49de21ac","x-codex-window-id":%s}`,
		jstr(sid), jstr(sid), jstr(sid+":0"))
	p.envelope = `"model":"gpt-5.5","tools":` + tools + `,"tool_choice":"auto","parallel_tool_calls":false,` +
		`"reasoning":{"effort":"medium","summary":"auto"},"store":false,"stream":true,"include":["reasoning.encrypted_content"],` +
		`"prompt_cache_key":` + jstr(sid) + `,"text":{"verbosity":"low"},"client_metadata":` + meta + `,`

	dev := `{"type":"message","role":"developer","content":[{"type":"input_text","text":` + jstr("<permissions instructions>"+filler(rng, 600)) + `}]}`
	user := func(n int) string {
		return `{"type":"message","role":"user","content":[{"type":"input_text","text":` + jstr(filler(rng, n)) + `}]}`
	}
	// Small full create: developer + user message, ~3 KB.
	head := len(`{"type":"response.create",`) + len(p.envelope) + len(`"input":[`) + len(dev) + 1 + len(`]}`)
	userItem := user(smallSize - head - 80)
	smallInput := `[` + dev + `,` + userItem + `]`
	p.small = []byte(`{"type":"response.create",` + p.envelope + `"input":` + smallInput + `}`)
	p.httpSmall = []byte(`{` + p.envelope + `"input":` + smallInput + `}`)

	// Big full create: a transcript of tool-call rounds, ~175 KB.
	var in strings.Builder
	in.WriteString(`[` + dev + `,` + user(400))
	for i := 0; in.Len() < bigSize-12*1024; i++ {
		call := fmt.Sprintf("call_hist_%s_%d", sid, i)
		fmt.Fprintf(&in, `,{"type":"reasoning","id":"rs_hist_%d","summary":[{"type":"summary_text","text":"Look at the failing test."}],"encrypted_content":%s}`,
			i, jstr(encrypted(rng, 8192)))
		fmt.Fprintf(&in, `,{"type":"function_call","id":"fc_hist_%d","call_id":%s,"name":"exec_command","arguments":%s}`, i, jstr(call), jstr(toolArgs))
		fmt.Fprintf(&in, `,{"type":"function_call_output","call_id":%s,"output":%s}`, jstr(call), jstr(filler(rng, 6000)))
		if i%3 == 2 {
			fmt.Fprintf(&in, `,{"type":"message","role":"assistant","id":"msg_hist_%d","content":[{"type":"output_text","text":%s}]}`, i, jstr(filler(rng, 300)))
			in.WriteString(`,` + user(300))
		}
	}
	rest := bigSize - in.Len() - len(`{"type":"response.create",`) - len(p.envelope) - len(`"input":`) - 4 - 80
	if rest < 100 {
		rest = 100
	}
	in.WriteString(`,` + user(rest) + `]`)
	p.big = []byte(`{"type":"response.create",` + p.envelope + `"input":` + in.String() + `}`)
	p.httpBig = []byte(`{` + p.envelope + `"input":` + in.String() + `}`)

	// Chained creates: envelope + previous_response_id + one item, ~3 KB.
	chainedHead := len(`{"type":"response.create",`) + len(p.envelope) + len(`"previous_response_id":"resp_emu000000",`) + len(`"input":[]}`)
	n := smallSize - chainedHead - 120
	p.outputText = jstr(filler(rng, n))
	p.userText = jstr(filler(rng, n))
	p.stream = []byte(`{"type":"response.create","model":"` + streamModel + `","store":false,"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"stream"}]}]}`)
	return p
}

// createPrefix opens every WebSocket create this tool sends.
const createPrefix = `{"type":"response.create",`

// onLane returns a copy of a WebSocket create with "stream_id" set to lane, placed right
// after the type so that the rest of the frame is byte for byte the default-lane create.
func onLane(create []byte, lane string) []byte {
	rest, ok := bytes.CutPrefix(create, []byte(createPrefix))
	if !ok {
		panic("loadgen: onLane on a frame that is not one of ours")
	}
	out := make([]byte, 0, len(create)+len(lane)+16)
	out = append(out, createPrefix...)
	out = appendLane(out, lane)
	return append(out, rest...)
}

// appendLane appends the stream_id member of lane (nothing for the default lane). Lane
// names are ours and need no escaping.
func appendLane(buf []byte, lane string) []byte {
	if lane == "" {
		return buf
	}
	buf = append(buf, `"stream_id":"`...)
	buf = append(buf, lane...)
	return append(buf, `",`...)
}

// chained appends a chained create on lane ("" for the default lane) to buf: the output of
// call when call is set, else a user message (numbered: a message the chain already holds
// would be an edited history).
func (p *payloads) chained(buf []byte, lane, prev, call string, step int) []byte {
	buf = append(buf, createPrefix...)
	buf = appendLane(buf, lane)
	buf = append(buf, p.envelope...)
	buf = append(buf, `"previous_response_id":"`...)
	buf = append(buf, prev...)
	buf = append(buf, `","input":[`...)
	if call != "" {
		buf = append(buf, `{"type":"function_call_output","call_id":"`...)
		buf = append(buf, call...)
		buf = append(buf, `","output":`...)
		buf = append(buf, p.outputText...)
		buf = append(buf, '}')
	} else {
		buf = append(buf, `{"type":"message","role":"user","content":[{"type":"input_text","text":"turn `...)
		buf = strconv.AppendInt(buf, int64(step), 10)
		buf = append(buf, ": "...)
		buf = append(buf, p.userText[1:]...)
		buf = append(buf, `}]}`...)
	}
	return append(buf, `]}`...)
}
