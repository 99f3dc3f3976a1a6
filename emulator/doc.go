// Package emulator is an in-process stand-in for the OpenAI Responses API,
// in WebSocket mode (GET /v1/responses upgraded; any path ending in
// /responses) and over HTTP with SSE (POST /v1/responses). Tests, demos and
// load runs point a gateway at it.
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
//     connection that produced it, and only while it is that connection's
//     most recent response. Anything else, and every store:false chain over
//     HTTP, fails with code previous_response_not_found, param
//     previous_response_id, "Previous response with id 'resp_X' not found.".
//     A create that references the cached response and fails for any reason
//     (validation, scripted or injected error) evicts it. store:true
//     responses (the API default when store is absent) chain from anywhere.
//     A failed response is not chainable; an incomplete one is.
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
//   - Item ids are unique in the effective context: "Duplicate item found
//     with id X. Remove duplicate items from your input and try again.", which
//     is what a gateway gets when it chains and also resends the chain.
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
//     binary frames (invalid_value). Frames over the size limit close the
//     socket with 1009 (HTTP: 413).
//   - Unknown fields and item types are accepted and kept.
//
// Frames are handled one at a time per connection, so a second
// response.create waits for the first; response.processed acks are recorded
// and get no reply. A connection older than the limit (60 minutes by
// default) gets websocket_connection_limit_reached and a close.
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
// connections after N generating responses or after each completed one.
// ResetConnections and Conn.Drop reset sockets on demand.
//
// Conns, Conn, Creates and Response expose every frame, the handshake
// headers and each create's effective context; Stats counts everything, also
// with recording off.
package emulator
