// Two lanes over one WebSocket with the official Node SDK (npm `openai`), driven by
// e2e/sdk_test.go (TestNodeSDKLanes) through the gateway against the emulator.
//
// The SDK is used as a user would: OpenAI with the gateway as baseURL, ResponsesWS for the
// socket, ResponsesWebSocketSession for the lanes, lane.create and lane.finalResponse for
// each turn. Lanes "alpha" and "beta" run their turns concurrently on the one socket:
//
//   phase 1  "call call_<lane>_1", its output, "call call_<lane>_2" (left pending)
//   drop     the script prints {"event":"drop"} and waits for a line on stdin; meanwhile the
//            Go test drops the gateway's upstream connection
//   phase 2  the output of call_<lane>_2 (the gateway must replay each lane's own
//            transcript), then "call call_<lane>_3 call_<lane>_4" (both left pending)
//   ESC      beta sends a new user message chained to its last response without answering
//            its calls (the gateway must answer them "aborted"); only then does alpha answer
//            its own two calls, which must still be pending on alpha
//   phase 3  one more plain turn per lane
//
// The emulator's script (e2etest.CmdScript) answers a user message "call X Y" with the
// function calls X and Y, and anything else with the text "done". Every answer is checked
// here; the Go test checks what the emulator and the gateway saw. Output: JSON lines on
// stdout ({"event":"drop"}, then {"event":"result",…}); any failure exits 1 with the reason
// on stderr.
//
// Environment: CHAINMEND_SDK_BASE_URL (the gateway's http://HOST:PORT/v1),
// CHAINMEND_SDK_API_KEY, CHAINMEND_SDK_MODEL.

import { createInterface } from 'node:readline';

import OpenAI from 'openai';
import { ResponsesWS } from 'openai/resources/responses/ws';
import { ResponsesWebSocketSession } from 'openai/lib/responses/responses-websocket-session';
import { VERSION } from 'openai/version';

const baseURL = mustEnv('CHAINMEND_SDK_BASE_URL');
const apiKey = mustEnv('CHAINMEND_SDK_API_KEY');
const model = mustEnv('CHAINMEND_SDK_MODEL');
const laneNames = ['alpha', 'beta'];
// A turn that takes longer than this means the gateway lost a response; fail rather than
// hang until the Go test's own deadline.
const turnTimeoutMs = 20_000;

function mustEnv(name) {
  const v = process.env[name];
  if (!v) {
    throw new Error(`${name} is not set`);
  }
  return v;
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function check(cond, msg) {
  if (!cond) {
    throw new Error(msg);
  }
}

const userMessage = (text) => ({ type: 'message', role: 'user', content: [{ type: 'input_text', text }] });
const toolOutput = (callID, output) => ({ type: 'function_call_output', call_id: callID, output });

// The gateway is asked for the plain OpenAI wire protocol: no retries of its own by the SDK,
// so every failure the gateway lets through shows up here.
const client = new OpenAI({ apiKey, baseURL, maxRetries: 0 });
const socket = new ResponsesWS(client);

// Every server event, by the lane it named: the session routes by stream_id, and the Go test
// checks that no event arrived without one (both lanes are named).
const eventsByLane = {};
const errors = [];
socket.on('event', (event) => {
  const lane = typeof event.stream_id === 'string' ? event.stream_id : '(none)';
  eventsByLane[lane] = (eventsByLane[lane] ?? 0) + 1;
});
// API errors also arrive as lane events (and fail that lane's finalResponse); binding a
// listener keeps the SDK from turning them into unhandled rejections.
socket.on('error', (err) => errors.push(String(err?.message ?? err)));

await new Promise((resolve, reject) => {
  if (socket.socket.readyState === 1) {
    resolve();
    return;
  }
  socket.socket.once('open', resolve);
  socket.socket.once('error', reject);
  socket.socket.once('close', (code) => reject(new Error(`socket closed before open: ${code}`)));
});

const session = new ResponsesWebSocketSession(socket, {
  maxLanes: 4,
  maxBufferedEvents: 10_000,
  maxBufferedBytes: 16 << 20,
});

// Lane is one conversation on its own stream_id: it chains each turn to its previous
// response and remembers the calls it has not answered yet.
class Lane {
  constructor(name) {
    this.name = name;
    this.lane = session.lane(name);
    this.previous = undefined;
    this.responses = [];
    this.pending = [];
  }

  async turn(input, want) {
    const request = { model, store: false, input };
    if (this.previous) {
      request.previous_response_id = this.previous;
    }
    this.lane.create(request);
    const signal = AbortSignal.timeout(turnTimeoutMs);
    let response;
    try {
      response = await this.lane.finalResponse({ signal });
    } catch (err) {
      const detail = err?.error ? ` ${JSON.stringify(err.error)}` : '';
      throw new Error(`lane ${this.name} turn ${this.responses.length + 1}: ${err?.message ?? err}${detail}`);
    }
    const where = `lane ${this.name} ${response.id}`;
    check(response.status === 'completed', `${where}: status ${response.status}`);
    const calls = response.output.filter((it) => it.type === 'function_call').map((it) => it.call_id);
    if (want.calls) {
      check(
        JSON.stringify(calls) === JSON.stringify(want.calls),
        `${where}: calls ${JSON.stringify(calls)}, want ${JSON.stringify(want.calls)}`,
      );
    } else {
      check(calls.length === 0, `${where}: unexpected calls ${JSON.stringify(calls)}`);
      check(response.output_text === want.text, `${where}: text ${JSON.stringify(response.output_text)}`);
    }
    this.previous = response.id;
    this.responses.push(response.id);
    this.pending = calls;
    return response;
  }

  // callTurn asks the model for calls; the lane's own prefix keeps call ids apart across
  // lanes, so a call of one lane showing up on the other is visible upstream.
  callTurn(...n) {
    const ids = n.map((i) => `call_${this.name}_${i}`);
    return this.turn([userMessage(`call ${ids.join(' ')}`)], { calls: ids });
  }

  answerTurn() {
    const outputs = this.pending.map((id) => toolOutput(id, `${id} ran on ${this.name}`));
    return this.turn(outputs, { text: 'done' });
  }
}

const lanes = laneNames.map((name) => new Lane(name));
const [alpha, beta] = lanes;
const both = (fn) => Promise.all(lanes.map(fn));

// waitForGo blocks until the Go test writes a line to stdin.
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function waitForGo(what) {
  emit({ event: what });
  const { done } = await stdinLines.next();
  check(!done, `stdin closed while waiting after ${what}`);
}

// Phase 1: a tool loop on each lane, interleaved on the socket, ending with a pending call.
await both(async (l) => {
  await l.callTurn(1);
  await l.answerTurn();
  await l.callTurn(2);
});

await waitForGo('drop');

// Phase 2: after the upstream drop each lane answers its pending call; its context is on
// the lost connection, so the gateway has to replay that lane's transcript.
await both(async (l) => {
  await l.answerTurn();
  await l.callTurn(3, 4);
});

// ESC on beta while alpha also has two calls pending: a new user message chained to beta's
// last response, its calls unanswered.
check(beta.pending.length === 2 && alpha.pending.length === 2, 'both lanes have two pending calls');
beta.pending = [];
await beta.turn([userMessage('stop, do something else')], { text: 'done' });
await alpha.answerTurn();

// Phase 3: both lanes still chain.
await both((l) => l.turn([userMessage(`thanks from ${l.name}`)], { text: 'done' }));

emit({
  event: 'result',
  sdk_version: VERSION,
  node_version: process.version,
  lanes: Object.fromEntries(lanes.map((l) => [l.name, l.responses])),
  events: eventsByLane,
  errors,
});
session.close();
socket.close({ code: 1000, reason: 'done' });
stdinLines.return?.();
process.stdin.destroy();
