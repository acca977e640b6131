// socket.io-client 4.x against `herald-conformance --suite e2e`: rooms, broadcasts, to-socket.
//
// This file starts its own server and the four clients below are the only sockets in the main
// namespace "/" (apart from the short-lived ones of the last test), so broadcast counts are exact.
// The clients mix transports (websocket, polling, polling->websocket) on purpose.

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
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
let A, B, C, D;

function client(transports) {
  return clients.add(io(server.url, { forceNew: true, reconnection: false, timeout: 5_000, transports }));
}

before(async () => {
  server = await startServer({ suite: "e2e" });
  A = client(["websocket"]);
  B = client(["polling"]);
  C = client(["polling", "websocket"]);
  D = client(["websocket"]);
  await Promise.all([A, B, C, D].map((s) => waitConnected(s)));
});
after(async () => {
  clients.closeAll();
  await server?.stop();
});

async function joinAll(room, ...sockets) {
  for (const s of sockets) assert.deepEqual(await emitAck(s, "join", room), ["ok"], `join ${room}`);
}

/** Records `event` on all four clients; returns { A: [...], B: [...], ... }. */
function recordAll(event) {
  return { A: record(A, event), B: record(B, event), C: record(C, event), D: record(D, event) };
}

/** Waits until the expected clients each got exactly one event, then a quiet period, then checks. */
async function expectDelivery(got, expectedNames, expectedArgs) {
  await until(() => expectedNames.every((n) => got[n].length >= 1), STEP_TIMEOUT_MS, `delivery to ${expectedNames}`);
  await sleep(QUIET_MS);
  for (const name of ["A", "B", "C", "D"]) {
    if (expectedNames.includes(name)) {
      assert.deepEqual(got[name], [expectedArgs], `${name} should receive exactly one event`);
    } else {
      assert.deepEqual(got[name], [], `${name} should receive nothing`);
    }
  }
}

describe("v4 client, rooms", () => {
  it("rooms lists the socket's own sid room", { timeout: TEST_TIMEOUT_MS }, async () => {
    for (const s of [A, B, C, D]) {
      const [rooms] = await emitAck(s, "rooms");
      assert.ok(Array.isArray(rooms), `rooms should be an array, got ${JSON.stringify(rooms)}`);
      assert.deepEqual(rooms, [s.id]);
    }
    assert.equal(new Set([A.id, B.id, C.id, D.id]).size, 4, "socket ids are distinct");
  });

  it("join and leave update rooms", { timeout: TEST_TIMEOUT_MS }, async () => {
    const r1 = unique("jl1");
    const r2 = unique("jl2");
    assert.deepEqual(await emitAck(A, "join", r1), ["ok"]);
    assert.deepEqual(await emitAck(A, "join", r2), ["ok"]);
    assert.deepEqual(await emitAck(A, "join", r2), ["ok"], "joining twice is harmless");
    let [rooms] = await emitAck(A, "rooms");
    assert.deepEqual([...rooms].sort(), [A.id, r1, r2].sort());
    assert.deepEqual(await emitAck(A, "leave", r1), ["ok"]);
    [rooms] = await emitAck(A, "rooms");
    assert.deepEqual([...rooms].sort(), [A.id, r2].sort());
    assert.deepEqual(await emitAck(A, "leave", r2), ["ok"]);
    assert.deepEqual(await emitAck(A, "leave", unique("never-joined")), ["ok"], "leaving a room not joined");
    [rooms] = await emitAck(A, "rooms");
    assert.deepEqual(rooms, [A.id]);
    // a broadcast to the left room reaches nobody
    const got = recordAll("after-leave");
    assert.deepEqual(await emitAck(B, "broadcast", { room: r1, event: "after-leave", args: [1] }), [0]);
    await expectDelivery(got, [], [1]);
  });

  it("broadcast to a room reaches its members only (sender excluded by default)", { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = unique("room");
    await joinAll(room, A, B);
    const got = recordAll("r-evt");
    const args = [1, "two", { three: 3 }, [null]];
    assert.deepEqual(await emitAck(C, "broadcast", { room, event: "r-evt", args }), [2]);
    await expectDelivery(got, ["A", "B"], args);
  });

  it("includeSelf false vs true for a sender inside the room", { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = unique("self");
    await joinAll(room, A, B);
    let got = recordAll("self-evt");
    assert.deepEqual(await emitAck(A, "broadcast", { room, event: "self-evt", args: ["no-self"], includeSelf: false }), [1]);
    await expectDelivery(got, ["B"], ["no-self"]);

    A.off("self-evt");
    B.off("self-evt");
    C.off("self-evt");
    D.off("self-evt");
    got = recordAll("self-evt");
    assert.deepEqual(await emitAck(A, "broadcast", { room, event: "self-evt", args: ["with-self"], includeSelf: true }), [2]);
    await expectDelivery(got, ["A", "B"], ["with-self"]);
  });

  it("broadcast to the whole namespace (no room)", { timeout: TEST_TIMEOUT_MS }, async () => {
    let got = recordAll("all-evt");
    assert.deepEqual(await emitAck(D, "broadcast", { event: "all-evt", args: ["x", 1] }), [3]);
    await expectDelivery(got, ["A", "B", "C"], ["x", 1]);

    for (const s of [A, B, C, D]) s.off("all-evt");
    got = recordAll("all-evt");
    assert.deepEqual(await emitAck(D, "broadcast", { event: "all-evt", args: ["y"], includeSelf: true }), [4]);
    await expectDelivery(got, ["A", "B", "C", "D"], ["y"]);
  });

  it("except rooms are excluded (room broadcast and namespace broadcast)", { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = unique("ex-room");
    const vip = unique("vip");
    const other = unique("other");
    await joinAll(room, A, B, C);
    await joinAll(vip, A);
    await joinAll(other, B);
    let got = recordAll("ex-evt");
    assert.deepEqual(await emitAck(D, "broadcast", { room, except: [vip], event: "ex-evt", args: ["r"] }), [2]);
    await expectDelivery(got, ["B", "C"], ["r"]);

    for (const s of [A, B, C, D]) s.off("ex-evt");
    got = recordAll("ex-evt");
    assert.deepEqual(await emitAck(D, "broadcast", { room, except: [vip, other], event: "ex-evt", args: ["r2"] }), [1]);
    await expectDelivery(got, ["C"], ["r2"]);

    for (const s of [A, B, C, D]) s.off("ex-evt");
    got = recordAll("ex-evt");
    // whole namespace except `room`: A, B, C are excluded; D is the sender but includeSelf is set
    assert.deepEqual(
      await emitAck(A, "broadcast", { except: [room], event: "ex-evt", args: ["ns"], includeSelf: true }),
      [1],
    );
    await expectDelivery(got, ["D"], ["ns"]);
  });

  it("to-socket emits to exactly one socket id", { timeout: TEST_TIMEOUT_MS }, async () => {
    const got = recordAll("direct");
    assert.deepEqual(await emitAck(C, "to-socket", { sid: B.id, event: "direct", args: ["hi", 2, { k: "v" }] }), [true]);
    await expectDelivery(got, ["B"], ["hi", 2, { k: "v" }]);
    assert.deepEqual(
      await emitAck(C, "to-socket", { sid: "no-such-socket-id", event: "direct", args: ["lost"] }),
      [false],
    );
    await sleep(QUIET_MS);
    assert.deepEqual(got.B, [["hi", 2, { k: "v" }]], "nothing more delivered for an unknown sid");
  });

  it("binary args in a broadcast reach every member as binary", { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = unique("bin");
    await joinAll(room, A, B, C);
    const got = recordAll("bin-evt");
    const payload = Buffer.from([0xde, 0xad, 0xbe, 0xef, 0]);
    assert.deepEqual(
      await emitAck(D, "broadcast", {
        room,
        event: "bin-evt",
        args: [payload, { nested: Buffer.from("nested"), list: [Buffer.from([1]), "s"] }, 7],
      }),
      [3],
    );
    await until(() => got.A.length && got.B.length && got.C.length, STEP_TIMEOUT_MS, "binary broadcast");
    await sleep(QUIET_MS);
    assert.deepEqual(got.D, []);
    for (const name of ["A", "B", "C"]) {
      assert.equal(got[name].length, 1, `${name} got one event`);
      const [b, obj, n] = got[name][0];
      assert.ok(asBuffer(b)?.equals(payload), `${name}: first arg binary`);
      assert.equal(asBuffer(obj.nested)?.toString(), "nested", `${name}: nested buffer`);
      assert.deepEqual([...asBuffer(obj.list[0])], [1], `${name}: buffer inside array`);
      assert.equal(obj.list[1], "s");
      assert.equal(n, 7);
    }
  });

  it("a disconnected socket leaves its rooms", { timeout: TEST_TIMEOUT_MS }, async () => {
    const room = unique("gone");
    const E = client(["websocket"]);
    const F = client(["polling"]);
    await Promise.all([waitConnected(E), waitConnected(F)]);
    await joinAll(room, E, F);
    assert.deepEqual(await emitAck(A, "broadcast", { room, event: "gone-evt", args: [] }), [2]);
    const disc = nextEvent(E, "disconnect");
    E.disconnect();
    await disc;
    const discF = nextEvent(F, "disconnect");
    F.emit("disconnect-me");
    assert.deepEqual((await discF)[0], "io server disconnect");
    // the server processes the client-side close asynchronously: poll for a bounded time
    let count;
    const deadline = Date.now() + 3_000;
    do {
      [count] = await emitAck(A, "broadcast", { room, event: "gone-evt", args: [] });
      if (count === 0) break;
      await sleep(50);
    } while (Date.now() < deadline);
    assert.equal(count, 0, "room emptied after its members disconnected");
    // and the namespace is back to the four long-lived clients
    assert.deepEqual(await emitAck(A, "broadcast", { event: "noop-evt", args: [], includeSelf: true }), [4]);
  });
});
