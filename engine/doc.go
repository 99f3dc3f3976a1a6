// Package engine compiles and evaluates chainmend policies: ordered CEL rules in YAML that
// decide, for every turn of a Responses API session, what the gateway does.
//
// # Stages
//
// The gateway evaluates three entry stages. pre_send runs before a response.create goes
// upstream and repairs or rejects it (verdict send or reject). on_upstream_error runs on
// every upstream failure of the turn (an error frame, a transport failure, a timeout) and
// chooses at most one recovery (verdict retry, forward or reject). post_response runs once
// per response, on its terminal event, and does the session's bookkeeping (verdict send).
// Any other stage name is a sub-stage that rules enter with run_stage (the default
// policies' pairing stage); a sub-stage sees the variables and may use the actions of
// every entry stage that reaches it.
//
// # The turn context
//
// A Turn holds the request and the facts the gateway knows: the session anchor and its
// pending calls, what the upstream connection holds, the replay transcript, the previous
// turn's keys and field digests, the upstream error (on_upstream_error) and the response
// with what happened while it was in flight: a steer, injected outputs, an interrupt
// (post_response). Rules read it as typed CEL variables (request.*, turn.*, session.anchor,
// pending.*, replay.*, upstream.*, previous.*, error.*, recovery.*, response.*); Variables
// lists them. The engine derives facts only (call ids, item keys, changed fields); every
// protocol decision is a rule. Domain helpers keep rules short: without, intersect,
// starts_with, overlaps and is_response_id.
//
// # Actions and effects
//
// A rule that fires applies its actions in order, each argument a CEL expression evaluated
// at that moment, so a rule sees what earlier rules changed. Actions that edit the request
// (set_previous_response_id, insert_outputs, replay, dedupe_items, …) change Turn.Request in place. The
// state actions (set_anchor, clear_anchor, record_pending, delete_pending, the transcript
// actions, set_upstream_cached) update the Turn for the rules that follow and collect in
// Outcome.Effects, which the gateway applies after the stage. A shadow rule is evaluated
// and counted but applies nothing; WithEnforced lifts that for one evaluation, so that an
// alternative reading shipped in shadow has fixtures of its own.
//
// # Compiling and evaluating
//
// Compile (or LoadDir) parses a policy set, type-checks every expression against the
// variables of its stage, refuses expressions whose static cost estimate exceeds the limit,
// lints, and reports every finding as file:line:col. The resulting Snapshot is immutable
// and safe for concurrent use; Snapshot.Evaluate runs one stage of one turn and returns an
// Outcome. An Observer (NewMetrics) counts fired rules and evaluation times.
//
// # Files
//
// policy.go declares the policy schema, parse.go reads it from YAML and position.go maps
// positions back into the file; sources.go reads policy files. vars.go declares the turn
// context, resolvers.go derives each variable from a Turn and activation.go caches what it
// derived until an action or a new request version makes it stale (varset.go: its sets of
// variables); sizehints.go checks a turn against the static size hints; varnode.go lets the
// fast programs read variables by index; strlist.go is the CEL list of Go strings that the
// variables and the helpers share; turn.go holds the Turn's types.
// env.go builds the CEL environments, helpers.go the domain functions. actions.go declares
// the actions, compile.go, stages.go and lint.go compile and check a set into a Snapshot
// (snapshot.go). eval.go runs a stage, apply.go applies actions, outcome.go and effects.go
// describe the result; explain.go breaks a when down into the values of its parts for
// policyctl explain (WithExplain only). diag.go holds diagnostics and hints.go the hints
// that make the checker's messages actionable; registry.go describes the actions for
// documentation; metrics.go is the Prometheus observer.
package engine
