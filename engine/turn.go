package engine

import "chainmend/responses"

// Modes of the normalizer (SPEC §3): repair fixes violations, strict rejects them.
const (
	ModeRepair = "repair"
	ModeStrict = "strict"
)

// Transports a turn can arrive on.
const (
	TransportWebSocket = "websocket"
	TransportHTTP      = "http"
)

// Turn is the turn context: the request and every fact the gateway knows about the session.
// Evaluation mutates Request, Replayed, Anchor and Pending (set_anchor, clear_anchor),
// Cached (set_upstream_cached) and Error.Class (classify); everything else is read-only.
// The state changes the gateway must apply are in Outcome.Effects. A Turn must not be
// shared between goroutines while it is evaluated.
type Turn struct {
	// Request is the request: as the client sent it in pre_send, as it was sent upstream
	// in on_upstream_error and post_response.
	Request *responses.Request
	// Mode is ModeRepair or ModeStrict.
	Mode string
	// Transport is TransportWebSocket or TransportHTTP.
	Transport string
	// Number counts the turns of this client connection, from 1.
	Number int
	// Anchor is the session anchor: the last response id of the session (connection
	// memory, else the store); "" when none. In post_response it is the anchor at the
	// start of the turn.
	Anchor string
	// Lane is the lane (stream_id) of the turn; "" is the default lane.
	Lane string
	// Pending are the unanswered calls of Anchor.
	Pending Pending
	// Cached is the response the current upstream connection holds and can chain to; ""
	// when it holds none (a fresh connection).
	Cached string
	// Replay describes the session's replay transcript.
	Replay Replay
	// Previous is the previous turn's payload on this connection; nil when there is none.
	Previous *Previous
	// Error is the upstream error being recovered (on_upstream_error only).
	Error *UpstreamError
	// Recovery is the recovery state of the turn (on_upstream_error only).
	Recovery Recovery
	// Replayed is set once the replay action rewrote the request into a full create.
	Replayed bool
	// Response is the response being bookkept (post_response only).
	Response *Response
}

// Response is the response a post_response stage bookkeeps.
type Response struct {
	// ID is the response id.
	ID string
	// Status is the response's status: "completed", "incomplete", "failed", "cancelled",
	// and so on; "" when unknown.
	Status string
	// Event is the terminal event's type ("response.completed", …); "" for a response
	// object that was not streamed.
	Event string
	// Items are the response's output items: from output_item.done events, else the
	// terminal event's response.output.
	Items []responses.Item
	// IncompleteReason is the terminal event's incomplete_details.reason ("steered",
	// "interrupted", "max_output_tokens", …); "" when there is none.
	IncompleteReason string
	// ServerStarted is true when the server started this response by itself (a steer's
	// successor); the turn's Request is then a synthetic create chained to the steered
	// response, whose input is the steer's input.
	ServerStarted bool
	// Injected are the call ids that response.inject frames answered while this response
	// was in flight.
	Injected []string
	// Interrupted is true when the client sent response.interrupt for this response.
	Interrupted bool
	// InterruptMode is the interrupt's mode as the client sent it (e.g.
	// "discard_partial_items"); "" when none was given.
	InterruptMode string
	// TerminalCalls are the call ids of the call items in the terminal event's own
	// response.output; a server that discards partial items leaves them out of it.
	TerminalCalls []string
	// TerminalOutput is true when the terminal event carried an output list at all, so
	// that TerminalCalls can be told apart from "not said".
	TerminalOutput bool
}

// Pending are the pending calls of a response.
type Pending struct {
	// Known is false when the store could not answer (miss, Redis down): rules must then
	// decide explicitly (SPEC R3).
	Known      bool
	ResponseID string
	Calls      []PendingCall
}

// PendingCall is one unanswered call: its id and its item type.
type PendingCall struct {
	ID   string
	Kind string
}

// Replay describes the replay transcript of the session (SPEC §6).
type Replay struct {
	// Known is true when the store answered; false means the transcript's state is unknown
	// (Redis down).
	Known bool
	// Available is true when a transcript exists.
	Available bool
	// LastResponseID is the response whose output items end the transcript.
	LastResponseID string
	// Trimmed is true when the transcript lost its oldest units to the byte cap.
	Trimmed bool
	// Items holds the transcript. When nil and Load is set, Load is called the first time
	// the replay action needs it, so turns that never replay never fetch it.
	Items []responses.Item
	Load  func() ([]responses.Item, error)
}

// Previous is what the gateway remembers of the previous turn on a connection.
type Previous struct {
	// FieldDigests are the previous request's non-input field digests.
	FieldDigests map[string]uint64
	// ItemKeys are the keys (responses.Item.Key) of the previous turn's full logical input:
	// its context, its input and its response's output items.
	ItemKeys []string

	// keySet indexes ItemKeys; built on first use and kept, since the next turns of the
	// connection ask again (a Previous is used by one turn at a time).
	keySet map[string]struct{}
}

func (p *Previous) keys() map[string]struct{} {
	if p.keySet == nil {
		p.keySet = make(map[string]struct{}, len(p.ItemKeys))
		for _, k := range p.ItemKeys {
			p.keySet[k] = struct{}{}
		}
	}
	return p.keySet
}

// UpstreamError is the upstream's rejection of a turn.
type UpstreamError struct {
	Status  int
	Type    string
	Code    string
	Message string
	Param   string
	// Transport is true for a transport failure (closed connection, connection limit)
	// rather than an error frame.
	Transport bool
	// Timeout is true when the upstream sent no first event, or went idle, in time;
	// Transport is true then too.
	Timeout bool
	// Class is set by the classify action.
	Class string
}

// Recovery is the recovery state of a turn.
type Recovery struct {
	Enabled bool
	// Attempted is true once a recovery was tried in this turn.
	Attempted bool
	// ClientWritten is true once anything of this turn reached the client.
	ClientWritten bool
}
