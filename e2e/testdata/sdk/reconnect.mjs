// The official Node SDK's own reconnect through the gateway (issue 17), driven by
// e2e/sdk_reconnect_test.go (TestNodeSDKReconnect*) against the emulator.
//
// Every tenant of CHAINMEND_SDK_TENANTS is a client of its own: OpenAI with its API key and
// the gateway as baseURL, ResponsesWS with the SDK's `reconnect` option, and a
// ResponsesWebSocketSession whose lanes (CHAINMEND_SDK_LANES) run their turns concurrently
// on that one socket. The tenants run side by side with the same lane names and the same
// call ids; only the tool outputs and the closing messages name the tenant, so a context of
// one tenant sent for another shows upstream. No header but the SDK's own is sent: no
// session id, nothing that names a conversation but previous_response_id.
//
//   phase 0  "call call_<lane>_1", its output, "call call_<lane>_2" (left pending)
//   move k   the script prints {"event":"move","move":k} and waits for a line on stdin;
//            meanwhile the Go test takes the gateway instance away (killed and restarted on
//            the same address, or the TCP switch in front of two instances flipped). The
//            SDK reconnects by itself (re-sending nothing) and the Go test answers once
//            every tenant's socket is on the new instance.
//   phase k  the lanes are registered again on the new socket, as the SDK requires after a
//            reconnect; each lane sends the output of its pending call chained to the
//            response of the old socket (the gateway must find the conversation by that id
//            and replay the lane's transcript), then "call call_<lane>_<k+2>" (left pending
//            for the next move) or, after the last move, a plain message.
//
// The emulator's script (e2etest.CmdScript) answers a user message "call X Y" with the
// function calls X and Y, and anything else with the text "done". Every answer is checked
// here; the Go test checks what the emulator and the gateways saw. Output: JSON lines on
// stdout ({"event":"move",…} per move, then {"event":"result",…}); any failure exits 1 with
// the reason on stderr.
//
// Environment: CHAINMEND_SDK_BASE_URL (http://HOST:PORT/v1), CHAINMEND_SDK_MODEL,
// CHAINMEND_SDK_TENANTS (a JSON object, tenant name to API key), CHAINMEND_SDK_LANES (lane
// names, comma-separated), CHAINMEND_SDK_MOVES (how many times the instance goes away).

import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

import OpenAI from 'openai';
import { ResponsesWS } from 'openai/resources/responses/ws';
import { ResponsesWebSocketSession } from 'openai/lib/responses/responses-websocket-session';
import { VERSION } from 'openai/version';

const baseURL = mustEnv('CHAINMEND_SDK_BASE_URL');
const model = mustEnv('CHAINMEND_SDK_MODEL');
const tenantKeys = JSON.parse(mustEnv('CHAINMEND_SDK_TENANTS'));
const laneNames = mustEnv('CHAINMEND_SDK_LANES').split(',');
const moves = Number(mustEnv('CHAINMEND_SDK_MOVES'));
// A turn or a reconnect that takes longer than this means the gateway lost something; fail
// rather than hang until the Go test's own deadline.
const turnTimeoutMs = 10_000;
const reconnectTimeoutMs = 10_000;
// The SDK's reconnect backoff (default 500 ms doubling to 8 s) is shortened so that the test
// stays fast; the retry budget covers a gateway that takes seconds to start under -race.
const reconnectOptions = { maxRetries: 200, initialDelay: 25, maxDelay: 100 };

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

// Tenant is one application: its own credential, socket and lanes.
class Tenant {
  constructor(name, apiKey) {
    this.name = name;
    // No retries of the SDK's own HTTP layer: every failure the gateway lets through shows.
    this.client = new OpenAI({ apiKey, baseURL, maxRetries: 0 });
    this.closeCodes = [];
    this.reconnects = 0;
    this.reconnecting = false;
    this.permanentClose = undefined;
    this.apiErrors = [];
    this.transportErrors = [];
    this.socket = new ResponsesWS(this.client, {
      reconnect: {
        ...reconnectOptions,
        // The SDK reconnects only when this callback is given. The first attempt of each
        // reconnect carries the close code that ended the old socket.
        onReconnecting: (event) => {
          if (event.attempt === 1) {
            this.closeCodes.push(event.closeCode);
          }
          this.reconnecting = true;
        },
      },
    });
    this.socket.on('reconnected', () => {
      this.reconnecting = false;
      this.reconnects += 1;
    });
    this.socket.on('close', (code, reason) => {
      this.permanentClose = `${code} ${reason}`;
    });
    // API errors also arrive as lane events (and fail that lane's finalResponse); transport
    // errors are those of the socket the gateway took away. Binding a listener keeps the
    // SDK from turning either into an unhandled rejection.
    this.socket.on('error', (err) => {
      const text = String(err?.message ?? err);
      if (err?.error) {
        this.apiErrors.push(`${text} ${JSON.stringify(err.error)}`);
      } else {
        this.transportErrors.push(text);
      }
    });
  }

  async open() {
    await new Promise((resolve, reject) => {
      const ws = this.socket.socket;
      if (ws.readyState === 1) {
        resolve();
        return;
      }
      ws.once('open', resolve);
      ws.once('error', reject);
      ws.once('close', (code) => reject(new Error(`tenant ${this.name}: socket closed before open: ${code}`)));
    });
    this.session = new ResponsesWebSocketSession(this.socket, {
      maxLanes: 4,
      maxBufferedEvents: 10_000,
      maxBufferedBytes: 16 << 20,
    });
    this.lanes = laneNames.map((name) => new Lane(this, name));
  }

  // restore waits for the SDK's reconnect to finish and registers the lanes again: the
  // session dropped them when the old socket went, and nothing is re-sent for them.
  async restore() {
    const deadline = Date.now() + reconnectTimeoutMs;
    while (this.reconnecting || this.socket.socket.readyState !== 1) {
      check(this.permanentClose === undefined, `tenant ${this.name}: the socket closed for good: ${this.permanentClose}`);
      check(Date.now() < deadline, `tenant ${this.name}: no reconnect within ${reconnectTimeoutMs} ms`);
      await sleep(10);
    }
    for (const lane of this.lanes) {
      lane.register();
    }
  }
}

// Lane is one conversation on its own stream_id: it chains each turn to its previous
// response and remembers the calls it has not answered yet, across sockets.
class Lane {
  constructor(tenant, name) {
    this.tenant = tenant;
    this.name = name;
    this.previous = undefined;
    this.responses = [];
    this.pending = [];
    this.register();
  }

  register() {
    this.lane = this.tenant.session.lane(this.name);
  }

  get where() {
    return `tenant ${this.tenant.name} lane ${this.name}`;
  }

  async turn(input, want) {
    const request = { model, store: false, input };
    if (this.previous) {
      request.previous_response_id = this.previous;
    }
    this.lane.create(request);
    let response;
    try {
      response = await this.lane.finalResponse({ signal: AbortSignal.timeout(turnTimeoutMs) });
    } catch (err) {
      const detail = err?.error ? ` ${JSON.stringify(err.error)}` : '';
      throw new Error(`${this.where} turn ${this.responses.length + 1}: ${err?.message ?? err}${detail}`);
    }
    const where = `${this.where} ${response.id}`;
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

  // callTurn asks the model for call call_<lane>_<n>: the same id on every tenant.
  callTurn(n) {
    const id = `call_${this.name}_${n}`;
    return this.turn([userMessage(`call ${id}`)], { calls: [id] });
  }

  // answerTurn answers the pending calls with outputs that name the tenant.
  answerTurn() {
    check(this.pending.length > 0, `${this.where}: no call pending`);
    const outputs = this.pending.map((id) => toolOutput(id, `${id} ran on ${this.name} for ${this.tenant.name}`));
    return this.turn(outputs, { text: 'done' });
  }

  plainTurn() {
    return this.turn([userMessage(`thanks from ${this.name} of ${this.tenant.name}`)], { text: 'done' });
  }
}

const tenants = Object.entries(tenantKeys).map(([name, key]) => new Tenant(name, key));
const allLanes = () => tenants.flatMap((t) => t.lanes);
const everyLane = (fn) => Promise.all(allLanes().map(fn));

// waitForGo blocks until the Go test writes a line to stdin.
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function waitForGo(event) {
  emit(event);
  const { done } = await stdinLines.next();
  check(!done, `stdin closed while waiting after ${JSON.stringify(event)}`);
}

await Promise.all(tenants.map((t) => t.open()));

// Phase 0: a tool loop on each lane of each tenant, ending with a pending call.
await everyLane(async (l) => {
  await l.callTurn(1);
  await l.answerTurn();
  await l.callTurn(2);
});

for (let move = 1; move <= moves; move += 1) {
  await waitForGo({ event: 'move', move });
  await Promise.all(tenants.map((t) => t.restore()));
  await everyLane(async (l) => {
    await l.answerTurn();
    if (move < moves) {
      await l.callTurn(move + 2);
    } else {
      await l.plainTurn();
    }
  });
}

emit({
  event: 'result',
  sdk_version: VERSION,
  node_version: process.version,
  tenants: Object.fromEntries(
    tenants.map((t) => [
      t.name,
      {
        lanes: Object.fromEntries(t.lanes.map((l) => [l.name, l.responses])),
        close_codes: t.closeCodes,
        reconnects: t.reconnects,
        api_errors: t.apiErrors,
        transport_errors: t.transportErrors,
      },
    ]),
  ),
});
for (const t of tenants) {
  t.session.close();
  t.socket.close({ code: 1000, reason: 'done' });
}
stdinLines.return?.();
process.stdin.destroy();
