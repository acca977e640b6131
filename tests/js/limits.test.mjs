// `limits.connects_per_ip_per_sec` against the real `herald` gateway with the real socket.io-client and plain
// clients (`ws`, fetch-read event streams), all from 127.0.0.1. Each test starts its own gateway (rate 1 per
// second, burst 2), takes the burst, sees the next connect refused with its reason and `Retry-After`, waits that
// long and connects. A socket.io handshake over the rate is answered 429 before any session exists, so the
// client's `connect_error` is a transport error (status 429, the body's reason) and its manager retries with
// backoff by itself, as it would not after a namespace refusal.

import { describe, it, afterEach } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { api, startGateway } from "./gateway-helpers.mjs";
import { EventStream, PlainSocket, sseUrl, wsUrl } from "./plain-helpers.mjs";
import { Clients, STEP_TIMEOUT_MS, TEST_TIMEOUT_MS, nextEvent, sleep, waitConnected, withTimeout } from "./util.mjs";

const KEY = "limits-key-0123456789";
const BURST = 2;
const clients = new Clients();
let gateway;
afterEach(async () => {
  clients.closeAll();
  await gateway?.stop();
  gateway = undefined;
});

async function start() {
  gateway = await startGateway({
    configYaml: `
server:
  limits: {connects_per_ip_per_sec: 1, connects_per_ip_burst: ${BURST}}
sites:
  - name: shop
    api_keys: [${KEY}]
    public_channel: lobby
`,
  });
  return gateway;
}

const socket = (gw, options = {}) => clients.add(io(`${gw.url}/shop`, { forceNew: true, reconnection: false, ...options }));

/**
 * The next `connect_error` of `client`, with the refused request's body and `Retry-After` read in the handler:
 * the client aborts the request (which empties both) right after its handlers ran.
 */
function nextRefusal(client) {
  const refusal = new Promise((resolve) => {
    client.once("connect_error", (err) => {
      const xhr = err.context;
      resolve({ err, body: xhr?.responseText, retryAfter: xhr?.getResponseHeader?.("retry-after") });
    });
  });
  return withTimeout(refusal, STEP_TIMEOUT_MS, "connect_error");
}

const plainSocket = (gw) => clients.add(new PlainSocket(wsUrl(gw, "shop")));

/** Seconds a refusal asks to wait: `Retry-After`, whole seconds, at least 1. */
function retryAfter(value) {
  assert.match(String(value), /^[1-9][0-9]*$/, `Retry-After ${value}`);
  return Number(value);
}

/**
 * Opens the burst's connections at once: the next one is refused only if it comes within a second (the rate's
 * period) of the first, so they are not opened one after the other.
 */
const takeBurst = (connect) => Promise.all(Array.from({ length: BURST }, connect));

const limitHits = async (gw) => (await api(gw.url, "GET", "/limits")).body.connects_per_ip_per_sec;

describe("connects per client address", () => {
  it("socket.io-client gets connect_error with status 429 and the reason past the rate, and connects after Retry-After", { timeout: TEST_TIMEOUT_MS }, async () => {
    const gw = await start();
    await takeBurst(() => waitConnected(socket(gw)));
    const hits = await limitHits(gw);

    const refused = socket(gw);
    const { err, body, retryAfter: header } = await nextRefusal(refused);
    assert.equal(err.message, "xhr poll error", "a transport error: no session was opened");
    assert.equal(err.description, 429);
    assert.deepEqual(JSON.parse(body), { code: 3, message: "rate limited", retryAfter: 1 });
    const wait = retryAfter(header);
    assert.equal(refused.connected, false);
    assert.equal(await limitHits(gw), hits + 1, "the refusal is counted at /limits");

    // A WebSocket-only client is refused before the upgrade: its error carries the status.
    const wsOnly = socket(gw, { transports: ["websocket"] });
    const { err: wsErr } = await nextRefusal(wsOnly);
    assert.equal(wsErr.message, "websocket error");
    assert.match(String(wsErr.description?.message ?? wsErr.description), /429/);

    await sleep(wait * 1000);
    refused.connect();
    await waitConnected(refused);
    assert.equal(refused.connected, true, "let in once Retry-After has passed");
  });

  it("with its default options a refused client retries by itself and gets in once the window passed", { timeout: TEST_TIMEOUT_MS }, async () => {
    const gw = await start();
    await takeBurst(() => waitConnected(socket(gw)));

    const client = socket(gw, { reconnection: true });
    const errors = [];
    client.on("connect_error", (err) => errors.push(err.description));
    // socket.io-client's backoff (1 s, then 2 s, ±50 %) outlasts the 1 s window within two retries.
    await nextEvent(client, "connect", 12_000);
    assert.ok(errors.length >= 1, "it was refused first");
    assert.ok(
      errors.every((status) => status === 429),
      `every refusal was a 429: ${errors}`,
    );
  });

  it("a plain WebSocket past the rate gets an error frame and close 1008, an event stream 429 with Retry-After", { timeout: TEST_TIMEOUT_MS }, async () => {
    const gw = await start();
    await takeBurst(() => plainSocket(gw).welcome());
    const hits = await limitHits(gw);

    const refused = plainSocket(gw);
    const closed = await Promise.race([refused.closed, sleep(STEP_TIMEOUT_MS).then(() => "no close")]);
    assert.deepEqual(closed, { code: 1008, reason: "rate limited" });
    assert.deepEqual(refused.frames, [{ type: "error", error: "rate limited", retryAfter: 1 }]);

    const stream = clients.add(await EventStream.open(sseUrl(gw, "shop")));
    assert.equal(stream.status, 429);
    assert.deepEqual(stream.body, { error: "rate limited", retryAfter: 1 });
    const wait = retryAfter(stream.headers.get("retry-after"));
    assert.equal(await limitHits(gw), hits + 2);

    await sleep(wait * 1000);
    const later = clients.add(await EventStream.open(sseUrl(gw, "shop")));
    assert.equal(later.status, 200, `let in after Retry-After: ${JSON.stringify(later.body)}`);
    const welcome = await later.next((e) => e.event === "welcome", "the stream's welcome");
    assert.deepEqual(welcome.data.rooms, ["lobby"]);
  });
});
