// socket.io-client 4.x (Engine.IO v4) against `herald-conformance --suite e2e`:
// every event/ack/binary/disconnect scenario, over each of the three ways a client can connect.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { startServer } from "./server.mjs";
import {
  Clients,
  QUIET_MS,
  TEST_TIMEOUT_MS,
  asBuffer,
  emitAck,
  nextEvent,
  record,
  sleep,
  waitConnected,
} from "./util.mjs";

const MODES = [
  { name: "websocket only", transports: ["websocket"], expectFirst: "websocket", expectFinal: "websocket" },
  { name: "polling only", transports: ["polling"], expectFirst: "polling", expectFinal: "polling" },
  { name: "polling upgraded to websocket", transports: ["polling", "websocket"], expectFirst: "polling", expectFinal: "websocket" },
];

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

/**
 * Connects a v4 client in the given mode and, for the upgrade mode, waits until the upgrade to
 * websocket has completed, so that every later step runs over the final transport.
 */
async function connect(mode, nsp = "/", opts = {}) {
  const socket = clients.add(
    io(server.url + nsp, {
      forceNew: true,
      reconnection: false,
      timeout: 5_000,
      transports: mode.transports,
      ...opts,
    }),
  );
  const engine = socket.io.engine;
  const firstTransport = new Promise((resolve) => socket.io.once("open", () => resolve(engine.transport.name)));
  const upgraded =
    mode.expectFinal !== mode.expectFirst ? nextEvent(engine, "upgrade", 5_000) : null;
  await waitConnected(socket);
  assert.equal(await firstTransport, mode.expectFirst, "transport used for the handshake");
  if (upgraded) {
    const [transport] = await upgraded;
    assert.equal(transport.name, "websocket", "transport named in the 'upgrade' event");
  }
  assert.equal(socket.io.engine.transport.name, mode.expectFinal, "transport after connect/upgrade");
  return socket;
}

for (const mode of MODES) {
  describe(`v4 client, ${mode.name}`, () => {
    it("connects, gets a socket id and the (empty) auth echo", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = io(server.url, {
        forceNew: true,
        reconnection: false,
        timeout: 5_000,
        transports: mode.transports,
      });
      clients.add(socket);
      const auth = nextEvent(socket, "auth");
      await waitConnected(socket);
      assert.equal(typeof socket.id, "string");
      assert.ok(socket.id.length > 0, "non-empty socket id");
      assert.deepEqual(await auth, [{}], "no auth payload -> auth event with {}");
      if (mode.expectFinal !== mode.expectFirst) {
        if (socket.io.engine.transport.name !== "websocket") await nextEvent(socket.io.engine, "upgrade");
        assert.equal(socket.io.engine.transport.name, "websocket");
      } else {
        assert.equal(socket.io.engine.transport.name, mode.expectFinal);
      }
    });

    it("message -> message-back with the same (mixed) args", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      const args = [1, "two", { three: [3, 3.5, null, true] }, ["é", "😀", "\u2028"], null, -0.25];
      const back = nextEvent(socket, "message-back");
      socket.emit("message", ...args);
      // JSON has no -0 distinction issue here; null/unicode must survive the round trip
      assert.deepEqual(await back, args);
    });

    it("several messages keep their order", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      const got = record(socket, "message-back");
      for (let i = 0; i < 20; i++) socket.emit("message", i);
      const deadline = Date.now() + 5_000;
      while (got.length < 20 && Date.now() < deadline) await sleep(10);
      assert.deepEqual(
        got.map((a) => a[0]),
        Array.from({ length: 20 }, (_, i) => i),
      );
    });

    it("client -> server ack: message-with-ack answers with the same args", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      assert.deepEqual(await emitAck(socket, "message-with-ack", 1, "2", { 3: [4] }), [1, "2", { 3: [4] }]);
      // no args at all
      assert.deepEqual(await emitAck(socket, "message-with-ack"), []);
      // acks resolve independently when several are in flight
      const many = await Promise.all([0, 1, 2, 3, 4].map((i) => emitAck(socket, "message-with-ack", i, `s${i}`)));
      assert.deepEqual(many, [0, 1, 2, 3, 4].map((i) => [i, `s${i}`]));
    });

    it("client -> server ack through v4's timeout()/emitWithAck API", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      const reply = await socket.timeout(5_000).emitWithAck("message-with-ack", { hello: "world" });
      assert.deepEqual(reply, { hello: "world" });
    });

    it("server -> client ack: ask gets the client's reply", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      const seen = [];
      socket.on("question", (...args) => {
        const cb = args.pop();
        seen.push(args);
        assert.equal(typeof cb, "function", "server asked for an ack");
        cb("answer", args[0] + 1, { echoed: args[1] });
      });
      const [result] = await emitAck(socket, "ask", { event: "question", args: [41, "bee"], timeoutMs: 3_000 });
      assert.deepEqual(seen, [[41, "bee"]]);
      assert.deepEqual(result, { ok: true, reply: ["answer", 42, { echoed: "bee" }] });
    });

    it("server -> client ack with a binary reply", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      socket.on("bin-question", (cb) => cb(Buffer.from([9, 8, 7, 0, 255])));
      const [result] = await emitAck(socket, "ask", { event: "bin-question", args: [], timeoutMs: 3_000 });
      assert.equal(result.ok, true, JSON.stringify(result));
      assert.equal(result.reply.length, 1);
      const buf = asBuffer(result.reply[0]);
      assert.ok(buf, `reply[0] should be binary, got ${JSON.stringify(result.reply[0])}`);
      assert.deepEqual([...buf], [9, 8, 7, 0, 255]);
    });

    it("server -> client ack: ask times out when the client never acks", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      const seen = [];
      socket.on("silent", (...args) => {
        const cb = args.pop();
        seen.push({ args, hadCallback: typeof cb === "function" });
        // never call cb
      });
      const t0 = Date.now();
      const [result] = await emitAck(socket, "ask", { event: "silent", args: ["x"], timeoutMs: 400 });
      const elapsed = Date.now() - t0;
      assert.deepEqual(result, { ok: false, error: "timeout" });
      assert.deepEqual(seen, [{ args: ["x"], hadCallback: true }]);
      assert.ok(elapsed >= 350, `timeout answered after ${elapsed} ms, expected >= ~400 ms`);
      assert.ok(elapsed < 4_000, `timeout answered after ${elapsed} ms, expected ~400 ms`);
      // the socket is still usable afterwards
      assert.deepEqual(await emitAck(socket, "message-with-ack", "still-alive"), ["still-alive"]);
    });

    it("binary args in message come back in message-back", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      const big = Buffer.alloc(100_000, 0);
      for (let i = 0; i < big.length; i++) big[i] = i % 251;
      const back = nextEvent(socket, "message-back");
      socket.emit("message", Buffer.from([1, 2, 3]), { nested: Buffer.from("xyz"), n: 5 }, "plain", big);
      const [b0, obj, s, b3] = await back;
      assert.deepEqual([...asBuffer(b0)], [1, 2, 3]);
      assert.equal(asBuffer(obj.nested)?.toString(), "xyz");
      assert.equal(obj.n, 5);
      assert.equal(s, "plain");
      assert.ok(asBuffer(b3), "4th arg is binary");
      assert.ok(asBuffer(b3).equals(big), "100 kB buffer unchanged");
    });

    it("binary-echo: binary round trip through an ack", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      const payload = Buffer.from([0, 1, 2, 0xfe, 0xff, 0x80, 0x7f]);
      const reply = await emitAck(socket, "binary-echo", payload);
      assert.equal(reply.length, 1);
      const buf = asBuffer(reply[0]);
      assert.ok(buf, `binary-echo reply should be binary, got ${JSON.stringify(reply[0])}`);
      assert.ok(buf.equals(payload), `got ${buf.toString("hex")}`);
    });

    it("disconnect-me: server-side disconnect gives 'io server disconnect'", { timeout: TEST_TIMEOUT_MS }, async () => {
      const socket = await connect(mode);
      const disc = nextEvent(socket, "disconnect");
      socket.emit("disconnect-me");
      const [reason] = await disc;
      assert.equal(reason, "io server disconnect");
      assert.equal(socket.connected, false);
      // no automatic reconnection after a server-side disconnect
      await sleep(QUIET_MS);
      assert.equal(socket.connected, false);
    });

    it("client-side disconnect is clean and a new connection works", { timeout: TEST_TIMEOUT_MS }, async () => {
      const a = await connect(mode);
      const firstId = a.id;
      const disc = nextEvent(a, "disconnect");
      a.disconnect();
      const [reason] = await disc;
      assert.equal(reason, "io client disconnect");
      const b = await connect(mode);
      assert.notEqual(b.id, firstId);
      assert.deepEqual(await emitAck(b, "message-with-ack", "after"), ["after"]);
    });
  });
}
