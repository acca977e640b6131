// herald's plain endpoints with the browser's own clients: a real headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core) on a page of herald's own origin (its demo page at `/`), where the test creates a
// native `EventSource` on `/sse/<site>` and a native `WebSocket` on `/ws/<site>`. The EventSource gets events by
// name, and when the server ends its stream (the v1 API disconnects its socket) it reconnects by itself with
// `Last-Event-ID` and gets exactly the events published while it was away, in order, once each. The WebSocket
// gets its welcome and an event, and sends a client event that the site routes to a webhook and answers with a
// reply. Without /usr/bin/chromium each test fails, saying how to install it.

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { MISSING, hasChromium, launchChromium } from "./browser-helpers.mjs";
import { api, startGateway } from "./gateway-helpers.mjs";
import { reply, startBackend } from "./two-way-helpers.mjs";
import { QUIET_MS, STEP_TIMEOUT_MS, isOffset, sleep } from "./util.mjs";

const KEY = "browser-key-0123456789";
// An EventSource without a `retry:` from the server waits its default reconnection time (3 s in Chromium)
// after its stream ends; this leaves room for that and the reconnect itself.
const RECONNECT_TIMEOUT_MS = 10_000;
const TEST_TIMEOUT_MS = 30_000;

function configYaml(backend) {
  return `
sites:
  - name: news
    api_keys: [${KEY}]
    public_channel: lobby
    recovery_window_ms: 60000
    events:
      bid: {url: "${backend.url}/events/bid"}
  # The demo page at / joins the site \`demo\`: present, so the page the test runs in stays quiet.
  - name: demo
    public_channel: public
`;
}

async function publish(gw, body) {
  const res = await api(gw.url, "POST", "/api/v1/sites/news/publish", { key: KEY, body });
  assert.equal(res.status, 200, JSON.stringify(res.body));
}

describe("browser-native clients in headless Chromium", () => {
  let backend;
  let gw;
  let browser;
  let page;
  /** Every request the page made to /sse/, with its headers, in order. */
  const streamRequests = [];

  before(async () => {
    if (!hasChromium()) return;
    backend = await startBackend({
      "/events/bid": (call, res) => reply(res, 200, { reply: [{ accepted: call.body.args[0], socket: call.body.socket.id }] }),
    });
    gw = await startGateway({ configYaml: configYaml(backend) });
    browser = await launchChromium();
    page = await browser.newPage();
    page.on("request", (request) => {
      if (new URL(request.url()).pathname.startsWith("/sse/")) {
        streamRequests.push(request.allHeaders().then((headers) => ({ url: request.url(), headers })));
      }
    });
    await page.goto(`${gw.url}/`);
    await page.waitForFunction(() => document.getElementById("status")?.textContent === "connected", null, {
      timeout: STEP_TIMEOUT_MS,
    });
  });

  after(async () => {
    await browser?.close();
    await gw?.stop();
    await backend?.close();
  });

  it("an EventSource gets events by name and, when its stream ends, comes back with Last-Event-ID and gets exactly what it missed", { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok(hasChromium(), MISSING);
    await page.evaluate(() => {
      const source = new EventSource("/sse/news?deviceId=browser-1");
      window.stream = { source, welcomes: [], ticks: [], errors: 0, opens: 0 };
      source.addEventListener("welcome", (e) => window.stream.welcomes.push(JSON.parse(e.data)));
      source.addEventListener("tick", (e) => window.stream.ticks.push({ id: e.lastEventId, args: JSON.parse(e.data) }));
      // Unnamed events would arrive as "message": none must.
      source.addEventListener("message", (e) => window.stream.ticks.push({ unnamed: e.data }));
      source.addEventListener("open", () => window.stream.opens++);
      source.addEventListener("error", () => window.stream.errors++);
    });
    const state = () => page.evaluate(() => ({ ...window.stream, source: undefined, readyState: window.stream.source.readyState }));
    const waitFor = (fn, arg, timeout = STEP_TIMEOUT_MS) => page.waitForFunction(fn, arg, { timeout });

    await waitFor(() => window.stream.welcomes.length === 1);
    const [welcome] = (await state()).welcomes;
    assert.equal(welcome.type, "welcome");
    assert.deepEqual(welcome.rooms, ["lobby"]);

    for (const n of [1, 2]) await publish(gw, { rooms: ["lobby"], event: "tick", args: [n, { n }] });
    await waitFor(() => window.stream.ticks.length === 2);
    const first = (await state()).ticks;
    assert.deepEqual(first.map((t) => t.args), [[1, { n: 1 }], [2, { n: 2 }]]);
    assert.ok(first.every((t) => isOffset(t.id)), JSON.stringify(first));

    // The server ends the stream: the socket is disconnected by the API, so what follows cannot reach it.
    const res = await api(gw.url, "DELETE", `/api/v1/sites/news/sockets/${welcome.socket}`, { key: KEY });
    assert.equal(res.status, 204, JSON.stringify(res.body));
    for (const n of [3, 4]) await publish(gw, { rooms: ["lobby"], event: "tick", args: [n, { n }] });
    await waitFor(() => window.stream.errors >= 1);
    const away = await state();
    assert.equal(away.ticks.length, 2, "nothing reached the disconnected stream");
    assert.equal(away.welcomes.length, 1, "not back yet");

    // The browser reconnects on its own, with the last id it saw.
    await waitFor(() => window.stream.welcomes.length === 2 && window.stream.ticks.length >= 4, null, RECONNECT_TIMEOUT_MS);
    await publish(gw, { rooms: ["lobby"], event: "tick", args: [5, { n: 5 }] });
    await waitFor(() => window.stream.ticks.length >= 5);
    await sleep(QUIET_MS);
    const final = await state();
    assert.deepEqual(final.ticks.map((t) => t.args), [1, 2, 3, 4, 5].map((n) => [n, { n }]), "in order, once each");
    const ids = final.ticks.map((t) => t.id);
    assert.ok(ids.every(isOffset) && new Set(ids).size === 5, JSON.stringify(ids));
    assert.equal(final.readyState, 1, "open");
    assert.equal(final.opens, 2);
    assert.notEqual(final.welcomes[1].socket, welcome.socket, "a new socket");

    const requests = await Promise.all(streamRequests);
    assert.equal(requests.length, 2, JSON.stringify(requests.map((r) => r.url)));
    assert.equal(requests[0].headers["last-event-id"], undefined);
    assert.equal(requests[1].headers["last-event-id"], first[1].id, "the resume carries the last id received");
    await page.evaluate(() => window.stream.source.close());
  });

  it("a browser WebSocket gets its welcome and events, and its client event is answered with a reply", { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok(hasChromium(), MISSING);
    await page.evaluate(() => {
      const ws = new WebSocket(`ws://${location.host}/ws/news?deviceId=browser-2`);
      window.plain = { ws, frames: [], texts: [], closed: null };
      ws.addEventListener("message", (e) => {
        window.plain.texts.push(e.data);
        window.plain.frames.push(JSON.parse(e.data));
      });
      ws.addEventListener("close", (e) => (window.plain.closed = { code: e.code, reason: e.reason }));
    });
    const frames = () => page.evaluate(() => window.plain.frames);
    const waitFor = (fn, arg) => page.waitForFunction(fn, arg, { timeout: STEP_TIMEOUT_MS });

    await waitFor(() => window.plain.frames.length >= 1);
    const [welcome] = await frames();
    assert.equal(welcome.type, "welcome");
    assert.deepEqual(welcome.rooms, ["lobby"]);
    assert.ok((await page.evaluate(() => window.plain.texts[0])).startsWith('{"type":"welcome",'));

    await publish(gw, { rooms: ["lobby"], event: "headline", args: ["Grüße", { breaking: true }] });
    await waitFor(() => window.plain.frames.some((f) => f.type === "event"));
    const event = (await frames()).find((f) => f.type === "event");
    assert.equal(event.event, "headline");
    assert.deepEqual(event.args, ["Grüße", { breaking: true }]);
    assert.ok(isOffset(event.offset), JSON.stringify(event));

    await page.evaluate(() => window.plain.ws.send(JSON.stringify({ type: "event", event: "bid", args: [42], id: 1 })));
    await waitFor(() => window.plain.frames.some((f) => f.id === 1));
    const answer = (await frames()).find((f) => f.id === 1);
    assert.deepEqual(answer, { type: "reply", id: 1, args: [{ accepted: 42, socket: welcome.socket }] });
    const call = backend.to("/events/bid").at(-1);
    assert.equal(call.body.event, "bid");
    assert.equal(call.body.socket.id, welcome.socket);

    await sleep(QUIET_MS);
    const all = await page.evaluate(() => window.plain);
    assert.equal(all.frames.length, 3, JSON.stringify(all.frames));
    assert.equal(all.closed, null, "still open");
    await page.evaluate(() => window.plain.ws.close());
  });
});
