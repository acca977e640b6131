// socket.io-client 2.x (Engine.IO v3, Socket.IO protocol v4) against `herald-conformance --suite e2e`.
//
// Notes on the 2.x client:
// - it has no `auth` option: the namespace query string is the auth payload (as the reference
//   Socket.IO server with allowEIO3 does): io(url + "/custom", { query: { token } }).
// - its local `socket.id` is computed client side and is not the server's socket id, so the
//   server-side id is read from the `rooms` ack (the only room of a fresh socket is its own id).

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import ioV2 from "socket.io-client-v2";
import { io as ioV4 } from "socket.io-client";
import { startServer } from "./server.mjs";
import {
  Clients,
  QUIET_MS,
  STEP_TIMEOUT_MS,
  TEST_TIMEOUT_MS,
  asBuffer,
  emitAck,
  nextEvent,
  record,
  sleep,
  unique,
  until,
  waitConnected,
} from "./util.mjs";

let server;
const clients = new Clients();

before(async () => {
  server = await startServer({ suite: "e2e" });
});
afterEach(() => clients.closeAll());
after(async () => {
  clients.closeAll();
  await server?.stop();
});

const MODES = [
  { name: "websocket only", opts: { transports: ["websocket"] }, first: "websocket", final: "websocket" },
  { name: "polling only", opts: { transports: ["polling"] }, first: "polling", final: "polling" },
  { name: "polling only, forceBase64", opts: { transports: ["polling"], forceBase64: true }, first: "polling", final: "polling" },
  { name: "polling upgraded to websocket", opts: { transports: ["polling", "websocket"] }, first: "polling", final: "websocket" },
];

function v2(nsp = "/", opts = {}) {
  return clients.add(
    ioV2(server.url + nsp, { forceNew: true, reconnection: false, timeout: 5_000, ...opts }),
  );
}

async function connect(mode, nsp = "/", extra = {}) {
  const socket = v2(nsp, { ...mode.opts, ...extra });
  const engine = socket.io.engine;
  const first = new Promise((resolve) => socket.io.once("open", () => resolve(engine.transport.name)));
  const upgraded = mode.final !== mode.first ? nextEvent(engine, "upgrade") : null;
  await waitConnected(socket);
  assert.equal(await first, mode.first, "transport used for the handshake");
  if (upgraded) {
    const [transport] = await upgraded;
    assert.equal(transport.name, "websocket", "transport named in the 'upgrade' event");
  }
  assert.equal(socket.io.engine.transport.name, mode.final, "transport after connect/upgrade");
  assert.equal(socket.io.engine.transport.query.EIO, 3, "the 2.x client speaks Engine.IO v3");
  return socket;
}

async function serverSid(socket) {
  const [rooms] = await emitAck(socket, "rooms");
  assert.ok(Array.isArray(rooms) && rooms.length === 1, `fresh socket has one room, got ${JSON.stringify(rooms)}`);
  return rooms[0];
}

for (const mode of MODES) {
  describe(`v2 client, ${mode.name}`, () => {
    it("connects and gets message-back", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      const args = [1, "two", { three: [3, null, false] }, "é😀"];
      const back = nextEvent(socket, "message-back");
      socket.emit("message", ...args);
      assert.deepEqual(await back, args);
    });

    it("message-with-ack (client -> server ack)", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      assert.deepEqual(await emitAck(socket, "message-with-ack", 1, "2", { 3: 4 }), [1, "2", { 3: 4 }]);
      const many = await Promise.all([0, 1, 2].map((i) => emitAck(socket, "message-with-ack", i)));
      assert.deepEqual(many, [[0], [1], [2]]);
    });

    it("ask (server -> client ack), answered and timed out", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      socket.on("question", (n, cb) => cb("answer", n * 2));
      const silent = [];
      socket.on("silent", (...args) => silent.push(args.length)); // never acks
      const [ok] = await emitAck(socket, "ask", { event: "question", args: [21], timeoutMs: 3_000 });
      assert.deepEqual(ok, { ok: true, reply: ["answer", 42] });
      const [timedOut] = await emitAck(socket, "ask", { event: "silent", args: ["x"], timeoutMs: 300 });
      assert.deepEqual(timedOut, { ok: false, error: "timeout" });
      assert.deepEqual(silent, [2], "silent handler got its arg plus an ack callback");
    });

    it("binary round trip (message-back and binary-echo)", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      const payload = Buffer.from([0, 1, 2, 250, 255]);
      const back = nextEvent(socket, "message-back");
      socket.emit("message", payload, { nested: Buffer.from("v2") }, "text");
      const [b, obj, text] = await back;
      assert.ok(asBuffer(b)?.equals(payload), `message-back binary arg, got ${JSON.stringify(b)}`);
      assert.equal(asBuffer(obj.nested)?.toString(), "v2");
      assert.equal(text, "text");
      const [echo] = await emitAck(socket, "binary-echo", payload);
      assert.ok(asBuffer(echo)?.equals(payload), `binary-echo reply, got ${JSON.stringify(echo)}`);
    });

    it("disconnect-me gives 'io server disconnect'", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      const disc = nextEvent(socket, "disconnect");
      socket.emit("disconnect-me");
      assert.equal((await disc)[0], "io server disconnect");
      assert.equal(socket.connected, false);
    });
  });
}

describe("v2 client, namespaces", () => {
  it("main namespace: auth echo is {}", { timeout: TEST_TIMEOUT_MS }, async () => {
    const socket = v2("/", { transports: ["websocket"] });
    const auth = nextEvent(socket, "auth");
    await waitConnected(socket);
    assert.deepEqual(await auth, [{}]);
  });

  for (const transports of [["websocket"], ["polling"]]) {
    it(`custom namespace over ${transports[0]}: query is the auth payload, handlers work`, { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = v2("/custom", { transports, query: { token: "abc" } });
      const auth = nextEvent(socket, "auth");
      await waitConnected(socket);
      assert.equal(socket.nsp, "/custom");
      assert.deepEqual(await auth, [{ token: "abc" }]);
      assert.deepEqual(await emitAck(socket, "message-with-ack", "custom-v2"), ["custom-v2"]);
      const back = nextEvent(socket, "message-back");
      socket.emit("message", "hello-custom");
      assert.deepEqual(await back, ["hello-custom"]);
    });
  }
});

describe("v2 client, rooms (mixed with a v4 client)", () => {
  it("broadcast to a room, to all, and to one socket", { timeout: TEST_TIMEOUT_MS }, async () => {
    // /other is used by no other test of this file (which owns its server): counts are exact
    const nsp = "/other";
    const a = v2(nsp, { transports: ["websocket"] });
    const b = v2(nsp, { transports: ["polling"] });
    const c = v2(nsp, { transports: ["polling", "websocket"] });
    const d = clients.add(ioV4(server.url + nsp, { forceNew: true, reconnection: false, timeout: 5_000, transports: ["websocket"] }));
    await Promise.all([a, b, c, d].map((s) => waitConnected(s)));
    const room = unique("room");
    for (const s of [a, b, d]) assert.deepEqual(await emitAck(s, "join", room), ["ok"]);

    const got = { a: record(a, "ev"), b: record(b, "ev"), c: record(c, "ev"), d: record(d, "ev") };
    const waitAndCheck = async (expected) => {
      await until(
        () => Object.keys(expected).every((k) => got[k].length >= expected[k].length),
        STEP_TIMEOUT_MS,
        `deliveries ${JSON.stringify(expected)}`,
      );
      await sleep(QUIET_MS);
      assert.deepEqual(got, expected);
    };

    // v2 sender outside the room
    assert.deepEqual(await emitAck(c, "broadcast", { room, event: "ev", args: ["room", 1] }), [3]);
    await waitAndCheck({ a: [["room", 1]], b: [["room", 1]], c: [], d: [["room", 1]] });

    // v4 sender, binary payload, includeSelf false, to v2 receivers
    const bin = Buffer.from([7, 7, 7, 0, 1]);
    const binGot = { a: record(a, "bin"), b: record(b, "bin"), c: record(c, "bin"), d: record(d, "bin") };
    assert.deepEqual(await emitAck(d, "broadcast", { room, event: "bin", args: [bin, { k: bin }] }), [2]);
    await until(() => binGot.a.length && binGot.b.length, STEP_TIMEOUT_MS, "binary broadcast to v2 clients");
    await sleep(QUIET_MS);
    assert.deepEqual([binGot.a.length, binGot.b.length, binGot.c.length, binGot.d.length], [1, 1, 0, 0]);
    for (const k of ["a", "b"]) {
      const [x, obj] = binGot[k][0];
      assert.ok(asBuffer(x)?.equals(bin), `${k}: binary arg, got ${JSON.stringify(x)}`);
      assert.ok(asBuffer(obj.k)?.equals(bin), `${k}: nested binary arg`);
    }

    // whole namespace, except the room, includeSelf
    for (const k of ["a", "b", "c", "d"]) got[k].length = 0;
    assert.deepEqual(await emitAck(a, "broadcast", { event: "ev", args: ["all"], includeSelf: true }), [4]);
    await waitAndCheck({ a: [["all"]], b: [["all"]], c: [["all"]], d: [["all"]] });

    // to one socket, addressed by its server-side id
    for (const k of ["a", "b", "c", "d"]) got[k].length = 0;
    const cSid = await serverSid(c);
    assert.deepEqual(await emitAck(d, "to-socket", { sid: cSid, event: "ev", args: ["direct"] }), [true]);
    await waitAndCheck({ a: [], b: [], c: [["direct"]], d: [] });

    // leave
    assert.deepEqual(await emitAck(b, "leave", room), ["ok"]);
    assert.deepEqual(await emitAck(c, "broadcast", { room, event: "ev", args: ["after-leave"] }), [2]);
    await waitAndCheck({ a: [["after-leave"]], b: [], c: [["direct"]], d: [["after-leave"]] });
  });
});
