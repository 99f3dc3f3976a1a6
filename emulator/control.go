package emulator

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Why a response stopped before its script's end, in response.stop.
const (
	stopSteered     = "steered"
	stopInterrupted = "interrupted"
)

// steer is one response.steer submission.
type steer struct {
	// id is issued on acceptance; failures before that omit it.
	id     string
	prevID string
	// lane is the frame's own stream_id, when it named one.
	lane    string
	hasLane bool
	// orig is the input as sent, echoed by response.steer.failed; items and
	// raw are its messages as the successor's input.
	orig  json.RawMessage
	items []Item
	raw   []json.RawMessage
	rec   *Control
}

// flight is a response being streamed on a WebSocket: what steer, inject
// and interrupt frames act on. Its fields are guarded by the session mutex;
// only the stream goroutine waits on wake.
type flight struct {
	s    *wsSession
	r    *response
	st   *streamer
	lane *lane

	awaitInject, awaitControl bool

	// ended is set at the last point where control frames change the
	// response; stop says why it ended early.
	ended bool
	stop  string
	// emitted holds the items streamed in full so far.
	emitted []Item
	// answered holds the call ids response.inject answered; injected the
	// outputs in arrival order.
	answered map[string]struct{}
	injected []Item
	// steers were accepted while the response ran; late ones arrived after
	// its last checkpoint and are answered once the terminal event is out.
	steers      []*steer
	late        []*steer
	interrupted bool
	signalled   bool
	wake        chan struct{}
}

// open registers a response before its first event, so that a control frame
// naming it right after response.created finds it.
func (s *wsSession) open(ln *lane, r *response, t Turn, st *streamer) *flight {
	f := &flight{
		s:            s,
		r:            r,
		st:           st,
		lane:         ln,
		awaitInject:  t.AwaitInject,
		awaitControl: t.AwaitControl,
		answered:     make(map[string]struct{}),
		wake:         make(chan struct{}, 1),
	}
	st.halt = f.halted
	st.complete = f.complete
	s.mu.Lock()
	s.flights[r.id] = f
	s.mu.Unlock()
	return f
}

// signalLocked wakes the stream goroutine; the caller holds the session mutex.
func (f *flight) signalLocked() {
	f.signalled = true
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// checkpoint runs before each output item and before the terminal event. It
// reports whether the response must stop now: interrupted, or steered (only
// while no call the response emitted still waits for its output, because
// then the steering stays queued for the client's continuation). final marks
// the last checkpoint.
func (f *flight) checkpoint(final bool) string {
	if f == nil {
		return ""
	}
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	stop := ""
	switch {
	case f.interrupted:
		stop = stopInterrupted
	case len(f.steers) > 0 && len(f.owedLocked()) == 0:
		stop = stopSteered
	}
	if stop != "" || final {
		f.ended = true
		f.stop = stop
	}
	return stop
}

// halted lets the streamer cut an item short when an interrupt arrives.
func (f *flight) halted() bool {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	return f.interrupted
}

// complete records an item as streamed in full unless an interrupt came
// first; it runs right before the item's output_item.done is written.
func (f *flight) complete(it Item) bool {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if f.interrupted {
		return false
	}
	f.emitted = append(f.emitted, it)
	return true
}

// owedLocked returns the calls the response emitted that no inject answered.
func (f *flight) owedLocked() []Item {
	var out []Item
	for _, it := range f.emitted {
		if it.IsCall() {
			if _, ok := f.answered[it.CallID]; !ok {
				out = append(out, it)
			}
		}
	}
	return out
}

// awaitAnswer holds a Turn.AwaitInject response after a call until an
// inject answers it or an interrupt ends the response.
func (f *flight) awaitAnswer(ctx context.Context, callID string) error {
	if f == nil || !f.awaitInject {
		return nil
	}
	for {
		f.s.mu.Lock()
		_, ok := f.answered[callID]
		stop := f.interrupted
		f.s.mu.Unlock()
		if ok || stop {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-f.wake:
		}
	}
}

// pause holds a Turn.AwaitControl response before its terminal event until a
// control frame names it.
func (f *flight) pause(ctx context.Context) error {
	if f == nil || !f.awaitControl {
		return nil
	}
	for {
		f.s.mu.Lock()
		ok := f.signalled
		f.s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-f.wake:
		}
	}
}

func (f *flight) injectedItems() []Item {
	if f == nil {
		return nil
	}
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	return slices.Clone(f.injected)
}

// abandon unregisters the flight of a response whose stream broke.
func (s *wsSession) abandon(f *flight) {
	if f == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f.ended = true
	delete(s.flights, f.r.id)
	s.noteEndedLocked(f.r.id, f.lane.name)
}

// land runs once the terminal event is out: it answers the steering the
// response did not apply, unregisters the flight, and returns the steers a
// successor must carry when the response was steered.
func (s *wsSession) land(ctx context.Context, f *flight) []*steer {
	if f == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := f.r
	delete(s.flights, r.id)
	s.noteEndedLocked(r.id, f.lane.name)
	var next []*steer
	switch f.stop {
	case stopSteered:
		// Steering that arrived after the last checkpoint joins the
		// successor, which has not started yet.
		next = f.steers
		for _, st := range f.late {
			s.acceptLocked(ctx, f.st, f.lane.name, st)
			next = append(next, st)
		}
	case stopInterrupted:
		for _, st := range append(slices.Clone(f.steers), f.late...) {
			s.steerFailedLocked(ctx, f.st, f.lane.name, st, CodeResponseNotActive,
				"The response was interrupted before the steering input could be applied.")
		}
	default:
		owed := owedCalls(r)
		holds := f.lane.last == r && len(owed) > 0
		for _, st := range f.steers {
			if !holds {
				s.steerFailedLocked(ctx, f.st, f.lane.name, st, CodeResponseNotActive,
					"The response ended before the steering input could be applied.")
				continue
			}
			s.steerPendingLocked(ctx, f.st, f.lane, st, owed)
		}
		for _, st := range f.late {
			if !holds {
				s.steerFailedLocked(ctx, f.st, f.lane.name, st, CodeResponseAlreadyCompleted,
					"The response has already completed and is no longer accepting steering input.")
				continue
			}
			s.acceptLocked(ctx, f.st, f.lane.name, st)
			s.steerPendingLocked(ctx, f.st, f.lane, st, owed)
		}
	}
	return next
}

// owedCalls returns the calls of r's output that its context does not
// answer: what a continuation of r must send outputs for.
func owedCalls(r *response) []Item {
	answered := make(map[string]struct{})
	for _, it := range r.context {
		if it.IsOutput() {
			answered[it.CallID] = struct{}{}
		}
	}
	var out []Item
	for _, it := range r.items {
		if !it.IsCall() {
			continue
		}
		if _, ok := answered[it.CallID]; !ok {
			out = append(out, it)
		}
	}
	return out
}

// successor builds the response the server starts by itself after a steer.
// When it cannot be created the steering goes back to the client with
// response.steer.failed, and the steered response stays the lane's latest.
func (s *wsSession) successor(ctx context.Context, ln *lane, parent *exchange, r *response, steers []*steer) *exchange {
	x := s.e.beginSuccessor(s.conn, parent, r, steers, ln.name)
	if x.err == nil {
		s.e.updateControls(steers, "steered")
		return x
	}
	s.e.finish(x, OutcomeError, nil, x.err)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range steers {
		s.steerFailedLocked(ctx, nil, ln.name, st, CodeSuccessorCreationFailed, x.err.Message)
	}
	return nil
}

// controlFrame writes a reply that belongs to no event stream of its own: on
// a live response it continues that response's sequence numbers, otherwise
// it carries sequence_number 0.
func (s *wsSession) controlFrame(ctx context.Context, st *streamer, lane, typ string, fields func(*jw)) {
	if st != nil {
		_ = st.control(typ, fields)
		return
	}
	o := newObj(256).str("type", typ)
	if lane != "" {
		o.str("stream_id", lane)
	}
	fields(o)
	o.num("sequence_number", 0)
	_ = s.send(ctx, typ, lane, o.done())
}

func (s *wsSession) acceptLocked(ctx context.Context, st *streamer, lane string, sr *steer) {
	sr.id = fmt.Sprintf("steer_emu%04d", s.e.steerSeq.Add(1))
	s.e.updateControl(sr.rec, func(c *Control) { c.Outcome = "accepted"; c.SteerID = sr.id; c.Lane = lane })
	s.controlFrame(ctx, st, lane, "response.steer.accepted", func(o *jw) {
		o.raw("steer", newObj(96).str("id", sr.id).str("previous_response_id", sr.prevID).done(), "")
	})
}

func (s *wsSession) steerPendingLocked(ctx context.Context, st *streamer, ln *lane, sr *steer, owed []Item) {
	ln.steers = append(ln.steers, sr)
	s.e.updateControl(sr.rec, func(c *Control) { c.Outcome = "pending" })
	s.controlFrame(ctx, st, ln.name, "response.steer.pending", func(o *jw) {
		o.raw("steer", newObj(96).str("id", sr.id).str("previous_response_id", sr.prevID).done(), "").
			str("reason", "waiting_for_required_input").
			raw("required_input", requiredInput(owed), "[]")
	})
}

func (s *wsSession) steerFailedLocked(ctx context.Context, st *streamer, lane string, sr *steer, code, msg string) {
	s.e.updateControl(sr.rec, func(c *Control) { c.Outcome = "failed"; c.Code = code; c.Lane = lane })
	body := newObj(len(sr.orig) + 96)
	if sr.id != "" {
		body.str("id", sr.id)
	}
	if sr.prevID != "" {
		body.str("previous_response_id", sr.prevID)
	}
	body.raw("input", sr.orig, "null")
	s.controlFrame(ctx, st, lane, "response.steer.failed", func(o *jw) {
		o.raw("steer", body.done(), "").
			raw("error", newObj(len(msg)+96).str("type", TypeInvalidRequest).str("code", code).str("message", msg).done(), "")
	})
}

// requiredInput renders the stubs of response.steer.pending: one output
// shape per owed call, identifying fields only.
func requiredInput(calls []Item) []byte {
	b := []byte{'['}
	for i, c := range calls {
		if i > 0 {
			b = append(b, ',')
		}
		o := newObj(96)
		switch c.Type {
		case TypeCustomToolCall:
			o.str("type", TypeCustomToolCallOutput).str("call_id", c.CallID)
		case TypeLocalShellCall:
			o.str("type", TypeLocalShellCallOutput).str("call_id", c.CallID)
		default:
			o.str("type", TypeFunctionCallOutput).str("call_id", c.CallID).str("name", c.Name)
		}
		b = append(b, o.done()...)
	}
	return append(b, ']')
}

// steer answers a response.steer frame. While the target streams, the
// steering is accepted and applied at the next item boundary; after it
// ended with tool output owed, it is accepted and queued (pending) for the
// continuation; otherwise it fails and the input is handed back.
func (s *wsSession) steer(ctx context.Context, data []byte, fr *Frame) {
	s.e.count.steers.Add(1)
	sr, msg := parseSteer(data)
	sr.rec = s.e.addControl(&Control{Conn: s.conn.seq, Type: typeSteer, ResponseID: sr.prevID, Frame: data})
	if sr.hasLane {
		s.conn.setType(fr, typeSteer, sr.lane)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if msg != "" {
		s.steerFailedLocked(ctx, nil, "", sr, CodeInvalidInput, msg)
		return
	}
	onLane := func(name string) bool { return !sr.hasLane || sr.lane == name }
	if f := s.flights[sr.prevID]; f != nil && onLane(f.lane.name) {
		if f.ended {
			f.late = append(f.late, sr)
			return
		}
		s.acceptLocked(ctx, f.st, f.lane.name, sr)
		f.steers = append(f.steers, sr)
		f.signalLocked()
		return
	}
	if ln := s.holderLocked(sr.prevID); ln != nil && onLane(ln.name) {
		if owed := owedCalls(ln.last); len(owed) > 0 {
			s.acceptLocked(ctx, nil, ln.name, sr)
			s.steerPendingLocked(ctx, nil, ln, sr, owed)
			return
		}
	}
	if name, ok := s.ended[sr.prevID]; ok && onLane(name) {
		s.steerFailedLocked(ctx, nil, name, sr, CodeResponseAlreadyCompleted,
			"The response has already completed and is no longer accepting steering input.")
		return
	}
	s.steerFailedLocked(ctx, nil, "", sr, CodeResponseNotFound,
		fmt.Sprintf("Response with id '%s' is not available on this websocket connection.", sr.prevID))
}

// parseSteer decodes a steer frame. A non-empty message means the frame is
// invalid (response.steer.failed with invalid_input): the event takes only
// type, previous_response_id, input and stream_id, and input is a string or
// a non-empty array of user messages.
func parseSteer(data []byte) (*steer, string) {
	sr := &steer{}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return sr, "The steering event must be a JSON object."
	}
	if v, ok := raw["previous_response_id"]; ok {
		_ = json.Unmarshal(v, &sr.prevID)
	}
	sr.orig = raw["input"]
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch k {
		case "type", "previous_response_id", "input", "stream_id":
		default:
			return sr, fmt.Sprintf("Unknown parameter: '%s'. response.steer accepts only 'type', 'previous_response_id' and 'input'.", k)
		}
	}
	if v, ok := raw["stream_id"]; ok {
		name, _, valid := parseLane(v)
		if !valid {
			return sr, invalidStreamIDMessage
		}
		sr.lane, sr.hasLane = name, true
	}
	if sr.prevID == "" {
		return sr, "Missing required parameter: 'previous_response_id'."
	}
	items, msgs, msg := steerInput(sr.orig)
	if msg != "" {
		return sr, msg
	}
	sr.items, sr.raw = items, msgs
	return sr, ""
}

// steerInput validates steering input and returns it as user messages.
func steerInput(in json.RawMessage) ([]Item, []json.RawMessage, string) {
	const bad = "Invalid 'input': expected a string or a non-empty array of user messages."
	if len(in) == 0 {
		return nil, nil, "Missing required parameter: 'input'."
	}
	if in[0] == '"' {
		var text string
		if json.Unmarshal(in, &text) != nil || text == "" {
			return nil, nil, bad
		}
		msg := newObj(len(in)+48).str("type", TypeMessage).str("role", "user").raw("content", compactRaw(in), "").done()
		return []Item{{Type: TypeMessage, Role: "user"}}, []json.RawMessage{msg}, ""
	}
	var list []json.RawMessage
	if json.Unmarshal(in, &list) != nil || len(list) == 0 {
		return nil, nil, bad
	}
	items := make([]Item, len(list))
	for i, m := range list {
		if msg := steerMessage(m); msg != "" {
			return nil, nil, fmt.Sprintf("Invalid 'input[%d]': %s", i, msg)
		}
		items[i] = Item{Type: TypeMessage, Role: "user"}
		list[i] = compactRaw(m)
	}
	return items, list, ""
}

func steerMessage(m json.RawMessage) string {
	var fields map[string]json.RawMessage
	if json.Unmarshal(m, &fields) != nil {
		return "expected a message object."
	}
	for k := range fields {
		switch k {
		case "type", "role", "content":
		default:
			return fmt.Sprintf("unknown field '%s'; steering messages take only 'type', 'role' and 'content'.", k)
		}
	}
	var typ, role string
	if v, ok := fields["type"]; ok && (json.Unmarshal(v, &typ) != nil || typ != TypeMessage) {
		return "only messages can steer a response."
	}
	if json.Unmarshal(fields["role"], &role) != nil || role != "user" {
		return "only messages with the 'user' role can steer a response."
	}
	content := fields["content"]
	if len(content) == 0 {
		return "missing 'content'."
	}
	if content[0] == '"' {
		return ""
	}
	var parts []struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(content, &parts) != nil || len(parts) == 0 {
		return "'content' must be a string or a non-empty array of input parts."
	}
	for _, p := range parts {
		switch p.Type {
		case "input_text", "input_image", "input_file":
		default:
			return fmt.Sprintf("content part type '%s' is not supported for steering.", p.Type)
		}
	}
	return ""
}

// steerFrame assembles the frame recorded for a successor: a steer naming
// the steered response, with every accepted steering message as input.
func steerFrame(prevID string, steers []*steer) []byte {
	b := newObj(256).str("type", typeSteer).str("previous_response_id", prevID)
	b.key("input")
	b.b = append(b.b, '[')
	n := 0
	for _, st := range steers {
		for _, m := range st.raw {
			if n > 0 {
				b.b = append(b.b, ',')
			}
			b.b = append(b.b, m...)
			n++
		}
	}
	b.b = append(b.b, ']')
	return b.done()
}

func steerItems(steers []*steer) []Item {
	var out []Item
	for _, st := range steers {
		out = append(out, st.items...)
	}
	return out
}

func steerIDs(steers []*steer) []string {
	var out []string
	for _, st := range steers {
		out = append(out, st.id)
	}
	return out
}

// errInjectNeedsBeta answers response.inject on a connection opened without
// the multi-agent beta header (emulator wording).
func errInjectNeedsBeta() *APIError {
	return invalidRequest(CodeInvalidValue, "type",
		"Invalid value: 'response.inject'. response.inject requires the 'OpenAI-Beta: %s' header on the websocket handshake.", multiAgentBeta)
}

// inject answers a response.inject frame: tool outputs for calls an
// in-flight response already emitted. They become part of that response's
// context, so a continuation must not answer those calls again.
func (s *wsSession) inject(ctx context.Context, data []byte) {
	s.e.count.injects.Add(1)
	var v struct {
		ResponseID *string         `json:"response_id"`
		Input      json.RawMessage `json:"input"`
	}
	rec := s.e.addControl(&Control{Conn: s.conn.seq, Type: typeInject, Frame: data})
	fail := func(lane string, err *APIError) {
		s.e.updateControl(rec, func(c *Control) { c.Outcome = "error"; c.Code = err.Code; c.Lane = lane })
		_ = s.sendError(ctx, lane, err)
	}
	if !s.beta {
		fail("", errInjectNeedsBeta())
		return
	}
	if err := json.Unmarshal(data, &v); err != nil {
		fail("", decodeError(err))
		return
	}
	if v.ResponseID == nil || *v.ResponseID == "" {
		fail("", errMissingParam("response_id"))
		return
	}
	id := *v.ResponseID
	s.e.updateControl(rec, func(c *Control) { c.ResponseID = id })
	outs, apiErr := injectInput(v.Input)
	if apiErr != nil {
		fail("", apiErr)
		return
	}

	s.mu.Lock()
	f := s.flights[id]
	if f != nil && !f.ended {
		if err := f.checkInjectLocked(outs); err != nil {
			s.mu.Unlock()
			fail(f.lane.name, err)
			return
		}
		for _, it := range outs {
			f.answered[it.CallID] = struct{}{}
			f.injected = append(f.injected, it)
		}
		s.e.updateControl(rec, func(c *Control) { c.Outcome = "created"; c.Lane = f.lane.name })
		_ = f.st.control("response.inject.created", func(o *jw) { o.str("response_id", id) })
		f.signalLocked()
		s.mu.Unlock()
		return
	}
	lane, known := "", false
	if f != nil {
		lane, known = f.lane.name, true
	} else {
		lane, known = s.ended[id]
	}
	s.mu.Unlock()
	code, msg := CodeResponseNotFound, fmt.Sprintf("Response with id '%s' is not available on this websocket connection.", id)
	if known {
		code, msg = CodeResponseAlreadyCompleted, fmt.Sprintf("Response '%s' has already completed; send the input with response.create instead.", id)
	} else {
		lane = ""
	}
	s.e.updateControl(rec, func(c *Control) { c.Outcome = "failed"; c.Code = code; c.Lane = lane })
	s.controlFrame(ctx, nil, lane, "response.inject.failed", func(o *jw) {
		o.str("response_id", id).raw("input", compactRaw(v.Input), "null").
			raw("error", newObj(len(msg)+64).str("code", code).str("message", msg).done(), "")
	})
}

// injectInput decodes injected items: a non-empty array of tool outputs.
func injectInput(in json.RawMessage) ([]Item, *APIError) {
	if len(in) == 0 {
		return nil, errMissingParam("input")
	}
	var list []wireItem
	if json.Unmarshal(in, &list) != nil || len(list) == 0 {
		return nil, invalidRequest(CodeInvalidValue, "input", "Invalid 'input': expected a non-empty array of tool outputs.")
	}
	out := make([]Item, len(list))
	for i, w := range list {
		it := Item{Type: w.Type, ID: w.ID, CallID: w.CallID}
		if !it.IsOutput() {
			return nil, invalidRequest(CodeInvalidValue, itemParam(i, "type"),
				"Invalid value: '%s'. response.inject accepts only tool outputs (%s).", w.Type,
				strings.Join([]string{TypeFunctionCallOutput, TypeCustomToolCallOutput, TypeLocalShellCallOutput}, ", "))
		}
		if it.CallID == "" {
			return nil, errMissingParam(itemParam(i, "call_id"))
		}
		out[i] = it
	}
	return out, nil
}

// checkInjectLocked applies the pairing rules to injected outputs: each
// answers a call the response emitted, once.
func (f *flight) checkInjectLocked(outs []Item) *APIError {
	calls := make(map[string]string)
	for _, it := range f.emitted {
		if it.IsCall() {
			calls[it.CallID] = it.Type
		}
	}
	seen := make(map[string]struct{})
	for _, it := range outs {
		kind, ok := calls[it.CallID]
		if !ok || !it.answers(kind) {
			return errNoToolCall(it.Type, it.CallID)
		}
		_, dup := seen[it.CallID]
		_, done := f.answered[it.CallID]
		if dup || done {
			return errDuplicateOutput(it.CallID)
		}
		seen[it.CallID] = struct{}{}
	}
	return nil
}

// interrupt answers response.interrupt: the named in-flight response ends
// early (how, per WithInterrupt). An interrupt that loses the race with the
// terminal event is ignored; one naming no response of the connection gets
// an error frame.
func (s *wsSession) interrupt(ctx context.Context, data []byte) {
	s.e.count.interrupts.Add(1)
	rec := s.e.addControl(&Control{Conn: s.conn.seq, Type: typeInterrupt, Frame: data})
	fail := func(err *APIError) {
		s.e.updateControl(rec, func(c *Control) { c.Outcome = "error"; c.Code = err.Code })
		_ = s.sendError(ctx, "", err)
	}
	var v struct {
		ResponseID *string `json:"response_id"`
		Mode       *string `json:"mode"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		fail(decodeError(err))
		return
	}
	if v.ResponseID == nil || *v.ResponseID == "" {
		fail(errMissingParam("response_id"))
		return
	}
	if v.Mode != nil && *v.Mode != "discard_partial_items" {
		fail(invalidRequest(CodeInvalidValue, "mode", "Invalid value: '%s'. Supported values are: 'discard_partial_items'.", *v.Mode))
		return
	}
	id := *v.ResponseID
	s.e.updateControl(rec, func(c *Control) { c.ResponseID = id })
	s.mu.Lock()
	f := s.flights[id]
	if f != nil && !f.ended {
		// Record before waking the stream, so a client that reads the
		// terminal event finds the outcome.
		s.e.updateControl(rec, func(c *Control) { c.Outcome = "interrupted"; c.Lane = f.lane.name })
		f.interrupted = true
		f.signalLocked()
		s.mu.Unlock()
		return
	}
	_, known := s.ended[id]
	s.mu.Unlock()
	if f != nil || known {
		s.e.updateControl(rec, func(c *Control) { c.Outcome = "ignored" })
		return
	}
	fail(ErrResponseNotFound(id))
}
