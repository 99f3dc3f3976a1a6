package responses

import (
	"bytes"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseTerminal(t *testing.T) {
	cases := []struct {
		name  string
		frame string
		want  Event
	}{
		{
			name:  "a small turn's terminal event",
			frame: string(benchTerminal()),
			want: Event{Type: EventCompleted, ResponseID: "resp_68a1f0c2d4", Status: StatusCompleted,
				HasOutput: true, OutputCalls: []string{"call_Xy12ab"}},
		},
		{
			name:  "incomplete, on a lane",
			frame: `{"type":"response.incomplete","stream_id":"lane_a","response":{"id":"resp_2","status":"incomplete","incomplete_details":{"reason":"steered"},"output":[]}}`,
			want: Event{Type: EventIncomplete, Lane: "lane_a", ResponseID: "resp_2", Status: "incomplete",
				IncompleteReason: "steered", HasOutput: true},
		},
		{
			name:  "no output list",
			frame: `{"type":"response.failed","response":{"id":"resp_3","status":"failed","error":{"code":"server_error","message":"boom"}}}`,
			want: Event{Type: EventFailed, ResponseID: "resp_3", Status: "failed",
				Error: &ErrorBody{Code: "server_error", Message: "boom"}},
		},
		{
			name: "every kind of call, in order; a call without a call id; escapes; non-objects",
			frame: `{"type":"response.done","response":{"output":[` +
				`{"type":"custom_tool_call","call_id":"c1"},{"type":"message","call_id":"not a call"},` +
				`{"type":"local_shell_call"},"text",[1],{"type":"function_call","call_id":"c\u0032","call_id":"c3"},` +
				`{"type":"function_call_output","call_id":"o1"},{"type":"\u0066unction_call","call_id":"c\u0034"}]}}`,
			want: Event{Type: EventDone, HasOutput: true, OutputCalls: []string{"c1", "", "c3", "c4"}},
		},
		{
			name:  "the last output list counts",
			frame: `{"type":"response.completed","response":{"output":[{"type":"function_call","call_id":"old"}],"output":[]}}`,
			want:  Event{Type: EventCompleted, HasOutput: true},
		},
		{
			name:  "the last response object counts",
			frame: `{"type":"response.completed","response":{"id":"r1","status":"completed","output":[]},"response":{"id":"r2"}}`,
			want:  Event{Type: EventCompleted, ResponseID: "r2"},
		},
		{
			name:  "not a terminal event",
			frame: `{"type":"response.output_item.done","item":{"type":"function_call","id":"fc_1","call_id":"call_1"}}`,
			want: Event{Type: EventOutputItemDone, Item: &Item{Type: TypeFunctionCall, ID: "fc_1", CallID: "call_1",
				Raw: []byte(`{"type":"function_call","id":"fc_1","call_id":"call_1"}`)}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTerminal([]byte(tc.frame))
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			full, err := ParseEvent([]byte(tc.frame))
			require.NoError(t, err)
			assert.Equal(t, tc.want.OutputCalls, full.OutputCalls, "ParseEvent reads the same calls")
			full.Output = nil
			assert.Equal(t, got, full, "ParseTerminal is ParseEvent without Output")
		})
	}
}

func TestParseTerminalRejectsWhatParseEventRejects(t *testing.T) {
	for _, frame := range []string{
		``, `[]`, `{"type":"response.completed"} x`,
		`{"type":"response.completed","response":{"output":[{"type":"function_call","call_id":"c"}`,
		`{"type":"response.completed","response":{"output":[{"type":"function_call","call_id":"\q"}]}}`,
		`{"type":"response.completed","response":{"output":[{"x":` + strings.Repeat("[", 600) + strings.Repeat("]", 600) + `}]}}`,
	} {
		_, err := ParseTerminal([]byte(frame))
		_, want := ParseEvent([]byte(frame))
		require.Error(t, want, frame)
		assert.Equal(t, want, err, frame)
	}
}

func TestParseEventOutputItemDone(t *testing.T) {
	ev, err := ParseEvent(benchItemDone(benchCall))
	require.NoError(t, err)
	require.NotNil(t, ev.Item)
	assert.Equal(t, Item{Raw: []byte(benchCall), Type: TypeFunctionCall, ID: "fc_68a1", CallID: "call_Xy12ab"}, *ev.Item)
}

func TestUnquotePair(t *testing.T) {
	cases := []struct{ a, b, wantA, wantB string }{
		{`"fc_1"`, `"call_1"`, "fc_1", "call_1"},
		{"", `"call_1"`, "", "call_1"},
		{`"fc_1"`, "", "fc_1", ""},
		{`"f\u0063"`, `"call_1"`, "fc", "call_1"},
		{`"message"`, `"call_1"`, "message", "call_1"},
		{`""`, `""`, "", ""},
	}
	for _, tc := range cases {
		var a, b []byte
		if tc.a != "" {
			a = []byte(tc.a)
		}
		if tc.b != "" {
			b = []byte(tc.b)
		}
		gotA, gotB := unquotePair(a, b)
		assert.Equal(t, tc.wantA, gotA, tc.a)
		assert.Equal(t, tc.wantB, gotB, tc.b)
	}
}

func TestWordsAreStableAndFree(t *testing.T) {
	frame := []byte(`{"type":"response.web_search_call.searching","stream_id":"lane_7","item_id":"x"}`)
	assert.Equal(t, "lane_7", EventLane(frame))
	assert.Equal(t, "response.web_search_call.searching", EventKind(frame))
	allocs := testing.AllocsPerRun(100, func() {
		if EventLane(frame) != "lane_7" || EventKind(frame) != "response.web_search_call.searching" {
			t.Fatal("word")
		}
	})
	assert.Zero(t, allocs, "a lane or a type seen before costs no allocation")
	// A lane with escapes, or longer than maxWord, is read all the same.
	esc := []byte(`{"type":"x","stream_id":"lane\u005f8"}`)
	assert.Equal(t, "lane_8", EventLane(esc))
	long := strings.Repeat("l", 300)
	assert.Equal(t, long, EventLane([]byte(`{"stream_id":"`+long+`"}`)))
	// Two words hashing to one slot each read as themselves.
	for i := 0; i < 2000; i++ {
		w := []byte(strings.Repeat("w", i%70) + string(rune('a'+i%26)))
		assert.Equal(t, string(w), word(w))
	}
}

func TestItemKeyDigest(t *testing.T) {
	it := Item{Type: TypeMessage, Raw: []byte(`{"role":"user","content":"hi"}`)}
	assert.Equal(t, refKey(&it), it.Key())
	assert.Regexp(t, `^message#[0-9a-f]{16}$`, it.Key())
	assert.Equal(t, 1.0, testing.AllocsPerRun(10, func() { _ = it.Key() }), "a digest key is one allocation")
	it = Item{Raw: []byte(`"x"`)}
	assert.Equal(t, refKey(&it), it.Key())
	it = Item{Type: TypeFunctionCall, ID: "fc_1", CallID: "c"}
	assert.Equal(t, "function_call:fc_1", it.Key())
}

func TestSizeIsLenBytes(t *testing.T) {
	r, err := Parse([]byte(`{"type":"response.create","previous_response_id":"r","input":[{"type":"function_call","call_id":"c"}],"input":[],"x":1}`))
	require.NoError(t, err)
	assert.Equal(t, len(r.Bytes()), r.Size())
	r.SetString("previous_response_id", "new\n\"é\x01")
	r.SetString("k\"\x02é\xff", "v")
	assert.Equal(t, len(r.Bytes()), r.Size())
	r.InsertItems(0, NewOutputItem(TypeFunctionCall, "c", "ok"))
	r.Delete("x")
	assert.Equal(t, len(r.Bytes()), r.Size())
	r.Delete("input")
	assert.Equal(t, len(r.Bytes()), r.Size())
	assert.Equal(t, len(appendQuoted(nil, "k\"\x02é\xff\t")), quotedLen("k\"\x02é\xff\t"))
}

func TestSSEEventsStayValid(t *testing.T) {
	var sb strings.Builder
	for i := 0; i < 300; i++ {
		sb.WriteString("event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"" + strings.Repeat("x", i*7) + "\"}\n\n")
	}
	// Lines longer than the read buffer, and events longer than a slab.
	sb.WriteString("data: " + strings.Repeat("y", 3*sseBufferSize) + "\n\n")
	sb.WriteString("data: a\ndata: " + strings.Repeat("z", 2*maxSlab) + "\n\n")
	rd := NewSSEReader(strings.NewReader(sb.String()))
	var evs []SSEEvent
	for {
		ev, err := rd.Next()
		if err != nil {
			break
		}
		// A caller appending to an event writes past it, never into the next one.
		_ = append(ev.Raw, "garbage"...)
		_ = append(ev.Data, "garbage"...)
		evs = append(evs, ev)
	}
	require.Len(t, evs, 302)
	var again bytes.Buffer
	for i, ev := range evs[:300] {
		assert.Equal(t, "response.output_text.delta", ev.Name)
		assert.Equal(t, `{"type":"response.output_text.delta","delta":"`+strings.Repeat("x", i*7)+`"}`, string(ev.Data), i)
		again.Write(ev.Raw)
	}
	assert.Equal(t, strings.Repeat("y", 3*sseBufferSize), string(evs[300].Data))
	assert.Equal(t, "a\n"+strings.Repeat("z", 2*maxSlab), string(evs[301].Data))
	again.Write(evs[300].Raw)
	again.Write(evs[301].Raw)
	assert.Equal(t, sb.String(), again.String(), "the events' raw bytes are the stream")
}

func TestSSEReaderAllocatesPerSlab(t *testing.T) {
	var sb strings.Builder
	for i := 0; i < 1000; i++ {
		sb.WriteString("event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"tok\"}\n\n")
	}
	stream := sb.String()
	allocs := testing.AllocsPerRun(5, func() {
		rd := NewSSEReader(strings.NewReader(stream))
		for {
			if _, err := rd.Next(); err != nil {
				break
			}
		}
	})
	assert.Less(t, allocs, 20.0, "1,000 events")
}

func TestWordsConcurrently(t *testing.T) {
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000; i++ {
				w := []byte("lane_" + strconv.Itoa((i*7+g)%600))
				if got := word(w); got != string(w) {
					t.Errorf("word %q read as %q", w, got)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestMentionsLane(t *testing.T) {
	for _, frame := range []string{
		``, `"stream_id"`, `stream_id"`, `"stream_id`, `m_id"`, `"strea`, `{"item_id":"x"}`,
		`{"item_id":"x","stream_id":"a"}`, `x"stream_id"`, `{"m_id""stream_id"}`,
		`"stream_idm_id""stream_id"`, `{"a":"\"stream_id\""}`,
	} {
		assert.Equal(t, bytes.Contains([]byte(frame), laneKey), mentionsLane([]byte(frame)), frame)
	}
}
