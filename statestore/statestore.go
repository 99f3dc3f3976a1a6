// Package statestore keeps the per-session state the gateway's turn context
// needs (SPEC R2, §5.3, §6): the pending calls of a response, the session
// anchor (the last response id of a session) and the replay transcript (the
// session's full logical input).
//
// State lives in two tiers. The local tier is a bounded LRU in the process; the
// remote tier is Redis (standalone, Sentinel or Cluster), shared by every
// gateway instance. Reads go local → Redis → backfill; a session that stays on
// one instance is served from the local tier alone. Every write of a turn is
// one pipelined round trip, and announces the keys it changed on a pub/sub
// channel so other instances drop their local copies at once.
//
// Redis trouble never fails a turn: reads answer Unknown, writes keep the
// local copy, and a circuit breaker stops waiting on a dead server. Without a
// Redis URL the same API works on the local tier alone.
//
// A slow Redis is treated as an unreachable one, by choice (issue 11): each
// operation has a deadline (WithOpTimeout, 50 ms) and one retry, and the breaker
// opens after a few failures, so no turn waits on a Redis slower than that. The
// local tier keeps serving the sessions it holds; commits stay local and the
// write-back brings them to Redis once it answers in time again, never over a
// newer value. A session that moved to another instance meanwhile finds nothing
// there (Unknown): the upstream, on its new connection, does not know its
// previous response, the client resends the whole conversation, and that full
// create becomes the session's state, served locally from then on. A slow answer
// is no lost connection: the invalidation subscription stands latencies up to
// pongWait (3 s), so local tiers are not flushed for them.
//
// Under Redis OOM a commit is all or nothing (a transaction on one server; on a
// Cluster every write is one Redis refuses before it changes anything), and the
// write-back writes nothing back, and says so once, until Redis takes writes
// again.
//
// The local tier is bounded by entries and bytes (WithLocalEntries,
// WithLocalBytes). A tenant may fill it alone, but once it is full the tenants
// over their share (WithTenantShare) give up their own oldest entries first, so
// that one tenant cannot evict every other tenant's state.
//
// Every response with a session is indexed to its conversation (KindConversation:
// tenant and response id lead to session and lane), so that a client that chains
// to a response without naming its session finds the session's state
// (ConversationFinder). A session's anchor carries the calls its response left
// pending, so that a moved full create, which names no response, reads its state
// in one round trip too (carry.go).
//
// A Redis URL may be written any way go-redis users write one (WithRedisURL).
// Before its first command the store asks the server what it is and uses the
// client that fits, or refuses a URL that does not fit with the form to write
// (detect.go). It never serves silently degraded: Ready, the gauge
// chainmend_store_ready and one log line per change say when, and why, it does
// not work as configured (ready.go).
//
// Keys are scoped by tenant and by session (Scope); how a request's tenant and
// session are told is the gateway's decision, not the store's. A tenant id
// must be a fixed-length hash (never a credential): it ends up in Redis keys.
package statestore

import (
	"context"
	"time"
)

// Call is one call of a response that still waits for its output.
type Call struct {
	// ID is the call_id.
	ID string
	// Kind is the item type of the call: "function_call", "custom_tool_call"
	// or "local_shell_call".
	Kind string
}

// Result says how a read was answered.
type Result uint8

const (
	// Miss means the state is known not to exist.
	Miss Result = iota
	// Hit means the state was found.
	Hit
	// Unknown means the store could not tell (Redis failed or the circuit
	// breaker is open). Callers treat it as "pending unknown", never as an
	// error of the turn.
	Unknown
)

// String returns "miss", "hit" or "unknown".
func (r Result) String() string {
	switch r {
	case Hit:
		return "hit"
	case Miss:
		return "miss"
	default:
		return "unknown"
	}
}

// Kind names one of the kinds of state, for per-kind options and metric labels.
type Kind uint8

const (
	// KindPending is the pending calls of a response.
	KindPending Kind = iota
	// KindAnchor is the session anchor.
	KindAnchor
	// KindReplay is the replay transcript.
	KindReplay
	// KindConversation is the index from a response to the conversation (session, lane) whose
	// state it belongs to.
	KindConversation
	numKinds
)

// String returns "pending", "anchor", "replay" or "conversation".
func (k Kind) String() string {
	switch k {
	case KindPending:
		return "pending"
	case KindAnchor:
		return "anchor"
	case KindReplay:
		return "replay"
	case KindConversation:
		return "conversation"
	default:
		return "invalid"
	}
}

// Scope names a session of a tenant.
type Scope struct {
	// Tenant is a hash of the client's credentials.
	Tenant string
	// Session names one conversation of the tenant.
	Session string
	// Lane is the lane (stream_id) of a connection the conversation runs on; "" is the
	// default lane. Each lane of a session has its own anchor and transcript.
	Lane string
}

// id is the session part of the scope's keys: the session, and the lane when there is one.
// A lane's id is 1–256 characters of [A-Za-z0-9_.-], so ":l:" cannot end a lane's id early;
// a session of the same tenant that spells the same id only meets its own tenant's state.
func (s Scope) id() string {
	if s.Lane == "" {
		return s.Session
	}
	return s.Session + ":l:" + s.Lane
}

// ReplayItem is one input item of a replay transcript.
type ReplayItem struct {
	// Raw is the item's JSON exactly as it was sent or received; the store
	// copies it on Commit and never re-encodes it.
	Raw []byte
	// Type is the item's "type" ("message", "function_call", "reasoning"…).
	Type string
	// CallID is the item's "call_id", empty for items without one.
	CallID string
}

// Transcript is the replay transcript of a session.
type Transcript struct {
	// Items are the session's input items, oldest first. The slice is shared
	// with the store and must not be modified.
	Items []ReplayItem
	// LastResponseID is the response whose output items end the transcript,
	// or "" when the transcript does not end with a response's output.
	LastResponseID string
	// Trimmed reports that old units were cut to respect the byte cap.
	Trimmed bool
	// Bytes is the sum of len(Raw) over Items.
	Bytes int
}

// Store is what the gateway needs from the state store. *Tiered implements it.
type Store interface {
	// Pending returns the calls of responseID that still wait for output.
	// A Hit with no calls means "known: nothing pending". The returned slice
	// is shared and must not be modified.
	Pending(ctx context.Context, tenant, responseID string) ([]Call, Result)
	// Anchor returns the session's last response id.
	Anchor(ctx context.Context, scope Scope) (string, Result)
	// Replay returns the session's replay transcript.
	Replay(ctx context.Context, scope Scope) (Transcript, Result)
	// Commit writes a turn's bookkeeping in one pipelined round trip. It never
	// loses the local copy; a non-nil error is informational (counted and
	// logged) and must not fail the turn.
	Commit(ctx context.Context, b Batch) error
	// Close releases the store's connections and goroutines.
	Close() error
}

// ConversationFinder is implemented by *Tiered.
type ConversationFinder interface {
	// Conversation returns the scope (Tenant as given, Session and Lane) whose state
	// responseID belongs to, within tenant: Hit, Miss, or Unknown (Redis trouble).
	Conversation(ctx context.Context, tenant, responseID string) (Scope, Result)
}

// PendingPut records the calls a response left unanswered.
type PendingPut struct {
	// ResponseID is the response that produced the calls.
	ResponseID string
	// Calls are the unanswered calls; an empty list is stored too and means
	// "known: nothing pending", which differs from a Miss.
	Calls []Call
	// TTL follows the response's chain TTL; zero means the configured
	// default for KindPending.
	TTL time.Duration
}

// Batch is everything one turn writes (SPEC §5.3).
type Batch struct {
	// Scope is the session the turn belongs to.
	Scope Scope
	// PutPending records the calls of the response that just ended. With a session in
	// Scope it also indexes the response to the conversation (KindConversation), so that a
	// client that chains to it without naming its session finds the session's state.
	PutPending *PendingPut
	// DeletePending lists response ids whose calls this turn answered.
	DeletePending []string
	// Anchor sets the session anchor when non-nil; "" clears it.
	Anchor *string
	// ReplayReset replaces the transcript (a full create) instead of
	// appending to it.
	ReplayReset bool
	// ReplayKeep, with ReplayReset, keeps a stored prefix (issue 14): the new
	// transcript is the first ReplayKeep items of the stored one followed by
	// ReplayAppend, and only ReplayAppend travels to Redis. 0 is a full reset.
	// The caller sets it only from a transcript it read from this store
	// (Replay) in the same turn, so the first ReplayKeep items are, as far as it
	// knows, the stored ones. Trimmed stays as stored: the kept items are what
	// the (possibly trimmed) transcript began with; the cap applies to the
	// result as to an append. When the store holds fewer than ReplayKeep items
	// (it lost some, or another writer replaced the transcript meanwhile), or
	// this instance holds newer items than Redis and not the prefix, the
	// transcript is marked broken: it answers Miss until the next full reset,
	// never a history with a gap. A negative ReplayKeep, or one without
	// ReplayReset, is refused (Commit returns an error and writes nothing).
	ReplayKeep int
	// ReplayAppend are the turn's new items: its input, then the response's
	// output items.
	ReplayAppend []ReplayItem
	// ReplayLastResponseID is stored as the transcript's LastResponseID
	// whenever the batch touches the replay (reset, items, or a non-empty id).
	ReplayLastResponseID string
}

// touchesReplay reports whether the batch writes the replay transcript.
func (b *Batch) touchesReplay() bool {
	return b.ReplayReset || len(b.ReplayAppend) > 0 || b.ReplayLastResponseID != ""
}
