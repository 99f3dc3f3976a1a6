// Package policytest runs policy fixtures: YAML files that give a turn context and the
// outcome the policies must produce. policyctl test and go test both use it, so a fixture
// means the same thing everywhere.
package policytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"chainmend/engine"
	"chainmend/responses"
)

// File is one fixture file.
type File struct {
	Name     string   `yaml:"name"`
	Doc      string   `yaml:"description"`
	Defaults Defaults `yaml:"defaults"`
	Cases    []Case   `yaml:"cases"`
	path     string
}

// Path is the file the fixtures were read from, as it was named to LoadFiles or ParseFile.
func (f *File) Path() string { return f.path }

// Defaults apply to every case of a file unless the case says otherwise.
type Defaults struct {
	Mode      string   `yaml:"mode"`
	Transport string   `yaml:"transport"`
	Stage     string   `yaml:"stage"`
	Ignore    []string `yaml:"ignore_fired"`
	State     *State   `yaml:"state"`
}

// Case is one fixture: a turn context and the expected outcome.
type Case struct {
	Name      string    `yaml:"name"`
	Doc       string    `yaml:"description"`
	Stage     string    `yaml:"stage"`
	Mode      string    `yaml:"mode"`
	Transport string    `yaml:"transport"`
	Request   yaml.Node `yaml:"request"`
	// Response is the response of a post_response case.
	Response *ResponseState `yaml:"response"`
	State    *State         `yaml:"state"`
	// Enforce lists shadow rules that act as enforced in this case, so that an alternative
	// reading shipped as a shadow rule has fixtures of its own.
	Enforce []string `yaml:"enforce"`
	Expect  Expect   `yaml:"expect"`
	line    int
	// node is the case's mapping, to point a failure at the line of its expectation.
	node *yaml.Node
}

// ResponseState is the response a post_response case bookkeeps; Output holds its output
// items (YAML mappings). The other fields are the facts the gateway collects while the
// response is in flight (engine.Response).
type ResponseState struct {
	ID     string      `yaml:"id"`
	Status string      `yaml:"status"`
	Event  string      `yaml:"event"`
	Output []yaml.Node `yaml:"output"`
	// IncompleteReason is the terminal event's incomplete_details.reason.
	IncompleteReason string `yaml:"incomplete_reason"`
	// ServerStarted marks a response the server started by itself (a steer's successor).
	ServerStarted bool `yaml:"server_started"`
	// InjectedOutputs are the call ids response.inject frames answered.
	InjectedOutputs []string `yaml:"injected_outputs"`
	// Interrupted and InterruptMode describe the client's response.interrupt.
	Interrupted   bool   `yaml:"interrupted"`
	InterruptMode string `yaml:"interrupt_mode"`
	// TerminalCalls are the call ids in the terminal event's own output list; giving them
	// (even as []) says the terminal event carried one, so TerminalOutput defaults to true.
	TerminalCalls  *[]string `yaml:"terminal_calls"`
	TerminalOutput *bool     `yaml:"terminal_output"`
}

// State is the session and upstream state of a case. Missing fields are zero: no anchor,
// pending unknown, fresh upstream connection, no replay (the store answered: none), no
// previous turn, default lane.
type State struct {
	Turn     *int           `yaml:"turn"`
	Lane     *string        `yaml:"lane"`
	Anchor   *string        `yaml:"anchor"`
	Pending  *PendingState  `yaml:"pending"`
	Cached   *string        `yaml:"cached"`
	Replay   *ReplayState   `yaml:"replay"`
	Previous *PreviousState `yaml:"previous"`
	Error    *ErrorState    `yaml:"error"`
	Recovery *RecoveryState `yaml:"recovery"`
}

// PendingState gives the pending calls of the anchor. Calls are "call_id" or
// "call_id:kind" (kind defaults to function_call).
type PendingState struct {
	Known      *bool    `yaml:"known"`
	ResponseID string   `yaml:"response_id"`
	Calls      []string `yaml:"calls"`
}

// ReplayState describes the transcript; Items are JSON items (YAML mappings). A given
// replay is available unless Available is false (the store answered: no transcript); Known
// false means the store did not answer, and no transcript is available then either.
type ReplayState struct {
	Known          *bool       `yaml:"known"`
	Available      *bool       `yaml:"available"`
	LastResponseID string      `yaml:"last_response_id"`
	Trimmed        bool        `yaml:"trimmed"`
	Items          []yaml.Node `yaml:"items"`
}

// PreviousState is the previous turn on this connection. Same copies the current request's
// non-input fields (nothing changed); Request gives them explicitly; Context lists the items
// of the previous full logical input.
type PreviousState struct {
	Same    bool        `yaml:"same"`
	Request yaml.Node   `yaml:"request"`
	Context []yaml.Node `yaml:"context"`
}

// ErrorState is the upstream error of an on_upstream_error case.
type ErrorState struct {
	Status    int    `yaml:"status"`
	Type      string `yaml:"type"`
	Code      string `yaml:"code"`
	Message   string `yaml:"message"`
	Param     string `yaml:"param"`
	Transport bool   `yaml:"transport"`
	// Timeout is a first-event or idle timeout; it implies Transport.
	Timeout bool `yaml:"timeout"`
}

// RecoveryState is the recovery state; Enabled defaults to true.
type RecoveryState struct {
	Enabled       *bool `yaml:"enabled"`
	Attempted     bool  `yaml:"attempted"`
	ClientWritten bool  `yaml:"client_written"`
}

// Expect is the expected outcome. Only the fields given are checked.
type Expect struct {
	Verdict     string    `yaml:"verdict"`
	Fired       *[]string `yaml:"fired"`
	Reasons     *[]string `yaml:"reasons"`
	NotFired    []string  `yaml:"not_fired"`
	Request     yaml.Node `yaml:"request"`
	Absent      []string  `yaml:"request_absent"`
	Unchanged   bool      `yaml:"unchanged"`
	Reject      *Reject   `yaml:"reject"`
	ClearAnchor *bool     `yaml:"clear_anchor"`
	Class       string    `yaml:"class"`
	Effects     *Effects  `yaml:"effects"`
	// BrokenPairing says the request is meant to leave pre_send with its pairing broken
	// (SPEC §2: a call without its output, an output without its call), as when the
	// upstream is left to refuse it; without it such a request fails the case.
	BrokenPairing bool `yaml:"broken_pairing"`
}

// Effects are the expected state changes of a stage. Only the fields given are checked; an
// empty list or "keep" checks that nothing happened.
type Effects struct {
	// Anchor is the new anchor; "" means cleared.
	Anchor *string `yaml:"anchor"`
	// Pending is the recorded pending entry (a PendingEffect); `pending: null` checks that
	// none was recorded.
	Pending       yaml.Node `yaml:"pending"`
	DeletePending *[]string `yaml:"delete_pending"`
	// Transcript is keep, append, reset or clear.
	Transcript     string  `yaml:"transcript"`
	UpstreamCached *string `yaml:"upstream_cached"`
}

// PendingEffect is an expected record_pending. Calls are "call_id" or "call_id:kind"
// (kind defaults to function_call).
type PendingEffect struct {
	ResponseID string   `yaml:"response_id"`
	Calls      []string `yaml:"calls"`
	// none is set by `pending: null`: no record is expected.
	none bool
}

// Reject is the expected rejection.
type Reject struct {
	Status          int    `yaml:"status"`
	Code            string `yaml:"code"`
	MessageContains string `yaml:"message_contains"`
}

// LoadFiles reads fixture files; each argument is a file or a directory of *.yaml files.
// Unknown fields are errors: a typo in a fixture must fail loudly.
func LoadFiles(paths ...string) ([]*File, error) {
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("load fixtures: %w", err)
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		matches, err := filepath.Glob(filepath.Join(p, "*.yaml"))
		if err != nil {
			return nil, fmt.Errorf("load fixtures: %w", err)
		}
		sort.Strings(matches)
		files = append(files, matches...)
	}
	var out []*File
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("load fixtures: %w", err)
		}
		f, err := ParseFile(path, data)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

// ParseFile parses one fixture file strictly.
func ParseFile(path string, data []byte) (*File, error) {
	f := &File{path: path}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.Name == "" {
		f.Name = strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	}
	// Record each case's line for error messages.
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err == nil && len(doc.Content) > 0 {
		root := doc.Content[0]
		for i := 0; i+1 < len(root.Content); i += 2 {
			if root.Content[i].Value == "cases" {
				for j, c := range root.Content[i+1].Content {
					if j < len(f.Cases) {
						f.Cases[j].line = c.Line
						f.Cases[j].node = c
					}
				}
			}
		}
	}
	seen := map[string]bool{}
	for i := range f.Cases {
		c := &f.Cases[i]
		if c.Name == "" {
			return nil, fmt.Errorf("%s:%d: case without name", path, c.line)
		}
		if seen[c.Name] {
			return nil, fmt.Errorf("%s:%d: duplicate case name %q", path, c.line, c.Name)
		}
		seen[c.Name] = true
		if c.Request.Kind == 0 {
			return nil, fmt.Errorf("%s:%d: case %q has no request", path, c.line, c.Name)
		}
	}
	return f, nil
}

// nodeJSON converts a YAML node to JSON bytes.
func nodeJSON(n *yaml.Node) ([]byte, error) {
	var v any
	if err := n.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(normalize(v))
}

// normalize turns YAML's map[string]any / map[any]any into JSON-encodable values.
func normalize(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = normalize(e)
		}
		return t
	case map[any]any:
		m := make(map[string]any, len(t))
		for k, e := range t {
			m[fmt.Sprint(k)] = normalize(e)
		}
		return m
	case []any:
		for i, e := range t {
			t[i] = normalize(e)
		}
		return t
	}
	return v
}

// BuildTurn makes the engine turn context of a case.
func BuildTurn(f *File, c *Case) (*engine.Turn, error) {
	raw, err := nodeJSON(&c.Request)
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	req, err := responses.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	t := &engine.Turn{
		Request:   req,
		Mode:      firstNonEmpty(c.Mode, f.Defaults.Mode, engine.ModeRepair),
		Transport: firstNonEmpty(c.Transport, f.Defaults.Transport, engine.TransportWebSocket),
		Number:    1,
		Recovery:  engine.Recovery{Enabled: true},
		Replay:    engine.Replay{Known: true},
	}
	if c.Response != nil {
		if t.Response, err = responseOf(c.Response); err != nil {
			return nil, err
		}
	}
	for _, st := range []*State{f.Defaults.State, c.State} {
		if st == nil {
			continue
		}
		if err := applyState(t, st); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func applyState(t *engine.Turn, st *State) error {
	if st.Turn != nil {
		t.Number = *st.Turn
	}
	if st.Lane != nil {
		t.Lane = *st.Lane
	}
	if st.Anchor != nil {
		t.Anchor = *st.Anchor
	}
	if st.Cached != nil {
		t.Cached = *st.Cached
	}
	if p := st.Pending; p != nil {
		t.Pending = engine.Pending{Known: true, ResponseID: p.ResponseID}
		if p.Known != nil {
			t.Pending.Known = *p.Known
		}
		if t.Pending.ResponseID == "" {
			t.Pending.ResponseID = t.Anchor
		}
		for _, c := range p.Calls {
			id, kind, ok := strings.Cut(c, ":")
			if !ok {
				kind = responses.TypeFunctionCall
			}
			t.Pending.Calls = append(t.Pending.Calls, engine.PendingCall{ID: id, Kind: kind})
		}
	}
	if r := st.Replay; r != nil {
		replay, err := replayOf(r)
		if err != nil {
			return err
		}
		t.Replay = replay
	}
	if p := st.Previous; p != nil {
		prev := &engine.Previous{FieldDigests: map[string]uint64{}}
		switch {
		case p.Same:
			prev.FieldDigests = t.Request.FieldDigests()
		case p.Request.Kind != 0:
			raw, err := nodeJSON(&p.Request)
			if err != nil {
				return fmt.Errorf("previous.request: %w", err)
			}
			pr, err := responses.Parse(raw)
			if err != nil {
				return fmt.Errorf("previous.request: %w", err)
			}
			prev.FieldDigests = pr.FieldDigests()
		}
		for i := range p.Context {
			it, err := itemOf(&p.Context[i])
			if err != nil {
				return fmt.Errorf("previous.context item %d: %w", i, err)
			}
			prev.ItemKeys = append(prev.ItemKeys, it.Key())
		}
		t.Previous = prev
	}
	if e := st.Error; e != nil {
		t.Error = &engine.UpstreamError{Status: e.Status, Type: e.Type, Code: e.Code, Message: e.Message, Param: e.Param,
			Transport: e.Transport || e.Timeout, Timeout: e.Timeout}
	}
	if r := st.Recovery; r != nil {
		t.Recovery = engine.Recovery{Enabled: true, Attempted: r.Attempted, ClientWritten: r.ClientWritten}
		if r.Enabled != nil {
			t.Recovery.Enabled = *r.Enabled
		}
	}
	return nil
}

// replayOf builds the transcript of a replay state.
func replayOf(r *ReplayState) (engine.Replay, error) {
	known := r.Known == nil || *r.Known
	if !known || (r.Available != nil && !*r.Available) {
		if r.LastResponseID != "" || r.Trimmed || len(r.Items) > 0 {
			return engine.Replay{}, fmt.Errorf("replay: known: false and available: false describe no transcript; drop last_response_id, trimmed and items")
		}
		return engine.Replay{Known: known}, nil
	}
	replay := engine.Replay{Known: true, Available: true, LastResponseID: r.LastResponseID, Trimmed: r.Trimmed, Items: []responses.Item{}}
	for i := range r.Items {
		it, err := itemOf(&r.Items[i])
		if err != nil {
			return engine.Replay{}, fmt.Errorf("replay item %d: %w", i, err)
		}
		replay.Items = append(replay.Items, it)
	}
	return replay, nil
}

// responseOf builds the response of a post_response case. Contradictory facts are refused:
// a fixture that cannot happen pins nothing.
func responseOf(r *ResponseState) (*engine.Response, error) {
	resp := &engine.Response{ID: r.ID, Status: r.Status, Event: r.Event, IncompleteReason: r.IncompleteReason,
		ServerStarted: r.ServerStarted, Injected: r.InjectedOutputs, Interrupted: r.Interrupted, InterruptMode: r.InterruptMode}
	if r.InterruptMode != "" && !r.Interrupted {
		return nil, fmt.Errorf("response: interrupt_mode %q without interrupted: true", r.InterruptMode)
	}
	if r.TerminalCalls != nil {
		resp.TerminalCalls, resp.TerminalOutput = *r.TerminalCalls, true
	}
	if r.TerminalOutput != nil {
		if !*r.TerminalOutput && len(resp.TerminalCalls) > 0 {
			return nil, fmt.Errorf("response: terminal_calls given with terminal_output: false (a terminal event without an output list names no calls)")
		}
		resp.TerminalOutput = *r.TerminalOutput
	}
	for i := range r.Output {
		it, err := itemOf(&r.Output[i])
		if err != nil {
			return nil, fmt.Errorf("response output item %d: %w", i, err)
		}
		resp.Items = append(resp.Items, it)
	}
	return resp, nil
}

func itemOf(n *yaml.Node) (responses.Item, error) {
	raw, err := nodeJSON(n)
	if err != nil {
		return responses.Item{}, err
	}
	return responses.ParseItem(raw)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// ExplainState is the --state file of policyctl explain: the fixture state plus the mode,
// transport, stage and, for post_response, the response.
type ExplainState struct {
	Mode      string         `yaml:"mode"`
	Transport string         `yaml:"transport"`
	Stage     string         `yaml:"stage"`
	Response  *ResponseState `yaml:"response"`
	State     `yaml:",inline"`
}

// BuildExplainTurn builds a turn from a raw request and an optional state file.
func BuildExplainTurn(request, state []byte) (*engine.Turn, string, error) {
	req, err := responses.Parse(request)
	if err != nil {
		return nil, "", fmt.Errorf("request: %w", err)
	}
	var es ExplainState
	if len(bytes.TrimSpace(state)) > 0 {
		dec := yaml.NewDecoder(bytes.NewReader(state))
		dec.KnownFields(true)
		if err := dec.Decode(&es); err != nil {
			return nil, "", fmt.Errorf("state: %w", err)
		}
	}
	t := &engine.Turn{
		Request:   req,
		Mode:      firstNonEmpty(es.Mode, engine.ModeRepair),
		Transport: firstNonEmpty(es.Transport, engine.TransportWebSocket),
		Number:    1,
		Recovery:  engine.Recovery{Enabled: true},
		Replay:    engine.Replay{Known: true},
	}
	if es.Response != nil {
		if t.Response, err = responseOf(es.Response); err != nil {
			return nil, "", err
		}
	}
	if err := applyState(t, &es.State); err != nil {
		return nil, "", err
	}
	return t, firstNonEmpty(es.Stage, engine.StagePreSend), nil
}
