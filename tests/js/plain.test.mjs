// herald's plain endpoints with clients that have no socket.io library: a plain WebSocket (`ws`) on
// `/ws/<site>` and an event stream (fetch, parsed as EventSource does) on `/sse/<site>`, against one `herald`
// gateway, a real HTTP backend (auth and event webhooks) and the real socket.io-client beside them: the same
// auth, rooms, retained state, relay and webhook routes, mailboxes (ids, cumulative acks, Last-Event-ID) and
// recovery log (Last-Event-ID) as socket.io clients get. plain-cluster.test.mjs covers two nodes on Redis.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { api, startGateway } from "./gateway-helpers.mjs";
import { KEY as MAILBOX_KEY, siteYaml, tokenFor } from "./mailbox-helpers.mjs";
import { EventStream, PlainSocket, sseUrl, wsUrl } from "./plain-helpers.mjs";
import { reply, startBackend } from "./two-way-helpers.mjs";
import { Clients, QUIET_MS, TEST_TIMEOUT_MS, isOffset, nextEvent, sleep, until, waitConnected } from "./util.mjs";

const KEY = "plain-key-0123456789";
const PING_MS = 400;
const clients = new Clients();
const plain = new Clients();
afterEach(() => {
  clients.closeAll();
  plain.closeAll();
});

/** A token the backend's auth route reads back: `t~<user>~<room>+<room>`. */
const token = (user, ...rooms) => `t~${user}~${rooms.join("+")}`;

function authAnswer(call, res) {
  const cookie = (call.headers.cookie ?? "").match(/session=([^;]+)/)?.[1];
  const bearer = (call.headers.authorization ?? "").replace(/^Bearer /, "");
  const [, user, rooms] = (bearer || decodeURIComponent(cookie ?? "")).split("~");
  if (!user) return reply(res, 401, { error: "no token" });
  reply(res, 200, { user, rooms: rooms ? rooms.split("+") : [] });
}

function configYaml(backend) {
  return `
server:
  engine:
    ping_interval_ms: ${PING_MS}
    ping_timeout_ms: ${PING_MS}
    sse_ping_ms: 300
    allowed_origins: ["http://app.example"]
  limits: {max_payload_bytes: 20000}
sites:
  - name: news
    api_keys: [${KEY}]
    public_channel: lobby
    recovery_window_ms: 60000
    events:
      chat: {relay: true}
      get: {retained: true}
  - name: auction
    api_keys: [${KEY}]
    auth: {kind: webhook, url: "${backend.url}/auth"}
    recovery_window_ms: 0
    events:
      bid: {url: "${backend.url}/events/bid"}
  - name: portal
    api_keys: [${KEY}]
    auth: {kind: webhook, url: "${backend.url}/auth", forward_cookie: true}
${siteYaml("app")}`;
}

async function publish(gw, site, body, key = KEY) {
  const res = await api(gw.url, "POST", `/api/v1/sites/${site}/publish`, { key, body });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body;
}

const ws = (gw, site, query, options) => plain.add(new PlainSocket(wsUrl(gw, site, query), options));
const sse = async (gw, site, query, headers) => plain.add(await EventStream.open(sseUrl(gw, site, query), { headers }));

describe("plain WebSocket and Server-Sent Events", () => {
  let backend;
  let gw;

  before(async () => {
    backend = await startBackend({
      "/auth": authAnswer,
      "/events/bid": (call, res) => {
        const [amount] = call.body.args;
        if (amount < 10) return reply(res, 200, { reply: [{ error: "too low" }] });
        reply(res, 200, {
          reply: [{ accepted: amount }],
          publish: [{ rooms: ["lot-1"], event: "price", args: [amount], retain: true }],
        });
      },
    });
    gw = await startGateway({ configYaml: configYaml(backend) });
  });

  after(async () => {
    await gw?.stop();
    await backend?.close();
  });

  it("a plain WebSocket gets its welcome, its rooms' retained values, then live publishes, as a socket.io client does", { timeout: TEST_TIMEOUT_MS }, async () => {
    await publish(gw, "news", { rooms: ["lobby"], event: "score", args: [7, { home: true }], retain: true });
    const sock = clients.add(io(`${gw.url}/news`, { forceNew: true, reconnection: false, transports: ["websocket"] }));
    await waitConnected(sock);
    const client = ws(gw, "news");
    const welcome = await client.welcome();
    assert.equal(typeof welcome.socket, "string");
    assert.deepEqual(welcome.rooms, ["lobby"]);
    assert.equal(client.frames[0].type, "welcome", "the welcome comes first");
    const retained = await client.next((f) => f.event === "score", "the retained score");
    assert.deepEqual(retained.args, [7, { home: true }]);

    const ticked = nextEvent(sock, "tick");
    await publish(gw, "news", { rooms: ["lobby"], event: "tick", args: [1, "a"] });
    const tick = await client.next((f) => f.event === "tick", "the tick");
    assert.deepEqual(tick.args, [1, "a"]);
    assert.ok(isOffset(tick.offset), `a logged publish carries its offset: ${JSON.stringify(tick)}`);
    assert.equal((await ticked)[0], 1);

    // The plain client's event goes through the site's routes: relayed to the socket.io client, acked.
    const relayed = nextEvent(sock, "chat");
    const answer = await client.request("chat", ["lobby", "hello"], 1);
    assert.deepEqual(answer, { type: "reply", id: 1, args: [{ ok: true }] });
    assert.deepEqual((await relayed).slice(0, 2), ["lobby", "hello"]);
    const got = await client.request("get", ["lobby", "score"], 2);
    assert.deepEqual(got, { type: "reply", id: 2, args: [7, { home: true }] });
  });

  it("client events reach the site's webhook with the client's credentials; errors are frames and never close it", { timeout: TEST_TIMEOUT_MS }, async () => {
    const client = ws(gw, "auction", {}, { headers: { authorization: `Bearer ${token("ann", "lot-1")}` } });
    const welcome = await client.welcome();
    assert.deepEqual(welcome.rooms, ["lot-1"]);
    const watcher = ws(gw, "auction", { token: token("bob", "lot-1") });
    await watcher.welcome();

    assert.deepEqual(await client.request("bid", [12], 5), { type: "reply", id: 5, args: [{ accepted: 12 }] });
    const call = backend.to("/events/bid").at(-1);
    assert.equal(call.body.event, "bid");
    assert.equal(call.body.socket.id, welcome.socket);
    assert.equal(call.body.socket.user, "ann");
    assert.equal(call.headers.authorization, `Bearer ${token("ann", "lot-1")}`);
    const price = await watcher.next((f) => f.event === "price", "the new price");
    assert.deepEqual(price.args, [12]);

    assert.deepEqual(await client.request("bid", [3], 6), { type: "error", id: 6, error: "too low" });
    assert.deepEqual(await client.request("nope", [], 7), { type: "error", id: 7, error: "event 'nope' is not routed" });
    client.send("not json");
    const malformed = await client.next((f) => f.type === "error" && f.id === undefined && /malformed/.test(f.error), "malformed");
    assert.match(malformed.error, /^malformed frame/);
    client.send({ type: "shout", id: 8 });
    assert.match((await client.next((f) => f.id === 8, "answer to 8")).error, /unknown frame type 'shout'/);
    client.send({ type: "event", event: "connect", id: 9 });
    assert.match((await client.next((f) => f.id === 9, "answer to 9")).error, /reserved/);
    client.ws.send(Buffer.from([1, 2, 3]));
    await client.next((f) => f.type === "error" && /binary frames/.test(f.error), "binary refused");
    // Still open, and still served.
    assert.deepEqual(await client.request("bid", [20], 10), { type: "reply", id: 10, args: [{ accepted: 20 }] });
    assert.equal(client.closedWith, undefined);
  });

  it("takes the token from the query, the Authorization header or a forwarded cookie, and closes a refused one with 1008", { timeout: TEST_TIMEOUT_MS }, async () => {
    const byQuery = ws(gw, "auction", { token: token("q", "lot-q") });
    assert.deepEqual((await byQuery.welcome()).rooms, ["lot-q"]);
    const byCookie = ws(gw, "portal", {}, { headers: { cookie: `session=${encodeURIComponent(token("c", "lot-c"))}` } });
    assert.deepEqual((await byCookie.welcome()).rooms, ["lot-c"]);

    const refused = ws(gw, "auction", { token: "garbage" });
    const error = await refused.next((f) => f.type === "error", "the refusal");
    assert.ok(error.error.length > 0);
    const closed = await refused.closed;
    assert.equal(closed.code, 1008);
    assert.equal(closed.reason, error.error);
    assert.ok(!refused.frames.some((f) => f.type === "welcome"));

    const unknown = await fetch(`${gw.url}/ws/nosuch`);
    assert.equal(unknown.status, 404);
    assert.deepEqual(await unknown.json(), { error: "unknown site 'nosuch'" });
    const notUpgrade = await fetch(`${gw.url}/ws/news`);
    assert.equal(notUpgrade.status, 426);
    const foreign = ws(gw, "portal", {}, { headers: { origin: "http://evil.example", cookie: `session=${encodeURIComponent(token("c", "lot-c"))}` } });
    await assert.rejects(foreign.opened, /403/);
    const ours = ws(gw, "portal", {}, { headers: { origin: "http://app.example", cookie: `session=${encodeURIComponent(token("c", "lot-c"))}` } });
    assert.deepEqual((await ours.welcome()).rooms, ["lot-c"]);
  });

  it("mailbox entries carry ids, one ack covers every id up to it, and unacked entries come back", { timeout: TEST_TIMEOUT_MS }, async () => {
    const query = { token: tokenFor("u1"), deviceId: "esp32" };
    const first = ws(gw, "app", query);
    assert.deepEqual((await first.welcome()).rooms, ["user_u1"]);
    for (const n of [1, 2, 3]) await publish(gw, "app", { rooms: ["user_u1"], event: "job", args: [n] }, MAILBOX_KEY);
    await until(() => first.events("job").length === 3, undefined, "3 entries");
    const got = first.events("job");
    assert.deepEqual(got.map((f) => f.args[0]), [1, 2, 3]);
    assert.ok(got.every((f) => Number.isInteger(f.id)), JSON.stringify(got));
    assert.ok(!first.frames.some((f) => f.event === "_settings" || f.event === "_batch"), "no socket.io-only events");
    first.send({ type: "ack", id: got[1].id });
    await until(async () => (await pending("u1", "esp32")) === 1, undefined, "two entries acked");
    first.close();
    await first.closed;

    const again = ws(gw, "app", query);
    await again.welcome();
    const replayed = await again.next((f) => f.event === "job", "the unacked entry");
    assert.deepEqual(replayed.args, [3]);
    await sleep(QUIET_MS);
    assert.equal(again.events("job").length, 1, "acked entries are not replayed");
  });

  it("a frame over the payload limit closes with 1009; a client that stops answering pings is closed", { timeout: TEST_TIMEOUT_MS }, async () => {
    const big = ws(gw, "news");
    await big.welcome();
    big.send({ type: "event", event: "chat", args: ["lobby", "x".repeat(30_000)] });
    assert.equal((await big.closed).code, 1009);

    const deaf = ws(gw, "news", {}, { autoPong: false });
    await deaf.welcome();
    const started = Date.now();
    const closed = await deaf.closed;
    const took = Date.now() - started;
    assert.ok(took <= 2 * PING_MS + 1000, `closed after ${took} ms`);
    assert.notEqual(closed.code, 1000);
  });

  it("an event stream gets its welcome, then id/event/data blocks, and keep-alive comments", { timeout: TEST_TIMEOUT_MS }, async () => {
    const stream = await sse(gw, "news");
    assert.equal(stream.status, 200);
    const welcome = await stream.next((e) => e.event === "welcome", "welcome");
    assert.deepEqual(welcome.data.rooms, ["lobby"]);
    await publish(gw, "news", { rooms: ["lobby"], event: "tick", args: [{ n: 1 }, "two"] });
    const tick = await stream.next((e) => e.event === "tick", "tick");
    assert.deepEqual(tick.data, [{ n: 1 }, "two"]);
    assert.ok(isOffset(tick.id), `id ${tick.id}`);
    await until(() => stream.comments.includes(": ping"), 2000, "a keep-alive comment");

    const refused = await EventStream.open(sseUrl(gw, "auction", { token: "garbage" }));
    assert.equal(refused.status, 401);
    assert.ok(refused.body.error.length > 0);
    const unknown = await EventStream.open(sseUrl(gw, "nosuch"));
    assert.equal(unknown.status, 404);
    // A page of a listed origin may read the stream (credentialed CORS); another origin may not connect.
    const cors = await sse(gw, "news", {}, { origin: "http://app.example" });
    assert.equal(cors.status, 200);
    assert.equal(cors.headers.get("access-control-allow-origin"), "http://app.example");
    assert.equal(cors.headers.get("access-control-allow-credentials"), "true");
    const foreign = await EventStream.open(sseUrl(gw, "news"), { headers: { origin: "http://evil.example" } });
    assert.equal(foreign.status, 403);
    const withBearer = await sse(gw, "auction", {}, { authorization: `Bearer ${token("s", "lot-s")}` });
    assert.deepEqual((await withBearer.next((e) => e.event === "welcome")).data.rooms, ["lot-s"]);
  });

  it("Last-Event-ID resumes from the recovery log with exactly the missed events, or gives retained state when the log cannot", { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = "lobby";
    const first = await sse(gw, "news");
    await first.next((e) => e.event === "welcome");
    for (const n of [1, 2]) await publish(gw, "news", { rooms: [room], event: "seq", args: [n] });
    await until(() => first.named("seq").length === 2, undefined, "two events");
    const last = first.lastId();
    first.close();
    for (const n of [3, 4]) await publish(gw, "news", { rooms: [room], event: "seq", args: [n] });

    const back = await sse(gw, "news", {}, { "last-event-id": last });
    await until(() => back.named("seq").length === 2, undefined, "the missed events");
    await publish(gw, "news", { rooms: [room], event: "seq", args: [5] });
    await until(() => back.named("seq").length === 3, undefined, "the live event");
    await sleep(QUIET_MS);
    assert.deepEqual(back.named("seq").map((e) => e.data[0]), [3, 4, 5]);
    const ids = back.named("seq").map((e) => e.id);
    assert.ok(ids.every(isOffset) && new Set(ids).size === 3, JSON.stringify(ids));
    assert.ok(!back.named("score").length, "a resumed stream gets no retained replay");

    // The same through the query, from an offset the log does not reach: the rooms' retained state instead.
    await publish(gw, "news", { rooms: [room], event: "score", args: [9], retain: true });
    const stale = await sse(gw, "news", { lastEventId: "1-0" });
    const score = await stale.next((e) => e.event === "score", "the retained score");
    assert.deepEqual(score.data, [9]);
    assert.equal(stale.named("seq").length, 0);
  });

  it("on a mailbox site an event stream's ids are entry numbers, and Last-Event-ID acks the entries up to it", { timeout: TEST_TIMEOUT_MS }, async () => {
    const query = { token: tokenFor("u2"), deviceId: "tablet" };
    const first = await sse(gw, "app", query);
    await first.next((e) => e.event === "welcome");
    for (const n of [1, 2, 3]) await publish(gw, "app", { rooms: ["user_u2"], event: "job", args: [n] }, MAILBOX_KEY);
    await until(() => first.named("job").length === 3, undefined, "3 entries");
    const ids = first.named("job").map((e) => e.id);
    assert.ok(ids.every((id) => /^\d+$/.test(id)), JSON.stringify(ids));
    assert.equal(await pending("u2", "tablet"), 3, "an event stream acks nothing by itself");
    first.close();

    const back = await sse(gw, "app", query, { "last-event-id": ids[1] });
    const replayed = await back.next((e) => e.event === "job", "the entry after the id");
    assert.deepEqual(replayed.data, [3]);
    assert.equal(replayed.id, ids[2]);
    await sleep(QUIET_MS);
    assert.equal(back.named("job").length, 1);
    assert.equal(await pending("u2", "tablet"), 1);
  });

  async function pending(user, deviceId) {
    const res = await api(gw.url, "GET", `/api/v1/sites/app/users/user_${user}/devices`, { key: MAILBOX_KEY });
    return res.body.devices.find((d) => d.deviceId === deviceId)?.pending;
  }
});

describe("event streams and max_http_connections", () => {
  let gw;
  before(async () => {
    gw = await startGateway({
      configYaml: `
server:
  limits: {max_http_connections: 4}
sites:
  - name: news
    api_keys: [${KEY}]
    public_channel: lobby
`,
    });
  });
  after(async () => {
    await gw?.stop();
  });

  it("an accepted stream leaves its HTTP slot, so more streams than max_http_connections leave room for publishes", { timeout: TEST_TIMEOUT_MS }, async () => {
    const streams = [];
    for (let i = 0; i < 6; i++) {
      const stream = await sse(gw, "news");
      await stream.next((e) => e.event === "welcome", `welcome ${i}`);
      streams.push(stream);
    }
    await publish(gw, "news", { rooms: ["lobby"], event: "tick", args: [1] });
    for (const stream of streams) await stream.next((e) => e.event === "tick", "the tick");
    const health = await fetch(`${gw.url}/healthcheck`);
    assert.equal(health.status, 200);
  });
});
