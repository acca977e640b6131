// socket.io-client 4.x against `herald-conformance --suite e2e`: namespaces, auth payloads,
// multiplexing several namespaces over one Engine.IO connection.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { io, Manager } from "socket.io-client";
import { startServer } from "./server.mjs";
import {
  Clients,
  QUIET_MS,
  TEST_TIMEOUT_MS,
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
const managers = [];

before(async () => {
  server = await startServer({ suite: "e2e" });
});
afterEach(() => {
  clients.closeAll();
  for (const m of managers.splice(0)) {
    try {
      m.engine?.close();
    } catch {}
  }
});
after(async () => {
  clients.closeAll();
  await server?.stop();
});

const BASE = { forceNew: true, reconnection: false, timeout: 5_000 };

for (const transports of [["websocket"], ["polling"]]) {
  describe(`v4 client, namespaces over ${transports[0]}`, () => {
    it("main namespace echoes the auth payload", { timeout: TEST_TIMEOUT_MS }, async () => {
      const auth = { token: "123", nested: { n: 1, list: [true, null] } };
      const s = clients.add(io(server.url, { ...BASE, transports, auth }));
      const got = nextEvent(s, "auth");
      await waitConnected(s);
      assert.deepEqual(await got, [auth]);
    });

    it("/custom echoes the auth payload and serves the same handlers", { timeout: TEST_TIMEOUT_MS }, async () => {
      const auth = { token: "abc" };
      const s = clients.add(io(server.url + "/custom", { ...BASE, transports, auth }));
      const got = nextEvent(s, "auth");
      await waitConnected(s);
      assert.deepEqual(await got, [auth]);
      assert.equal(s.nsp, "/custom");
      const back = nextEvent(s, "message-back");
      s.emit("message", "in-custom", 1);
      assert.deepEqual(await back, ["in-custom", 1]);
      assert.deepEqual(await emitAck(s, "message-with-ack", "ack-in-custom"), ["ack-in-custom"]);
      const [rooms] = await emitAck(s, "rooms");
      assert.deepEqual(rooms, [s.id]);
    });

    it("/custom without auth gets {}", { timeout: TEST_TIMEOUT_MS }, async () => {
      const s = clients.add(io(server.url + "/custom", { ...BASE, transports }));
      const got = nextEvent(s, "auth");
      await waitConnected(s);
      assert.deepEqual(await got, [{}]);
    });

    it("/other is accepted and serves the same handlers", { timeout: TEST_TIMEOUT_MS }, async () => {
      // E2E_CONTRACT.md: "/", "/custom" and "/other"; other names are not relied upon here.
      const s = clients.add(io(server.url + "/other", { ...BASE, transports, auth: { who: "other" } }));
      const got = nextEvent(s, "auth");
      await waitConnected(s);
      assert.equal(s.nsp, "/other");
      assert.deepEqual(await got, [{ who: "other" }]);
      assert.deepEqual(await emitAck(s, "message-with-ack", "in-other"), ["in-other"]);
    });

    it("multiplexing: / and /custom on one connection, each with its own auth", { timeout: TEST_TIMEOUT_MS }, async () => {
      const m = new Manager(server.url, { reconnection: false, timeout: 5_000, transports });
      managers.push(m);
      const main = clients.add(m.socket("/", { auth: { ns: "main" } }));
      const custom = clients.add(m.socket("/custom", { auth: { ns: "custom" } }));
      const mainAuth = nextEvent(main, "auth");
      const customAuth = nextEvent(custom, "auth");
      main.connect();
      custom.connect();
      await Promise.all([waitConnected(main), waitConnected(custom)]);
      assert.deepEqual(await mainAuth, [{ ns: "main" }]);
      assert.deepEqual(await customAuth, [{ ns: "custom" }]);
      assert.equal(main.io.engine, custom.io.engine, "one Engine.IO connection");
      assert.notEqual(main.id, custom.id, "one socket id per namespace");

      const mainGot = record(main, "message-back");
      const customGot = record(custom, "message-back");
      main.emit("message", "to-main");
      custom.emit("message", "to-custom");
      const deadline = Date.now() + 5_000;
      while ((mainGot.length < 1 || customGot.length < 1) && Date.now() < deadline) await sleep(10);
      await sleep(QUIET_MS);
      assert.deepEqual(mainGot, [["to-main"]]);
      assert.deepEqual(customGot, [["to-custom"]]);

      // leaving one namespace (server side) keeps the other one working
      const disc = nextEvent(custom, "disconnect");
      custom.emit("disconnect-me");
      assert.equal((await disc)[0], "io server disconnect");
      assert.equal(main.connected, true);
      assert.deepEqual(await emitAck(main, "message-with-ack", "main-still-ok"), ["main-still-ok"]);
      assert.equal(m.engine.readyState, "open", "engine connection stays open");
    });

    it("broadcasts do not cross namespaces", { timeout: TEST_TIMEOUT_MS }, async () => {
      const a1 = clients.add(io(server.url + "/custom", { ...BASE, transports }));
      const a2 = clients.add(io(server.url + "/custom", { ...BASE, transports }));
      const b1 = clients.add(io(server.url + "/other", { ...BASE, transports }));
      const root = clients.add(io(server.url, { ...BASE, transports }));
      await Promise.all([a1, a2, b1, root].map((s) => waitConnected(s)));
      const got = {
        a1: record(a1, "ns-evt"),
        a2: record(a2, "ns-evt"),
        b1: record(b1, "ns-evt"),
        root: record(root, "ns-evt"),
      };
      // whole /custom namespace (sockets of earlier tests may still be closing, hence >= 2)
      const [count] = await emitAck(a1, "broadcast", { event: "ns-evt", args: ["A"], includeSelf: true });
      assert.ok(Number.isInteger(count) && count >= 2, `namespace-wide count ${count} should be >= 2`);
      await until(() => got.a1.length >= 1 && got.a2.length >= 1, 5_000, "namespace-wide delivery");
      await sleep(QUIET_MS);
      assert.deepEqual(got, { a1: [["A"]], a2: [["A"]], b1: [], root: [] });
      // the same room name in three namespaces is three different rooms
      const room = unique("shared-name");
      for (const s of [a2, b1, root]) assert.deepEqual(await emitAck(s, "join", room), ["ok"]);
      assert.deepEqual(await emitAck(a1, "broadcast", { room, event: "ns-evt", args: ["room"] }), [1]);
      await until(() => got.a2.length >= 2, 5_000, "room delivery");
      await sleep(QUIET_MS);
      assert.deepEqual(got, { a1: [["A"]], a2: [["A"], ["room"]], b1: [], root: [] });
      assert.deepEqual(await emitAck(b1, "broadcast", { room, event: "ns-evt", args: ["other-room"] }), [0]);
      assert.deepEqual(await emitAck(root, "broadcast", { room, event: "ns-evt", args: ["root-room"], includeSelf: true }), [1]);
      await until(() => got.root.length >= 1, 5_000, "room delivery in /");
      await sleep(QUIET_MS);
      assert.deepEqual(got, { a1: [["A"]], a2: [["A"], ["room"]], b1: [], root: [["root-room"]] });
    });
  });
}
