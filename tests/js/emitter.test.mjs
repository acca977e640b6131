// The real `@socket.io/redis-emitter` against herald processes on the real Redis at 127.0.0.1:6379 (database 12,
// and an emitter prefix unique to the run, since pub/sub channels are shared by every database): a backend that
// emits to `/<site>` reaches that site's clients, with rooms, except, volatile, binary arguments, socketsJoin,
// socketsLeave and disconnectSockets; on a mailbox site an emit to a user room waits in the user's mailbox; with
// two nodes every message is handled once.
//
// Needs: Redis on 127.0.0.1:6379 (scripts/services.sh starts it).

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import net from "node:net";
import { Emitter } from "@socket.io/redis-emitter";
import { createClient } from "redis";
import { Manager, io } from "socket.io-client";
import { api, craftJwt, startGateway } from "./gateway-helpers.mjs";
import { awaitOffline, device, devicesOf, eventsOf, settled, siteYaml, tokenFor } from "./mailbox-helpers.mjs";
import { Clients, QUIET_MS, STEP_TIMEOUT_MS, TEST_TIMEOUT_MS, asBuffer, sleep, until, waitConnected } from "./util.mjs";

const REDIS = { host: "127.0.0.1", port: 6379 };
const REDIS_URL = `redis://${REDIS.host}:${REDIS.port}/12`;
const LIVE_KEY = "emitter-live-key-0123456789";
const LIVE_SECRET = "emitter-live-jwt-secret-0123456789abcdef";

function redisAnswers() {
  return new Promise((resolve) => {
    const sock = net.connect(REDIS);
    sock.setTimeout(1000, () => resolve(false) || sock.destroy());
    sock.once("error", () => resolve(false));
    sock.once("connect", () => sock.write("PING\r\n"));
    sock.once("data", (d) => {
      resolve(d.toString().startsWith("+PONG"));
      sock.destroy();
    });
  });
}

async function requireRedis() {
  if (!(await redisAnswers())) {
    throw new Error(`these tests need Redis on ${REDIS.host}:${REDIS.port}; start it with \`bash scripts/services.sh\``);
  }
}

/** A herald config: the site `live` (JWT, rooms from the token, no mailboxes) and the mailbox site `app`. */
function configYaml(prefix) {
  return `
server:
  redis_url: ${REDIS_URL}
  cluster:
    emitter_prefix: ${prefix}
sites:
  - name: live
    api_keys: [${LIVE_KEY}]
    auth: {kind: jwt, algorithm: HS256, secret: "${LIVE_SECRET}"}
    recovery_window_ms: 0
${siteYaml("app")}
`;
}

const clients = new Clients();
afterEach(() => clients.closeAll());

/** A client of the site `live` in `rooms`, recording every event. */
async function liveClient(url, rooms) {
  const now = Math.floor(Date.now() / 1000);
  const token = craftJwt("HS256", { sub: rooms.join("+") || "nobody", rooms, iat: now, exp: now + 3600 }, LIVE_SECRET);
  const socket = clients.add(
    io(`${url}/live`, { forceNew: true, reconnection: false, timeout: STEP_TIMEOUT_MS, transports: ["websocket"], auth: { token } }),
  );
  socket.log = [];
  socket.onAny((event, ...args) => socket.log.push({ event, args }));
  await waitConnected(socket);
  return socket;
}

const got = (socket, event) => eventsOf(socket, event);

async function redisClient() {
  const client = createClient({ url: REDIS_URL });
  client.on("error", () => {});
  await client.connect();
  return client;
}

describe("the socket.io Redis emitter, one node", { timeout: 120_000 }, () => {
  const run = `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
  const prefix = `herald-test-${run}`;
  let node, redis, emitter, live;

  before(async () => {
    await requireRedis();
    node = await startGateway({ configYaml: configYaml(prefix) });
    redis = await redisClient();
    emitter = new Emitter(redis, { key: prefix });
    live = emitter.of("/live");
  });
  after(async () => {
    clients.closeAll();
    await redis?.quit().catch(() => {});
    await node?.stop();
  });

  it("a namespace-wide emit reaches every client of the site, once", { timeout: TEST_TIMEOUT_MS }, async () => {
    const [a, b] = await Promise.all([liveClient(node.url, ["a"]), liveClient(node.url, ["b"])]);
    live.emit("hello", "world", 1, { nested: [true, null] });
    await until(() => got(a, "hello").length === 1 && got(b, "hello").length === 1, STEP_TIMEOUT_MS, "hello on both");
    assert.deepEqual(got(a, "hello")[0], ["world", 1, { nested: [true, null] }]);
    await sleep(QUIET_MS);
    assert.equal(got(a, "hello").length, 1, "exactly once");
  });

  it("to(room), several rooms, except, and volatile pick the clients socket.io would", { timeout: TEST_TIMEOUT_MS }, async () => {
    const [a, b, ab] = await Promise.all([
      liveClient(node.url, ["a"]),
      liveClient(node.url, ["b"]),
      liveClient(node.url, ["a", "b"]),
    ]);
    live.to("a").emit("to-a", 1);
    live.to(["a", "b"]).except("b").emit("a-not-b", 2);
    live.except("a").emit("not-a", 3);
    live.volatile.to("b").emit("volatile-b", 4);
    live.emit("marker");
    await until(() => [a, b, ab].every((s) => got(s, "marker").length === 1), STEP_TIMEOUT_MS, "marker everywhere");
    const seen = (s) => s.log.map((e) => e.event).filter((e) => e !== "marker");
    assert.deepEqual(seen(a), ["to-a", "a-not-b"]);
    assert.deepEqual(seen(b), ["not-a", "volatile-b"]);
    assert.deepEqual(seen(ab), ["to-a", "volatile-b"]);
  });

  it("binary arguments arrive as Buffers", { timeout: TEST_TIMEOUT_MS }, async () => {
    const a = await liveClient(node.url, ["a"]);
    live.to("a").emit("file", Buffer.from([1, 2, 3]), { name: "x", body: Buffer.from("hi") }, "text");
    await until(() => got(a, "file").length === 1, STEP_TIMEOUT_MS, "the binary event");
    const [bytes, meta, text] = got(a, "file")[0];
    assert.ok(Buffer.isBuffer(bytes), "a Buffer");
    assert.deepEqual([...asBuffer(bytes)], [1, 2, 3]);
    assert.equal(meta.name, "x");
    assert.equal(asBuffer(meta.body).toString(), "hi");
    assert.equal(text, "text");
  });

  it("socketsJoin and socketsLeave change rooms, then emits follow them", { timeout: TEST_TIMEOUT_MS }, async () => {
    const [a, b] = await Promise.all([liveClient(node.url, ["a"]), liveClient(node.url, ["b"])]);
    live.in("a").socketsJoin(["joined", "other"]);
    live.to("joined").emit("in-joined", 1);
    await until(() => got(a, "in-joined").length === 1, STEP_TIMEOUT_MS, "the emit to the joined room");
    const listed = await api(node.url, "GET", `/api/v1/sites/live/sockets?room=joined`, { key: LIVE_KEY });
    assert.deepEqual(listed.body.sockets.map((s) => s.id), [a.id]);
    live.socketsLeave("joined");
    live.to("joined").emit("in-joined", 2);
    live.emit("marker");
    await until(() => got(a, "marker").length === 1 && got(b, "marker").length === 1, STEP_TIMEOUT_MS, "marker");
    assert.equal(got(a, "in-joined").length, 1, "left the room");
    assert.equal(got(b, "in-joined").length, 0);
  });

  it("disconnectSockets disconnects the matching clients, and with close closes their connection", { timeout: TEST_TIMEOUT_MS }, async () => {
    // Each client also holds a socket of the site `app` on the same connection, which tells a namespace
    // disconnect (it stays) from a closed connection (it goes too).
    const pair = async (room, n) => {
      const manager = new Manager(node.url, { reconnection: false, timeout: STEP_TIMEOUT_MS, transports: ["websocket"] });
      const now = Math.floor(Date.now() / 1000);
      const token = craftJwt("HS256", { sub: room, rooms: [room], iat: now, exp: now + 3600 }, LIVE_SECRET);
      const onLive = clients.add(manager.socket("/live", { auth: { token } }));
      const onApp = clients.add(manager.socket("/app", { auth: { token: tokenFor(`${run}d${n}`), deviceId: "d" } }));
      await Promise.all([waitConnected(onLive), waitConnected(onApp)]);
      const reasons = {};
      onLive.on("disconnect", (r) => (reasons.live = r));
      onApp.on("disconnect", (r) => (reasons.app = r));
      return { onLive, onApp, reasons };
    };
    const [a, b, c] = await Promise.all([pair("a", 1), pair("b", 2), pair("c", 3)]);
    live.in("a").disconnectSockets();
    await until(() => a.reasons.live, STEP_TIMEOUT_MS, "a disconnected");
    assert.equal(a.reasons.live, "io server disconnect");
    live.in("b").disconnectSockets(true);
    await until(() => b.reasons.live && b.reasons.app, STEP_TIMEOUT_MS, "b's connection closed");
    assert.equal(b.reasons.live, "io server disconnect");
    assert.equal(b.reasons.app, "transport close", "the whole connection closed");
    await sleep(QUIET_MS);
    assert.equal(a.onApp.connected, true, "without close, the connection stays");
    assert.equal(c.onLive.connected, true, "c is in neither room");
  });

  it("the root namespace, unknown namespaces and garbage are ignored; herald goes on", { timeout: TEST_TIMEOUT_MS }, async () => {
    const a = await liveClient(node.url, ["a"]);
    emitter.emit("root", 1);
    emitter.of("/nosuchsite").emit("nowhere", 1);
    await redis.publish(`${prefix}#/live#`, Buffer.from([0x93, 0xc1, 0xff]));
    await redis.publish(`${prefix}#/live#`, "not msgpack at all");
    await redis.publish(`${prefix}-request#/live#`, "{broken json");
    assert.throws(() => live.emit("connect", 1), /reserved/); // refused by the emitter itself
    live.emit("after", 2);
    await until(() => got(a, "after").length === 1, STEP_TIMEOUT_MS, "the next good emit");
    assert.deepEqual(a.log.map((e) => e.event), ["after"]);
  });

  it("on a mailbox site, an emit to a user room waits in the mailbox of a device that is offline", { timeout: TEST_TIMEOUT_MS }, async () => {
    const id = `${run}x1`;
    const phone = device(clients, node.url, { id, deviceId: "phone" });
    await waitConnected(phone);
    await settled(phone);
    phone.disconnect();
    await awaitOffline(node.url, id, "phone");
    emitter.of("/app").to(`user_${id}`).emit("note", { n: 1 });
    await until(async () => (await devicesOf(node.url, id)).phone?.pending === 1, STEP_TIMEOUT_MS, "queued");
    const back = device(clients, node.url, { id, deviceId: "phone" });
    await waitConnected(back);
    await until(() => eventsOf(back, "_batch").length === 1, STEP_TIMEOUT_MS, "_batch");
    assert.deepEqual(eventsOf(back, "_batch")[0], [[["note", { n: 1 }]]]);
  });

  it("on a mailbox site, socketsJoin records the shared room, so an emit to it reaches the user offline", { timeout: TEST_TIMEOUT_MS }, async () => {
    const id = `${run}x2`;
    const room = `team_${run}`;
    const phone = device(clients, node.url, { id, deviceId: "phone" });
    await waitConnected(phone);
    await settled(phone);
    emitter.of("/app").in(`user_${id}`).socketsJoin(room);
    await until(async () => {
      const res = await api(node.url, "GET", `/api/v1/sites/app/sockets?room=${room}`, { key: "mailbox-key-0123456789" });
      return res.body.sockets?.length === 1;
    }, STEP_TIMEOUT_MS, "joined");
    phone.disconnect();
    await awaitOffline(node.url, id, "phone");
    emitter.of("/app").to(room).emit("team", "hi");
    await until(async () => (await devicesOf(node.url, id)).phone?.pending === 1, STEP_TIMEOUT_MS, "queued through the room index");
  });
});

describe("the socket.io Redis emitter, two nodes", { timeout: 120_000 }, () => {
  const run = `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
  const prefix = `herald-test-${run}`;
  let a, b, redis, emitter;

  before(async () => {
    await requireRedis();
    // A first, so it holds the lease when B starts.
    a = await startGateway({ configYaml: configYaml(prefix) });
    b = await startGateway({ configYaml: configYaml(prefix) });
    redis = await redisClient();
    emitter = new Emitter(redis, { key: prefix });
  });
  after(async () => {
    clients.closeAll();
    await redis?.quit().catch(() => {});
    await Promise.all([a?.stop(), b?.stop()]);
  });

  /** Whether a broadcast on one node reaches the other's clients (the Redis cluster bus). */
  async function busCarries(onB) {
    await api(a.url, "POST", "/api/v1/sites/live/publish", { key: LIVE_KEY, body: { all: true, event: "probe" } });
    try {
      await until(() => got(onB, "probe").length > 0, 2_000, "probe");
      return true;
    } catch {
      return false;
    }
  }

  it("an emit to a user room is queued once, whichever node leads", { timeout: TEST_TIMEOUT_MS }, async () => {
    const id = `${run}x1`;
    const phone = device(clients, b.url, { id, deviceId: "phone" });
    await waitConnected(phone);
    await settled(phone);
    phone.disconnect();
    await awaitOffline(a.url, id, "phone");
    emitter.of("/app").to(`user_${id}`).emit("once", 1);
    await until(async () => (await devicesOf(a.url, id)).phone?.pending >= 1, STEP_TIMEOUT_MS, "queued");
    await sleep(QUIET_MS);
    assert.equal((await devicesOf(a.url, id)).phone.pending, 1, "one entry, not one per node");
  });

  it("an emit reaches a client on each node exactly once", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const [onA, onB] = await Promise.all([liveClient(a.url, ["r"]), liveClient(b.url, ["r"])]);
    if (!(await busCarries(onB))) {
      t.skip("this build's cluster bus does not carry broadcasts between nodes (no Redis bus yet)");
      return;
    }
    emitter.of("/live").to("r").emit("both", 1);
    emitter.of("/live").emit("all", 2);
    await until(() => [onA, onB].every((s) => got(s, "both").length === 1 && got(s, "all").length === 1), STEP_TIMEOUT_MS, "on both nodes");
    await sleep(QUIET_MS);
    for (const s of [onA, onB]) {
      assert.equal(got(s, "both").length, 1);
      assert.equal(got(s, "all").length, 1);
    }
  });

  it("socketsJoin and disconnectSockets act on the sockets of every node", { timeout: TEST_TIMEOUT_MS }, async () => {
    const [onA, onB] = await Promise.all([liveClient(a.url, ["x"]), liveClient(b.url, ["x"])]);
    emitter.of("/live").in("x").socketsJoin("y");
    // Each node lists its own sockets, or (with the cluster-wide listing) everyone's: either way, both appear.
    await until(async () => {
      const listed = new Set();
      for (const node of [a, b]) {
        const res = await api(node.url, "GET", "/api/v1/sites/live/sockets?room=y", { key: LIVE_KEY });
        for (const s of res.body.sockets ?? []) listed.add(s.id);
      }
      return listed.has(onA.id) && listed.has(onB.id);
    }, STEP_TIMEOUT_MS, "joined on each node");
    const gone = [onA, onB].map((s) => new Promise((resolve) => s.once("disconnect", resolve)));
    emitter.of("/live").in("y").disconnectSockets();
    assert.deepEqual(await Promise.all(gone), ["io server disconnect", "io server disconnect"]);
  });

  it("when the leader dies, the other node takes over within the lease", { timeout: TEST_TIMEOUT_MS }, async () => {
    const onB = await liveClient(b.url, ["z"]);
    await a.kill();
    const started = Date.now();
    let n = 0;
    // The gap: A's lease (3 s) lapses, then B takes it at its next attempt (1 s).
    while (got(onB, "tick").length === 0 && Date.now() - started < 8_000) {
      emitter.of("/live").to("z").emit("tick", ++n);
      await sleep(200);
    }
    assert.ok(got(onB, "tick").length > 0, "B took over");
    assert.ok(Date.now() - started < 5_500, `took over in ${Date.now() - started} ms`);
    rmSync(a.dir, { recursive: true, force: true });
    a = null;
  });
});
