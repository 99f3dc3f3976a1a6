// Package emulator is an in-process stand-in for the OpenAI Responses API,
// in WebSocket mode (GET /v1/responses upgraded; any path ending in
// /responses) and over HTTP with SSE (POST /v1/responses), plus
// deterministic answers for the rest of the API a base URL receives. Tests,
// demos and load runs point a gateway at it.
//
// A mock that accepts anything would make every gateway test pass; this one
// rejects what the real service rejects, with the real wording, so a passing
// test means the gateway's traffic would have been accepted upstream.
//
// # Protocol rules
//
// Every error is one frame {"type":"error","status":N,"error":{"type",
// "code","message","param"}} on the WebSocket (the connection stays open), or
// an HTTP 4xx/5xx JSON body {"error":{...}} before any SSE byte.
//
//   - Chaining. A store:false response can be continued only from the
//     connection and lane that produced it, and only while it is that
//     lane's most recent response. One exception, a fork: the first create
//     of a lane that has produced nothing yet (the default lane included)
//     may chain to another lane's latest response (Create.Fork, ForkLane).
//     Anything else, and every store:false chain over HTTP, fails with code
//     previous_response_not_found, param previous_response_id, "Previous
//     response with id 'resp_X' not found.". A create that references its
//     lane's cached response and fails for any reason (validation, scripted
//     or injected error) evicts it; a failed fork leaves the source lane
//     alone. store:true responses (the API default when store is absent)
//     chain from anywhere. A failed response is not chainable; incomplete
//     and cancelled ones are.
//   - Pairing, over the effective context (chained context + its output +
//     the new input), code null, param input: every function_call,
//     custom_tool_call and local_shell_call needs exactly one output
//     ("No tool output found for function call call_X.", "… for custom tool
//     call call_X.", "… for local shell call call_X."); function_call_output
//     answers function and local shell calls, custom_tool_call_output custom
//     ones, local_shell_call_output local shell ones. An output without its
//     call: "No tool call found for function call output with call_id
//     call_X." (or "custom tool call output"). Two outputs for one call:
//     "Duplicate tool output found for call_id call_X." (emulator wording;
//     the real text is unknown). Order does not matter.
//   - Item ids are unique in the effective context (per lane, since each
//     lane chains its own context): "Duplicate item found with id X. Remove
//     duplicate items from your input and try again.", code null, param
//     input, which is what a gateway gets when it chains and also resends
//     the chain.
//   - A reasoning item must be followed by a model item (an assistant
//     message, a call, or an unknown type): "Item 'rs_X' of type 'reasoning'
//     was provided without its required following item.".
//   - Under store:false an item_reference, or a reasoning item with an id
//     but no encrypted_content, fails with "Item with id 'X' not found. Items
//     are not persisted when `store` is set to false. Try again with `store`
//     set to true, or remove this item from your input."; under store:true
//     they resolve against stored items or fail with "Item with id 'X' not
//     found.". Items that carry their content keep their ids freely.
//   - Request level: missing model or type (missing_required_parameter),
//     a previous_response_id not starting with resp (invalid_value: "Invalid
//     'previous_response_id': 'msg_1'. Expected an ID that begins with
//     'resp'."), wrong JSON types (invalid_type), malformed JSON
//     (invalid_json), unknown frame types including response.append and
//     binary frames (invalid_value), stream_id in an HTTP body
//     (unknown_parameter). Frames over the size limit close the socket with
//     1009 (HTTP: 413).
//   - Unknown fields and item types are accepted and kept.
//
// # Lanes
//
// A response.create may name a lane with "stream_id": 1-256 characters of
// [A-Za-z0-9_.-], else the frame gets code invalid_stream_id, param
// stream_id, with the value echoed as a top-level "stream_id" when it was a
// string. Creates on one lane run in order; lanes run side by side and
// their events interleave on the socket (one writer serialises frames). At
// most MaxInFlight (16) responses stream at once per connection: further
// creates queue for a slot, they are never refused. At most MaxLanes (32)
// named lanes per connection (the default lane does not count): the first
// create on a 33rd gets code websocket_stream_limit_reached, status 400,
// param stream_id, "stream_id":"<lane>" on the frame, and the emulator's
// message "Too many streams on this websocket connection: at most 32
// distinct 'stream_id' values may be used per connection. …" (the real
// text is unknown). Every server frame of a named lane carries top-level
// "stream_id" (errors, control replies and terminal events included);
// default-lane frames carry none. Frame.Lane, Create.Lane and
// Conn.SentOn record the routing.
//
// # Control frames
//
// The reader never waits on a response: acks and control frames are
// answered at once, while responses stream.
//
//   - response.processed is recorded and gets no reply.
//   - response.steer {previous_response_id, input, stream_id?} takes only
//     those fields and user messages (a string, or messages of type
//     message, role user, content a string or input_text/input_image/
//     input_file parts); anything else is response.steer.failed with
//     invalid_input. On an in-flight response it is accepted
//     (response.steer.accepted {steer:{id:"steer_emuNNNN",
//     previous_response_id}}, continuing the response's sequence numbers)
//     and applied at the next item boundary: the response ends
//     response.incomplete with incomplete_details.reason "steered", and the
//     server starts a successor on the same lane by itself (response.created
//     … terminal), chained to the steered response with the steering as
//     input, produced by the Script (Request.Successor) and recorded as a
//     Create with Successor set. The successor is the lane's latest
//     response. While a call the response emitted still waits for its
//     output, the steering is not applied: the response completes, then
//     response.steer.pending {steer, reason:"waiting_for_required_input",
//     required_input:[output stubs]} follows, and the next create chained
//     to that response gets the steering prepended to its input
//     (Create.Steers). A steer after the response ended while its output is
//     owed gets accepted and pending the same way. Otherwise
//     response.steer.failed {steer:{previous_response_id, input}, error:
//     {type, code, message}} hands the input back: response_not_found (not
//     on this connection or lane), response_already_completed,
//     response_not_active (interrupted first), successor_creation_failed.
//   - response.inject {response_id, input:[tool outputs]} needs the
//     handshake header OpenAI-Beta: responses_multi_agent=v1 (else an error
//     frame, invalid_value). Outputs must answer calls the in-flight
//     response has already emitted, once each (else the pairing error
//     frames); they answer response.inject.created {response_id} and join
//     the response's context after its output, so a continuation must not
//     answer those calls again ("Duplicate tool output …") and need not.
//     An ended response gets response.inject.failed {response_id, input,
//     error:{code:"response_already_completed", message}}, an unknown one
//     code response_not_found.
//   - response.interrupt {response_id, mode?:"discard_partial_items"} ends
//     the in-flight response before its next event; the item in progress
//     is discarded, and so is a reasoning item left without its follower.
//     By default it ends response.incomplete with reason "interrupted" and
//     the calls already emitted stay in the output and pending; the
//     unverified alternatives are options (WithInterrupt: Cancel ends it
//     response.cancelled, DiscardCalls drops the calls). An interrupt that
//     loses the race with the terminal event is ignored; an unknown
//     response_id gets an error frame with code response_not_found.
//
// Turn.AwaitControl and Turn.AwaitInject hold a response (before its
// terminal event, or after each call) until a control frame names it, so
// tests act on in-flight responses without racing the stream. Controls
// records each control frame and its outcome.
//
// A connection older than the limit (60 minutes by default) gets
// websocket_connection_limit_reached and a close.
//
// # The rest of the API
//
// Plain HTTP requests to other endpoints get deterministic answers (ids and
// timestamps derive from the request and the emulator's start, so the same
// request gets the same bytes): GET /v1/models[/{id}], POST
// /v1/responses/compact, GET and DELETE /v1/responses/{id} (stored
// responses only), POST /v1/responses/{id}/cancel (400: nothing runs in the
// background), GET /v1/responses/{id}/input_items, POST
// /v1/responses/input_tokens, POST /v1/chat/completions (JSON, or SSE
// chunks ending in "data: [DONE]", each flushed WithChunkInterval apart),
// POST /v1/embeddings, and /v1/files (upload, list, retrieve, content,
// delete). Any other path answers 404 with an OpenAI-style error body; a
// WebSocket upgrade off the Responses endpoint gets 400 (known path) or 404.
// Every answer carries X-Emulator-Route and echoes each custom request
// header X-Name (minus X-Forwarded-*) as X-Emulator-Echo-X-Name.
// HTTPRequests records method, path, query, headers, body, status, and
// whether the client left before the answer was complete (Cancelled, also
// Stats.ClientCancels), with a Done channel per request.
//
// # Answers, faults, records
//
// A Script turns each generating create into a Turn: reasoning items with
// generated encrypted_content, assistant messages (split into a configurable
// number of output_text deltas), function, custom and local shell calls.
// generate:false warm-ups answer response.created and response.completed
// with an empty output and can be chained. Ids are unique per emulator:
// resp_emu0001, rs_emu0002, fc_emu0003, msg_…, call_emu0001.
//
// Faults (SetFaults, UpdateFaults, FailCreate, SetCreateFault) fail, stall,
// delay, slow down or cut a given create or all of them, and close
// connections after N generating responses or after each completed one. A
// successor takes a create sequence number like a create, so a fault can
// target it. ResetConnections and Conn.Drop reset sockets on demand.
//
// Conns, Conn, Creates, Controls, HTTPRequests and Response expose every
// frame, the handshake headers, each create's lane and effective context,
// and each response's pending calls; Stats counts everything, also with
// recording off.
package emulator
