package emulator

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
	"unicode/utf8"
)

// errDropped reports that a fault cut the stream on purpose.
var errDropped = errors.New("emulator: stream dropped by fault")

// response is one response the emulator produced.
type response struct {
	id        string
	createSeq int
	conn      int
	lane      string
	store     bool
	status    string
	// reason is incomplete_details.reason when status is incomplete.
	reason    string
	warmup    bool
	successor bool
	prevID    string
	// context is what a continuation chains onto: the effective input context
	// followed by the output items and any injected tool outputs.
	context []Item
	// output holds the finished output items as sent in the terminal event.
	output  [][]byte
	items   []Item
	created int64
	// storedIDs are the item ids this response registered for lookups.
	storedIDs []string
	// final is the terminal response object, kept for stored responses so
	// GET /v1/responses/{id} can answer it.
	final []byte
	// inputLen is how many context items are input (the rest is output and
	// injected outputs), for GET /v1/responses/{id}/input_items.
	inputLen int
}

// outItem is one output item being produced.
type outItem struct {
	spec   Output
	header Item
	done   []byte
	added  []byte
	enc    string
	deltas int
}

// newResponse turns a turn into finished items, issuing ids.
func (e *Emulator) newResponse(x *exchange, turn Turn) (*response, []*outItem) {
	r := &response{
		id:        fmt.Sprintf("resp_emu%04d", e.respSeq.Add(1)),
		createSeq: x.rec.Seq,
		conn:      x.rec.Conn,
		lane:      x.rec.Lane,
		store:     x.p.store,
		warmup:    !x.p.generate,
		successor: x.rec.Successor,
		prevID:    x.p.prevID,
		created:   time.Now().Unix(),
		status:    turn.Status,
	}
	if r.status == "" {
		r.status = StatusCompleted
	}
	if r.status == StatusIncomplete {
		r.reason = "max_output_tokens"
	}
	deltas := e.cfg.textDeltas
	if turn.TextDeltas > 0 {
		deltas = turn.TextDeltas
	}
	items := make([]*outItem, 0, len(turn.Output))
	for _, o := range turn.Output {
		items = append(items, e.buildItem(r.id, o, deltas))
	}
	return r, items
}

// settle fixes what a response ends with once streaming stopped: the items
// streamed in full (minus the calls an interrupt discards), the injected
// outputs that answer them, the status, and the context a continuation
// chains onto. A response cut short also loses a trailing reasoning item,
// which would otherwise lack the item it produced.
func (r *response) settle(ctx []Item, done []*outItem, injected []Item, stop string, ir InterruptReading) {
	keep := done
	if stop == stopInterrupted && ir.DiscardCalls {
		keep = make([]*outItem, 0, len(done))
		for _, it := range done {
			if !it.header.IsCall() {
				keep = append(keep, it)
			}
		}
	}
	if stop != "" {
		keep = pruneReasoning(keep)
	}
	calls := make(map[string]struct{})
	r.output, r.items = nil, nil
	for _, it := range keep {
		r.output = append(r.output, it.done)
		r.items = append(r.items, it.header)
		if it.header.IsCall() {
			calls[it.header.CallID] = struct{}{}
		}
	}
	r.inputLen = len(ctx)
	r.context = make([]Item, 0, len(ctx)+len(r.items)+len(injected))
	r.context = append(r.context, ctx...)
	r.context = append(r.context, r.items...)
	for _, it := range injected {
		if _, ok := calls[it.CallID]; ok {
			r.context = append(r.context, it)
		}
	}
	switch {
	case stop == stopSteered:
		r.status, r.reason = StatusIncomplete, stopSteered
	case stop == stopInterrupted && ir.Cancel:
		r.status, r.reason = StatusCancelled, ""
	case stop == stopInterrupted:
		r.status, r.reason = StatusIncomplete, stopInterrupted
	}
}

// pruneReasoning drops reasoning items that no longer precede the item they
// produced. It walks backwards so each reasoning item is judged by the item
// that will actually follow it.
func pruneReasoning(items []*outItem) []*outItem {
	out := make([]*outItem, 0, len(items))
	for i := len(items) - 1; i >= 0; i-- {
		it := items[i]
		if it.header.Type == TypeReasoning && (len(out) == 0 || !canFollowReasoning(out[len(out)-1].header)) {
			continue
		}
		out = append(out, it)
	}
	slices.Reverse(out)
	return out
}

func (e *Emulator) itemID(prefix string) string {
	return fmt.Sprintf("%s_emu%04d", prefix, e.itemSeq.Add(1))
}

// buildItem renders the added and done forms of one output item.
func (e *Emulator) buildItem(respID string, o Output, deltas int) *outItem {
	it := &outItem{spec: o, deltas: deltas}
	h := Item{Type: o.Type, Response: respID}
	switch o.Type {
	case TypeReasoning:
		h.ID = e.itemID("rs")
		h.EncryptedContent = true
		it.enc = e.encryptedContent()
		it.added = newObj(64).str("id", h.ID).str("type", TypeReasoning).raw("summary", nil, "[]").done()
		it.done = newObj(len(it.enc)+len(o.Text)+128).str("id", h.ID).str("type", TypeReasoning).
			raw("summary", summaryJSON(o.Text), "[]").str("encrypted_content", it.enc).done()
	case TypeMessage:
		h.ID = e.itemID("msg")
		h.Role = "assistant"
		it.added = newObj(128).str("id", h.ID).str("type", TypeMessage).str("status", "in_progress").
			raw("content", nil, "[]").str("role", "assistant").done()
		it.done = newObj(len(o.Text)+160).str("id", h.ID).str("type", TypeMessage).str("status", "completed").
			raw("content", append(append([]byte{'['}, outputTextPart(o.Text)...), ']'), "").
			str("role", "assistant").done()
	case TypeFunctionCall:
		h.ID = e.itemID("fc")
		h.CallID = e.callID(o.CallID)
		h.Name = o.Name
		it.added = newObj(128).str("id", h.ID).str("type", TypeFunctionCall).str("status", "in_progress").
			str("arguments", "").str("call_id", h.CallID).str("name", o.Name).done()
		it.done = newObj(len(o.Arguments)+128).str("id", h.ID).str("type", TypeFunctionCall).str("status", "completed").
			str("arguments", o.Arguments).str("call_id", h.CallID).str("name", o.Name).done()
	case TypeCustomToolCall:
		h.ID = e.itemID("ctc")
		h.CallID = e.callID(o.CallID)
		h.Name = o.Name
		it.added = newObj(128).str("id", h.ID).str("type", TypeCustomToolCall).str("status", "in_progress").
			str("call_id", h.CallID).str("input", "").str("name", o.Name).done()
		it.done = newObj(len(o.Text)+128).str("id", h.ID).str("type", TypeCustomToolCall).str("status", "completed").
			str("call_id", h.CallID).str("input", o.Text).str("name", o.Name).done()
	case TypeLocalShellCall:
		h.ID = e.itemID("lsh")
		h.CallID = e.callID(o.CallID)
		action := []byte(o.Arguments)
		if !json.Valid(action) {
			action = []byte(shellAction(nil))
		}
		it.added = newObj(len(action)+128).str("id", h.ID).str("type", TypeLocalShellCall).str("status", "in_progress").
			str("call_id", h.CallID).raw("action", action, "{}").done()
		it.done = newObj(len(action)+128).str("id", h.ID).str("type", TypeLocalShellCall).str("status", "completed").
			str("call_id", h.CallID).raw("action", action, "{}").done()
	default:
		// An item type the emulator does not model still gets an id and
		// travels through the context like any unknown item.
		h.ID = e.itemID("item")
		it.done = newObj(64).str("id", h.ID).str("type", o.Type).done()
		it.added = it.done
	}
	it.header = h
	return it
}

func (e *Emulator) callID(fixed string) string {
	if fixed != "" {
		return fixed
	}
	return fmt.Sprintf("call_emu%04d", e.callSeq.Add(1))
}

// encryptedContent returns an opaque token shaped like the API's Fernet-style
// blobs. It is pseudo-random but seeded per emulator, so runs are repeatable.
func (e *Emulator) encryptedContent() string {
	n := e.cfg.encSize
	raw := make([]byte, base64.StdEncoding.DecodedLen(n))
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(e.encSeq.Add(1)))
	rng := rand.NewChaCha8(seed)
	_, _ = rng.Read(raw)
	s := "gAAAAB" + base64.StdEncoding.EncodeToString(raw)
	if len(s) > n && n >= 8 {
		s = s[:n-(n%4)]
	}
	return s
}

func summaryJSON(text string) []byte {
	if text == "" {
		return nil
	}
	return append(append([]byte{'['}, summaryPart(text)...), ']')
}

func summaryPart(text string) []byte {
	return newObj(len(text)+40).str("type", "summary_text").str("text", text).done()
}

func outputTextPart(text string) []byte {
	return newObj(len(text)+80).str("type", "output_text").raw("annotations", nil, "[]").
		raw("logprobs", nil, "[]").str("text", text).done()
}

// object renders the response object at a stage of its life.
func (x *exchange) object(r *response, status string, output [][]byte, final bool) []byte {
	w := x.p.wire
	size := 512 + len(w.Tools) + len(w.Instructions)
	for _, o := range output {
		size += len(o) + 1
	}
	o := newObj(size).str("id", r.id).str("object", "response").num("created_at", r.created).
		str("status", status).boolean("background", false)
	if final && status == StatusFailed {
		o.raw("error", newObj(128).str("code", CodeServerError).str("message", "The model failed to generate a response.").done(), "")
	} else {
		o.raw("error", nil, "null")
	}
	if final && status == StatusIncomplete {
		o.raw("incomplete_details", newObj(48).str("reason", r.reason).done(), "")
	} else {
		o.raw("incomplete_details", nil, "null")
	}
	o.raw("instructions", w.Instructions, "null").raw("max_output_tokens", nil, "null").str("model", w.Model)
	o.key("output")
	o.b = append(o.b, '[')
	for i, item := range output {
		if i > 0 {
			o.b = append(o.b, ',')
		}
		o.b = append(o.b, item...)
	}
	o.b = append(o.b, ']')
	o.raw("parallel_tool_calls", w.ParallelToolCalls, "true")
	if x.p.prevID != "" {
		o.str("previous_response_id", x.p.prevID)
	} else {
		o.raw("previous_response_id", nil, "null")
	}
	o.raw("prompt_cache_key", w.PromptCacheKey, "null").
		raw("reasoning", w.Reasoning, `{"effort":null,"summary":null}`).
		raw("service_tier", w.ServiceTier, `"default"`).
		boolean("store", x.p.store).
		raw("text", w.Text, `{"format":{"type":"text"}}`).
		raw("tool_choice", w.ToolChoice, `"auto"`).
		raw("tools", w.Tools, "[]").
		str("truncation", "disabled")
	if final {
		o.raw("usage", x.usage(r, output), "")
	} else {
		o.raw("usage", nil, "null")
	}
	return o.raw("metadata", w.Metadata, "{}").done()
}

// usage estimates tokens at four bytes each; tests only need plausible,
// monotonic numbers.
func (x *exchange) usage(r *response, output [][]byte) []byte {
	in := int64(len(x.rec.Frame)/4 + 10*len(x.ctx))
	var out, reasoning int64
	for i, o := range output {
		n := int64(len(o) / 4)
		out += n
		if i < len(r.items) && r.items[i].Type == TypeReasoning {
			reasoning += n
		}
	}
	var cached int64
	if x.prev != nil {
		cached = int64(10 * len(x.prev.context))
	}
	return newObj(192).num("input_tokens", in).
		raw("input_tokens_details", newObj(32).num("cached_tokens", cached).done(), "").
		num("output_tokens", out).
		raw("output_tokens_details", newObj(32).num("reasoning_tokens", reasoning).done(), "").
		num("total_tokens", in+out).done()
}

// sink writes one event to the client.
type sink func(typ string, data []byte) error

// errHalted reports that an interrupt cut an item short.
var errHalted = errors.New("emulator: response interrupted")

// streamer numbers the events of one response and applies the per-event
// faults. Control replies about the response (steer, inject) share its
// sequence numbers, so the mutex keeps numbering and wire order together.
type streamer struct {
	ctx   context.Context
	sink  sink
	fault CreateFault
	// lane is the stream_id every event of a named lane carries.
	lane string
	// halt, when set, reports an interrupt; it is consulted before each
	// output item event.
	halt func() bool
	// complete, when set, records an item as streamed in full right before
	// its output_item.done is written, so a client reacting to that event
	// (an inject answering the call) finds it; false means interrupted.
	complete func(Item) bool

	// started and events belong to the stream goroutine.
	started bool
	events  int

	mu  sync.Mutex
	seq int64
}

// emit sends one event of the response's own stream.
func (s *streamer) emit(typ string, fields func(*jw)) error {
	return s.send(typ, fields, false, nil)
}

// item sends an output item event, which an interrupt suppresses; done is
// the header of the item an output_item.done event completes.
func (s *streamer) item(typ string, fields func(*jw), done *Item) error {
	return s.send(typ, fields, true, done)
}

func (s *streamer) send(typ string, fields func(*jw), haltable bool, done *Item) error {
	if s.started && s.fault.EventInterval > 0 {
		if err := sleepCtx(s.ctx, s.fault.EventInterval); err != nil {
			return err
		}
	}
	s.started = true
	// halt and complete take the session mutex, which control replies hold
	// while they take s.mu: never call them with s.mu held.
	switch {
	case done != nil && s.complete != nil:
		if !s.complete(*done) {
			return errHalted
		}
	case haltable && s.halt != nil && s.halt():
		return errHalted
	}
	if err := s.write(typ, fields); err != nil {
		return err
	}
	s.events++
	if s.fault.DropAfterEvents > 0 && s.events >= s.fault.DropAfterEvents {
		return errDropped
	}
	return nil
}

// control sends a reply about the response from another goroutine: no
// interval, and it does not count towards DropAfterEvents.
func (s *streamer) control(typ string, fields func(*jw)) error {
	return s.write(typ, fields)
}

func (s *streamer) write(typ string, fields func(*jw)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := newObj(256).str("type", typ)
	if s.lane != "" {
		o.str("stream_id", s.lane)
	}
	if fields != nil {
		fields(o)
	}
	o.num("sequence_number", s.seq)
	s.seq++
	return s.sink(typ, o.done())
}

// stream sends the whole event sequence of r. Between items it lets control
// frames act (f is nil over HTTP): an interrupt ends the response, a steer
// ends it when no emitted call waits for output. commit runs right before
// the terminal event so that a client which reacts to that event (chains
// from another connection, reads the records) always finds the state
// updated.
func (x *exchange) stream(s *streamer, r *response, items []*outItem, f *flight, ir InterruptReading, commit func()) error {
	if err := s.emit("response.created", func(o *jw) { o.raw("response", x.object(r, "in_progress", nil, false), "") }); err != nil {
		return err
	}
	if !r.warmup {
		if err := s.emit("response.in_progress", func(o *jw) { o.raw("response", x.object(r, "in_progress", nil, false), "") }); err != nil {
			return err
		}
	}
	done := make([]*outItem, 0, len(items))
	stop := ""
	for i, it := range items {
		if stop = f.checkpoint(false); stop != "" {
			break
		}
		err := streamItem(s, int64(i), it)
		if errors.Is(err, errHalted) {
			// The item in progress is partial and discarded.
			stop = f.checkpoint(true)
			break
		}
		if err != nil {
			return err
		}
		done = append(done, it)
		if it.header.IsCall() {
			if err := f.awaitAnswer(s.ctx, it.header.CallID); err != nil {
				return err
			}
		}
	}
	if stop == "" {
		if err := f.pause(s.ctx); err != nil {
			return err
		}
		stop = f.checkpoint(true)
	}
	r.settle(x.ctx, done, f.injectedItems(), stop, ir)
	status := r.status
	final := x.object(r, status, r.output, true)
	if r.store {
		r.final = final
	}
	commit()
	return s.emit("response."+status, func(o *jw) { o.raw("response", final, "") })
}

func streamItem(s *streamer, idx int64, it *outItem) error {
	id := it.header.ID
	head := func(o *jw) { o.str("item_id", id).num("output_index", idx) }
	steps := []struct {
		typ    string
		fields func(*jw)
	}{{"response.output_item.added", func(o *jw) { o.num("output_index", idx).raw("item", it.added, "") }}}
	add := func(typ string, f func(*jw)) {
		steps = append(steps, struct {
			typ    string
			fields func(*jw)
		}{typ, f})
	}
	text := it.spec.Text
	switch it.header.Type {
	case TypeReasoning:
		if text != "" {
			add("response.reasoning_summary_part.added", func(o *jw) {
				head(o)
				o.num("summary_index", 0).raw("part", summaryPart(""), "")
			})
			add("response.reasoning_summary_text.delta", func(o *jw) { head(o); o.num("summary_index", 0).str("delta", text) })
			add("response.reasoning_summary_text.done", func(o *jw) { head(o); o.num("summary_index", 0).str("text", text) })
			add("response.reasoning_summary_part.done", func(o *jw) {
				head(o)
				o.num("summary_index", 0).raw("part", summaryPart(text), "")
			})
		}
	case TypeMessage:
		add("response.content_part.added", func(o *jw) { head(o); o.num("content_index", 0).raw("part", outputTextPart(""), "") })
		for _, d := range splitText(text, it.deltas) {
			add("response.output_text.delta", func(o *jw) {
				head(o)
				o.num("content_index", 0).str("delta", d).raw("logprobs", nil, "[]")
			})
		}
		add("response.output_text.done", func(o *jw) {
			head(o)
			o.num("content_index", 0).str("text", text).raw("logprobs", nil, "[]")
		})
		add("response.content_part.done", func(o *jw) { head(o); o.num("content_index", 0).raw("part", outputTextPart(text), "") })
	case TypeFunctionCall:
		args := it.spec.Arguments
		add("response.function_call_arguments.delta", func(o *jw) { head(o); o.str("delta", args) })
		add("response.function_call_arguments.done", func(o *jw) { head(o); o.str("arguments", args) })
	case TypeCustomToolCall:
		add("response.custom_tool_call_input.delta", func(o *jw) { head(o); o.str("delta", text) })
		add("response.custom_tool_call_input.done", func(o *jw) { head(o); o.str("input", text) })
	}
	add("response.output_item.done", func(o *jw) { o.num("output_index", idx).raw("item", it.done, "") })
	for i, st := range steps {
		var done *Item
		if i == len(steps)-1 {
			done = &it.header
		}
		if err := s.item(st.typ, st.fields, done); err != nil {
			return err
		}
	}
	return nil
}

// splitText cuts text into n pieces on rune boundaries (fewer when the text
// is shorter than n runes); an empty text yields one empty delta.
func splitText(text string, n int) []string {
	runes := utf8.RuneCountInString(text)
	if n < 1 {
		n = 1
	}
	if n > runes {
		n = runes
	}
	if n <= 1 {
		return []string{text}
	}
	out := make([]string, 0, n)
	per, extra := runes/n, runes%n
	start := 0
	for i := 0; i < n; i++ {
		count := per
		if i < extra {
			count++
		}
		end := start
		for c := 0; c < count; c++ {
			_, size := utf8.DecodeRuneInString(text[end:])
			end += size
		}
		out = append(out, text[start:end])
		start = end
	}
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
