// Two-way with the real socket.io-client (4.x and 2.x) against one `herald` gateway and a real HTTP backend
// started here: client events routed to webhooks (an auction), refused when unrouted, failing and slow
// webhooks, the default route, relayed chat, the `get` of a retained value, per-socket connect and disconnect
// hooks, retained state on connect, on an API join and through a restart, `if_changed`, the retained API, the
// signature and the per-socket limits. two-way-cluster.test.mjs covers two nodes on Redis.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { io } from "socket.io-client";
import ioV2 from "socket.io-client-v2";
import { api, startGateway } from "./gateway-helpers.mjs";
import { SIGNING_SECRET, reply, sign, startBackend } from "./two-way-helpers.mjs";
import { Clients, QUIET_MS, STEP_TIMEOUT_MS, emitAck, nextEvent, record, sleep, until, waitConnected } from "./util.mjs";

const KEY = "two-way-key-0123456789";
const clients = new Clients();
afterEach(() => clients.closeAll());

/** A token the backend's auth route reads back: `t~<user>~<room>+<room>`. */
const token = (user, ...rooms) => `t~${user}~${rooms.join("+")}`;

function authAnswer(call, res) {
  const [, user, rooms] = (call.headers.authorization ?? "").replace(/^Bearer /, "").split("~");
  if (!user) return reply(res, 401, { error: "no token" });
  reply(res, 200, { user, rooms: rooms ? rooms.split("+") : [] });
}

function configYaml(backend, extraLimits = "") {
  return `
server:
  limits:
    client_events_per_sec: 5
    client_events_in_flight: 2
    max_client_event_bytes: 2000
    max_retained: 50
${extraLimits}
sites:
  - name: auction
    api_keys: [${KEY}]
    auth: {kind: webhook, url: "${backend.url}/auth"}
    signing_secret: "${SIGNING_SECRET}"
    recovery_window_ms: 0
    events:
      bid: {url: "${backend.url}/events/bid"}
      broken: {url: "${backend.url}/events/broken"}
      garbled: {url: "${backend.url}/events/garbled"}
      slow: {url: "${backend.url}/events/slow", timeout_ms: 300}
      enter: {url: "${backend.url}/events/enter"}
      chat: {relay: true}
      get: {retained: true}
    hooks:
      connect: "${backend.url}/hooks/connect"
      disconnect: "${backend.url}/hooks/disconnect"
  - name: open
    api_keys: [${KEY}]
    public_channel: lobby
    events:
      "*": {url: "${backend.url}/events/default"}
      get: {retained: true}
`;
}

function connect(gw, site, { token: t, v2 = false, transport = "websocket" } = {}) {
  if (v2) {
    const query = t ? { token: t } : {};
    return clients.add(ioV2(`${gw.url}/${site}`, { forceNew: true, reconnection: false, transports: [transport], query }));
  }
  return clients.add(
    io(`${gw.url}/${site}`, { forceNew: true, reconnection: false, transports: [transport], auth: t ? { token: t } : {} }),
  );
}

async function publish(gw, site, body, status = 200) {
  const res = await api(gw.url, "POST", `/api/v1/sites/${site}/publish`, { key: KEY, body });
  assert.equal(res.status, status, JSON.stringify(res.body));
  return res.body;
}

describe("two-way on one node", { timeout: 180_000 }, () => {
  let gw, backend;
  let slowCalls = 0;
  before(async () => {
    backend = await startBackend({
      "/auth": authAnswer,
      "/events/bid": (call, res) => {
        const [lot, amount] = call.body.args;
        reply(res, 200, {
          reply: [{ accepted: amount > 10, amount }],
          publish: amount > 10 ? [{ rooms: [lot], event: "bid", args: [{ user: call.body.socket.user, amount }], retain: true }] : [],
        });
      },
      "/events/broken": (call, res) => reply(res, 500, { error: "down" }),
      "/events/garbled": (call, res) => reply(res, 200, "this is not JSON"),
      "/events/slow": (call, res, { later }) => {
        slowCalls += 1;
        later(1500, () => reply(res, 200, { reply: ["too late"] }));
      },
      "/events/enter": (call, res) => reply(res, 200, { join: [call.body.args[0]], reply: ["entered"] }),
      "/events/default": (call, res) => reply(res, 200, { reply: [`default got ${call.body.event}`] }),
      "/hooks/connect": {},
      "/hooks/disconnect": {},
    });
    gw = await startGateway({ configYaml: configYaml(backend) });
  });
  after(async () => {
    await gw?.stop();
    await backend?.close();
  });

  it("routes a bid to its webhook: the answer is the ack, and its publish reaches the room", async () => {
    const alice = connect(gw, "auction", { token: token("alice", "lot_1") });
    const bob = connect(gw, "auction", { token: token("bob", "lot_1") });
    await Promise.all([waitConnected(alice), waitConnected(bob)]);
    const bids = record(bob, "bid");
    const before = backend.to("/events/bid").length;
    assert.deepEqual(await emitAck(alice, "bid", "lot_1", 25), [{ accepted: true, amount: 25 }]);
    await until(() => bids.length === 1, STEP_TIMEOUT_MS, "bob to see the bid");
    assert.deepEqual(bids[0], [{ user: "alice", amount: 25 }]);

    const call = backend.to("/events/bid")[before];
    assert.deepEqual(call.body.site, "auction");
    assert.deepEqual(call.body.event, "bid");
    assert.deepEqual(call.body.args, ["lot_1", 25]);
    assert.equal(call.body.socket.id, alice.id);
    assert.equal(call.body.socket.user, "alice");
    assert.ok(call.body.socket.rooms.includes("lot_1"), JSON.stringify(call.body.socket));
    assert.equal(call.headers.authorization, `Bearer ${token("alice", "lot_1")}`);
    assert.equal(call.headers["x-herald-signature"], sign(call.raw), "the body is signed with the site's secret");
    assert.notEqual(call.headers["x-herald-signature"], sign(call.raw, "another secret"));

    // A bid the backend refuses: acked, nothing published.
    assert.deepEqual(await emitAck(alice, "bid", "lot_1", 5), [{ accepted: false, amount: 5 }]);
    await sleep(QUIET_MS);
    assert.equal(bids.length, 1);
  });

  it("refuses an unrouted event with an error in its ack, counts it, and keeps the client", async () => {
    const alice = connect(gw, "auction", { token: token("alice", "lot_2") });
    await waitConnected(alice);
    const limitsBefore = (await api(gw.url, "GET", "/limits")).body.unrouted_client_events;
    assert.deepEqual(await emitAck(alice, "nope", 1), [{ error: "event 'nope' is not routed" }]);
    alice.emit("nope-no-ack", 1);
    await until(async () => (await api(gw.url, "GET", "/limits")).body.unrouted_client_events === limitsBefore + 2);
    assert.ok(alice.connected);
    assert.deepEqual(await emitAck(alice, "bid", "lot_2", 11), [{ accepted: true, amount: 11 }]);
  });

  it("acks an error for a failing, a garbled and a slow webhook, and never closes the client", async () => {
    const alice = connect(gw, "auction", { token: token("alice", "lot_3") });
    await waitConnected(alice);
    assert.deepEqual(await emitAck(alice, "broken"), [{ error: "the backend answered 500" }]);
    const [garbled] = await emitAck(alice, "garbled");
    assert.match(garbled.error, /^the backend's answer is not valid/);
    const started = Date.now();
    assert.deepEqual(await emitAck(alice, "slow"), [{ error: "the backend did not answer within 300 ms" }]);
    const took = Date.now() - started;
    assert.ok(took >= 280 && took < 1400, `the timeout fired after ${took} ms`);
    assert.ok(alice.connected);
  });

  it("sends every other event to the default route", async () => {
    const visitor = connect(gw, "open");
    await waitConnected(visitor);
    assert.deepEqual(await emitAck(visitor, "anything", 1), ["default got anything"]);
    assert.deepEqual(await emitAck(visitor, "else"), ["default got else"]);
  });

  it("relays chat to the other sockets of a room the sender is in, and refuses other rooms", async () => {
    const alice = connect(gw, "auction", { token: token("alice", "chat_1") });
    const bob = connect(gw, "auction", { token: token("bob", "chat_1") });
    const carol = connect(gw, "auction", { token: token("carol", "chat_2") });
    await Promise.all([alice, bob, carol].map((s) => waitConnected(s)));
    const [toAlice, toBob, toCarol] = [alice, bob, carol].map((s) => record(s, "chat"));
    assert.deepEqual(await emitAck(alice, "chat", "chat_1", "hello", { n: 1 }), [{ ok: true }]);
    await until(() => toBob.length === 1, STEP_TIMEOUT_MS, "bob to get the chat");
    assert.deepEqual(toBob[0], ["chat_1", "hello", { n: 1 }]);
    assert.deepEqual(await emitAck(alice, "chat", "chat_2", "sneaky"), [{ error: "this socket is not in room 'chat_2'" }]);
    await sleep(QUIET_MS);
    assert.deepEqual([toAlice.length, toBob.length, toCarol.length], [0, 1, 0]);
  });

  it("joins the socket to the rooms a webhook answer names, with what they retain", async () => {
    await publish(gw, "auction", { rooms: ["vip"], event: "menu", args: ["caviar"], retain: true });
    const alice = connect(gw, "auction", { token: token("alice") });
    await waitConnected(alice);
    const menu = record(alice, "menu");
    assert.deepEqual(await emitAck(alice, "enter", "vip"), ["entered"]);
    await until(() => menu.length === 1, STEP_TIMEOUT_MS, "the retained menu");
    assert.deepEqual(menu[0], ["caviar"]);
    await publish(gw, "auction", { rooms: ["vip"], event: "menu", args: ["truffles"] });
    await until(() => menu.length === 2);
    assert.deepEqual(menu[1], ["truffles"]);
  });

  it("calls the connect and disconnect hooks with the socket, signed", async () => {
    const alice = connect(gw, "auction", { token: token("alice", "hooked") });
    await waitConnected(alice);
    const id = alice.id;
    await until(() => backend.to("/hooks/connect").some((c) => c.body.socket.id === id));
    const connected = backend.to("/hooks/connect").find((c) => c.body.socket.id === id);
    assert.equal(connected.body.site, "auction");
    assert.equal(connected.body.socket.user, "alice");
    assert.ok(connected.body.socket.rooms.includes("hooked"));
    assert.equal(connected.headers["x-herald-signature"], sign(connected.raw));
    alice.disconnect();
    await until(() => backend.to("/hooks/disconnect").some((c) => c.body.socket.id === id));
    const gone = backend.to("/hooks/disconnect").find((c) => c.body.socket.id === id);
    assert.equal(gone.body.reason, "client namespace disconnect");
    assert.equal(gone.body.socket.user, "alice");
  });

  it("gives a socket what its rooms retain at connect, before later publishes", async () => {
    await publish(gw, "open", { rooms: ["lobby"], event: "score", args: [1, "a"], retain: true });
    await publish(gw, "open", { rooms: ["lobby"], event: "score", args: [2, "b"], retain: true });
    await publish(gw, "open", { rooms: ["lobby"], event: "title", args: ["final"], retain: true });
    const late = connect(gw, "open");
    const scores = record(late, "score");
    const titles = record(late, "title");
    await waitConnected(late);
    await until(() => scores.length === 1 && titles.length === 1, STEP_TIMEOUT_MS, "the retained values");
    assert.deepEqual(scores, [[2, "b"]]);
    assert.deepEqual(titles, [["final"]]);
    await publish(gw, "open", { rooms: ["lobby"], event: "score", args: [3, "c"] });
    await until(() => scores.length === 2);
    assert.deepEqual(scores[1], [3, "c"]);
  });

  it("gives a socket joined through the API what the room retains", async () => {
    await publish(gw, "auction", { rooms: ["api_room"], event: "state", args: [{ on: true }], retain: true });
    const alice = connect(gw, "auction", { token: token("alice") });
    await waitConnected(alice);
    const states = record(alice, "state");
    const res = await api(gw.url, "POST", `/api/v1/sites/auction/sockets/${alice.id}/rooms`, {
      key: KEY,
      body: { join: ["api_room"] },
    });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    await until(() => states.length === 1, STEP_TIMEOUT_MS, "the retained state");
    assert.deepEqual(states[0], [{ on: true }]);
  });

  it("skips an unchanged value with if_changed and says so", async () => {
    const watcher = connect(gw, "open");
    await waitConnected(watcher);
    const temps = record(watcher, "temp");
    const first = await publish(gw, "open", { rooms: ["lobby"], event: "temp", args: [21.5], retain: true, if_changed: true });
    assert.equal(first.changed, true);
    const same = await publish(gw, "open", { rooms: ["lobby"], event: "temp", args: [21.5], retain: true, if_changed: true });
    assert.equal(same.changed, false);
    const next = await publish(gw, "open", { rooms: ["lobby"], event: "temp", args: [22], retain: true, if_changed: true });
    assert.equal(next.changed, true);
    await until(() => temps.length === 2);
    await sleep(QUIET_MS);
    assert.deepEqual(temps, [[21.5], [22]]);
    const plain = await publish(gw, "open", { rooms: ["lobby"], event: "plain", args: [] });
    assert.equal(plain.changed, undefined, "no retain, no changed");
    await publish(gw, "open", { rooms: ["lobby"], event: "x", if_changed: true }, 400);
    await publish(gw, "open", { all: true, event: "x", retain: true }, 400);
  });

  it("answers get from retained state, for a room the client is in", async () => {
    await publish(gw, "open", { rooms: ["lobby"], event: "reading", args: [{ t: 19 }, "celsius"], retain: true });
    const device = connect(gw, "open");
    await waitConnected(device);
    assert.deepEqual(await emitAck(device, "get", "lobby", "reading"), [{ t: 19 }, "celsius"]);
    assert.deepEqual(await emitAck(device, "get", "lobby", "never-set"), []);
    assert.deepEqual(await emitAck(device, "get", "elsewhere", "reading"), [{ error: "this socket is not in room 'elsewhere'" }]);
  });

  it("reads and clears a room's retained values through the API", async () => {
    const before = Date.now();
    await publish(gw, "open", { rooms: ["kept"], event: "a", args: [1], retain: true });
    await publish(gw, "open", { rooms: ["kept"], event: "b", args: [{ x: [2] }], retain: true });
    const got = await api(gw.url, "GET", "/api/v1/sites/open/rooms/kept/retained", { key: KEY });
    assert.equal(got.status, 200);
    assert.deepEqual(got.body.retained.map(({ event, args }) => ({ event, args })), [
      { event: "a", args: [1] },
      { event: "b", args: [{ x: [2] }] },
    ]);
    for (const r of got.body.retained) assert.ok(r.at >= before - 1000 && r.at <= Date.now() + 1000, `at ${r.at}`);
    const wrongKey = await api(gw.url, "GET", "/api/v1/sites/open/rooms/kept/retained", { key: "nope" });
    assert.equal(wrongKey.status, 401);
    const cleared = await api(gw.url, "DELETE", "/api/v1/sites/open/rooms/kept/retained", { key: KEY });
    assert.deepEqual(cleared.body, { cleared: 2 });
    const empty = await api(gw.url, "GET", "/api/v1/sites/open/rooms/kept/retained", { key: KEY });
    assert.deepEqual(empty.body, { retained: [] });
  });

  it("keeps retained values through /send and batch, and refuses past max_retained", async () => {
    const sent = await fetch(`${gw.url}/send?site=open&apiKey=${KEY}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ rooms: "legacy", event: "v", args: ["from send"], retain: true }),
    });
    assert.equal(sent.status, 200);
    const batch = await api(gw.url, "POST", "/api/v1/sites/open/batch", {
      key: KEY,
      body: { messages: [{ rooms: ["legacy"], event: "w", args: ["from batch"], retain: true }] },
    });
    assert.equal(batch.status, 200, JSON.stringify(batch.body));
    const got = await api(gw.url, "GET", "/api/v1/sites/open/rooms/legacy/retained", { key: KEY });
    assert.deepEqual(got.body.retained.map((r) => [r.event, r.args]), [["v", ["from send"]], ["w", ["from batch"]]]);

    // max_retained is 50 per site: fill the site, then one more is refused with 507 and sends nothing.
    const existing = (await Promise.all(["lobby", "kept", "legacy"].map((room) =>
      api(gw.url, "GET", `/api/v1/sites/open/rooms/${room}/retained`, { key: KEY })))).reduce((n, r) => n + r.body.retained.length, 0);
    for (let i = existing; i < 50; i++) await publish(gw, "open", { rooms: ["fill"], event: `e${i}`, args: [i], retain: true });
    const full = await publish(gw, "open", { rooms: ["fill"], event: "one-too-many", args: [], retain: true }, 507);
    assert.match(full.error, /max_retained/);
    const cleared = await api(gw.url, "DELETE", "/api/v1/sites/open/rooms/fill/retained", { key: KEY });
    assert.equal(cleared.status, 200);
    await publish(gw, "open", { rooms: ["fill"], event: "one-too-many", args: [], retain: true });
  });

  it("holds each socket to its limits: events per second, in flight, and size", async () => {
    const alice = connect(gw, "auction", { token: token("alice", "lot_9") });
    await waitConnected(alice);
    // 2 in flight at most: the third slow event is refused at once.
    const slow = [emitAck(alice, "slow"), emitAck(alice, "slow")];
    const third = await emitAck(alice, "slow");
    assert.deepEqual(third, [{ error: "2 events are still waiting for an answer" }]);
    await Promise.all(slow);
    await sleep(1100); // the bucket refills
    // 5 per second: of 8 at once, 5 pass and 3 are refused.
    const answers = await Promise.all(Array.from({ length: 8 }, () => emitAck(alice, "nope")));
    const refused = answers.filter(([a]) => a.error === "more than 5 events per second");
    assert.equal(refused.length, 3, JSON.stringify(answers));
    await sleep(1100);
    const [big] = await emitAck(alice, "bid", "lot_9", "x".repeat(3000));
    assert.match(big.error, /over the limit of 2000/);
    assert.ok(alice.connected);
    const limits = (await api(gw.url, "GET", "/limits")).body;
    for (const name of ["client_events_per_sec", "client_events_in_flight", "max_client_event_bytes"]) {
      assert.ok(limits[name] >= 1, `${name}: ${JSON.stringify(limits)}`);
    }
  });

  it("routes events of socket.io 2.x clients, with acks, over polling too", async () => {
    const old = connect(gw, "auction", { token: token("dave", "lot_v2"), v2: true, transport: "polling" });
    await waitConnected(old);
    assert.deepEqual(await emitAck(old, "bid", "lot_v2", 30), [{ accepted: true, amount: 30 }]);
    assert.deepEqual(await emitAck(old, "nope"), [{ error: "event 'nope' is not routed" }]);
    const visitor = connect(gw, "open", { v2: true });
    await waitConnected(visitor);
    const scores = record(visitor, "score");
    await publish(gw, "open", { rooms: ["lobby"], event: "score", args: [9, "v2"], retain: true });
    // The lobby's retained score from an earlier test may arrive first, right after the connect: wait for ours.
    await until(() => scores.some(([value]) => value === 9));
    assert.deepEqual(scores.at(-1), [9, "v2"]);
    assert.deepEqual(await emitAck(visitor, "get", "lobby", "score"), [9, "v2"]);
  });
});

describe("retained state through a restart", { timeout: 60_000 }, () => {
  it("survives a restart of the embedded store", async () => {
    const backend = await startBackend({});
    const config = configYaml(backend);
    let gw = await startGateway({ configYaml: config, keep: true });
    const { dir } = gw;
    try {
      await publish(gw, "open", { rooms: ["lobby"], event: "persisted", args: ["still here"], retain: true });
      await gw.stop();
      gw = await startGateway({ configYaml: config, dir });
      const late = connect(gw, "open");
      const got = record(late, "persisted");
      await waitConnected(late);
      await until(() => got.length === 1, STEP_TIMEOUT_MS, "the retained value after the restart");
      assert.deepEqual(got[0], ["still here"]);
    } finally {
      clients.closeAll();
      await gw.stop();
      await backend.close();
    }
  });
});

describe("the embedded default's demo site", { timeout: 60_000 }, () => {
  it("relays chat and answers get, the round trips its page shows", async () => {
    const gw = await startGateway({ configYaml: "server: {}\n" });
    try {
      const key = readFileSync(path.join(gw.dir, "data", "demo-api-key"), "utf8").trim();
      const page = await fetch(`${gw.url}/`).then((r) => r.text());
      assert.match(page, /emit\("chat"/, "the page offers the relay");
      const [one, two] = [connect(gw, "demo"), connect(gw, "demo")];
      await Promise.all([waitConnected(one), waitConnected(two)]);
      const chats = record(two, "chat");
      assert.deepEqual(await emitAck(one, "chat", "public", "hi"), [{ ok: true }]);
      await until(() => chats.length === 1);
      assert.deepEqual(chats[0], ["public", "hi"]);
      const res = await api(gw.url, "POST", "/api/v1/sites/demo/publish", {
        key,
        body: { rooms: ["public"], event: "news", args: [{ hello: "world" }], retain: true },
      });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.deepEqual(await emitAck(one, "get", "public", "news"), [{ hello: "world" }]);
    } finally {
      clients.closeAll();
      await gw.stop();
    }
  });
});

describe("hooks are retried", { timeout: 60_000 }, () => {
  it("retries a connect hook that failed, and sends the disconnect after it", async () => {
    let attempts = 0;
    const backend = await startBackend({
      "/auth": authAnswer,
      "/hooks/connect": (call, res) => (++attempts < 3 ? reply(res, 503, { error: "busy" }) : reply(res, 200, {})),
      "/hooks/disconnect": {},
    });
    const gw = await startGateway({ configYaml: configYaml(backend) });
    try {
      const alice = connect(gw, "auction", { token: token("alice") });
      await waitConnected(alice);
      const id = alice.id;
      alice.disconnect();
      await backend.awaitCalls("/hooks/disconnect", 1, 10_000);
      const order = backend.calls.filter((c) => c.path.startsWith("/hooks/")).map((c) => c.path);
      assert.deepEqual(order, ["/hooks/connect", "/hooks/connect", "/hooks/connect", "/hooks/disconnect"]);
      assert.ok(backend.calls.filter((c) => c.path.startsWith("/hooks/")).every((c) => c.body.socket.id === id));
    } finally {
      clients.closeAll();
      await gw.stop();
      await backend.close();
    }
  });
});
