// Durable per-device mailboxes seen by the real socket.io client, against the real `herald` binary with its
// embedded store: crossroads' `_settings` / `_batch` / acks / `resync` / `_resync`, device TTL, shared rooms,
// caps, paged replay of 100k entries, `updateUserUrl`, and a `kill -9` in the middle of a stream.
//
// Environment: HERALD_GATEWAY_BIN (see gateway-helpers.mjs), HERALD_LOG to see the gateway's output.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { api, json, startAuthServer, startGateway } from "./gateway-helpers.mjs";
import { freePort } from "./server.mjs";
import {
  KEY,
  awaitOffline,
  device,
  devicesOf,
  eventsOf,
  publish,
  settled,
  siteYaml,
} from "./mailbox-helpers.mjs";
import { Clients, QUIET_MS, STEP_TIMEOUT_MS, TEST_TIMEOUT_MS, sleep, until, waitConnected } from "./util.mjs";

const clients = new Clients();
afterEach(() => clients.closeAll());

/** Connects a device and waits until it is registered; returns the socket. */
async function online(url, spec) {
  const socket = device(clients, url, spec);
  await waitConnected(socket);
  await settled(socket);
  return socket;
}

/** Connects, registers, disconnects, and waits until the server knows the device is away. */
async function registerThenLeave(url, spec) {
  const socket = await online(url, spec);
  socket.disconnect();
  await awaitOffline(url, spec.id, spec.deviceId, spec.site);
}

describe("mailboxes on the embedded store", { timeout: 300_000 }, () => {
  let gw, presence;
  const presenceRoutes = {}; // the updateUserUrl server's routes, set by the test that uses them

  before(async () => {
    presence = await startAuthServer(presenceRoutes);
    gw = await startGateway({
      configYaml: `
server:
  mailbox: {presence_debounce_ms: 400, page_entries: 1000}
sites:${siteYaml("app", `    update_user_url: "${presence.url}/users/:id"`)}${siteYaml("brief", "    device_ttl_secs: 1")}
`,
    });
  });
  after(async () => {
    clients.closeAll();
    await gw?.stop();
    await presence?.close();
  });

  it("an offline device gets its backlog after _settings, in one _batch; its ack clears it", { timeout: TEST_TIMEOUT_MS }, async () => {
    await registerThenLeave(gw.url, { id: "1", deviceId: "phone" });
    for (let i = 0; i < 3; i++) {
      const res = await api(gw.url, "POST", `/send?site=app&apiKey=${KEY}`, {
        body: { rooms: ["user_1"], event: "note", args: [i, { n: i }] },
      });
      assert.deepEqual(res, { status: 200, body: "OK" });
    }
    const v1 = await publish(gw.url, { rooms: ["user_1"], event: "note", args: [3] });
    assert.deepEqual(v1, { status: 200, body: { matched: 0, queued: 1, online: 0 } });
    assert.equal((await devicesOf(gw.url, "1")).phone.pending, 4);

    const back = await online(gw.url, { id: "1", deviceId: "phone" });
    await until(() => eventsOf(back, "_batch").length === 1, STEP_TIMEOUT_MS, "_batch");
    assert.deepEqual(
      back.log.map((e) => e.event),
      ["_settings", "_batch"],
    );
    assert.deepEqual(eventsOf(back, "_settings")[0], [{ device_ttl: 86400 }]);
    assert.deepEqual(eventsOf(back, "_batch")[0], [
      [
        ["note", 0, { n: 0 }],
        ["note", 1, { n: 1 }],
        ["note", 2, { n: 2 }],
        ["note", 3],
      ],
    ]);
    await until(async () => (await devicesOf(gw.url, "1")).phone.pending === 0, STEP_TIMEOUT_MS, "ack to clear");
    back.disconnect();
    await awaitOffline(gw.url, "1", "phone");

    const again = await online(gw.url, { id: "1", deviceId: "phone" });
    await sleep(QUIET_MS);
    assert.deepEqual(eventsOf(again, "_batch"), [], "nothing is delivered twice after its ack");
  });

  it("live entries carry an ack; an unacked one comes back in the next _batch, an acked one never", { timeout: TEST_TIMEOUT_MS }, async () => {
    const phone = await online(gw.url, { id: "2", deviceId: "phone", autoAck: false });
    for (const word of ["a", "b"]) {
      const res = await publish(gw.url, { rooms: ["user_2"], event: "live", args: [word] });
      assert.deepEqual(res.body, { matched: 0, queued: 1, online: 1 });
    }
    await until(() => eventsOf(phone, "live").length === 2, STEP_TIMEOUT_MS, "two live events");
    const [first, second] = phone.log.filter((e) => e.event === "live");
    assert.equal(typeof first.ack, "function", "a live mailbox entry asks for an ack");
    assert.equal(typeof second.ack, "function");
    first.ack();
    await until(async () => (await devicesOf(gw.url, "2")).phone.pending === 1, STEP_TIMEOUT_MS, "first ack");
    phone.disconnect();
    await awaitOffline(gw.url, "2", "phone");

    const back = await online(gw.url, { id: "2", deviceId: "phone" });
    await until(() => eventsOf(back, "_batch").length === 1, STEP_TIMEOUT_MS, "_batch");
    assert.deepEqual(eventsOf(back, "_batch")[0], [[["live", "b"]]]);
  });

  it("a shared room reaches every device of its users, offline ones too, matched case-insensitively", { timeout: TEST_TIMEOUT_MS }, async () => {
    await registerThenLeave(gw.url, { id: "3", deviceId: "phone", rooms: ["team_x"] });
    await registerThenLeave(gw.url, { id: "4", deviceId: "tablet", rooms: ["TEAM_X"] });
    const laptop = await online(gw.url, { id: "3", deviceId: "laptop", rooms: ["team_x"] });
    const res = await publish(gw.url, { rooms: ["Team_X"], event: "team", args: ["standup"] });
    assert.deepEqual(res, { status: 200, body: { matched: 0, queued: 3, online: 1 } });
    await until(() => eventsOf(laptop, "team").length === 1, STEP_TIMEOUT_MS, "live on the laptop");
    for (const [id, deviceId] of [["3", "phone"], ["4", "tablet"]]) {
      const back = await online(gw.url, { id, deviceId });
      await until(() => eventsOf(back, "_batch").length === 1, STEP_TIMEOUT_MS, `_batch for ${deviceId}`);
      assert.deepEqual(eventsOf(back, "_batch")[0], [[["team", "standup"]]]);
    }
  });

  it("each device acks its own copy", { timeout: TEST_TIMEOUT_MS }, async () => {
    const phone = await online(gw.url, { id: "5", deviceId: "phone" });
    const laptop = await online(gw.url, { id: "5", deviceId: "laptop", autoAck: false });
    const res = await publish(gw.url, { rooms: ["user_5"], event: "copy", args: [1] });
    assert.deepEqual(res.body, { matched: 0, queued: 2, online: 2 });
    await until(() => eventsOf(phone, "copy").length === 1 && eventsOf(laptop, "copy").length === 1);
    await until(async () => (await devicesOf(gw.url, "5")).phone.pending === 0, STEP_TIMEOUT_MS, "phone's ack");
    assert.equal((await devicesOf(gw.url, "5")).laptop.pending, 1, "the laptop has not acked");
  });

  it("resync=true: an ack that skips the head of the event's queue clears it and emits _resync", { timeout: TEST_TIMEOUT_MS }, async () => {
    const phone = await online(gw.url, { id: "6", deviceId: "phone", autoAck: false });
    for (const n of [1, 2]) {
      const res = await api(gw.url, "POST", `/send?site=app&apiKey=${KEY}&resync=true`, {
        body: { rooms: ["user_6"], event: "score", args: [n] },
      });
      assert.equal(res.status, 200);
    }
    await publish(gw.url, { rooms: ["user_6"], event: "other", args: [] });
    await until(() => eventsOf(phone, "other").length === 1, STEP_TIMEOUT_MS, "three live events");
    const scores = phone.log.filter((e) => e.event === "score");
    assert.deepEqual(scores.map((e) => e.args), [[1], [2]]);
    scores[1].ack(); // the head (score 1) was never acked
    await until(() => eventsOf(phone, "_resync").length === 1, STEP_TIMEOUT_MS, "_resync");
    // score's queue is cleared, and the ack was cumulative: only `other`, published after, is pending
    await until(async () => (await devicesOf(gw.url, "6")).phone.pending === 1, STEP_TIMEOUT_MS, "queue cleared");

    // Without resync, skipping an entry is a plain cumulative ack.
    const res = await publish(gw.url, { rooms: ["user_6"], event: "calm", args: [1] });
    assert.equal(res.status, 200);
    await publish(gw.url, { rooms: ["user_6"], event: "calm", args: [2] });
    await until(() => eventsOf(phone, "calm").length === 2, STEP_TIMEOUT_MS, "calm events");
    phone.log.filter((e) => e.event === "calm")[1].ack();
    await until(async () => (await devicesOf(gw.url, "6")).phone.pending === 0, STEP_TIMEOUT_MS, "cumulative ack");
    await sleep(QUIET_MS);
    assert.equal(eventsOf(phone, "_resync").length, 1, "no second _resync");
  });

  it("a device away longer than its site's device_ttl gets nothing", { timeout: TEST_TIMEOUT_MS }, async () => {
    await registerThenLeave(gw.url, { site: "brief", id: "7", deviceId: "phone" });
    const early = await publish(gw.url, { rooms: ["user_7"], event: "early", args: [] }, "brief");
    assert.deepEqual(early.body, { matched: 0, queued: 1, online: 0 }, "within the TTL it is kept");
    await sleep(1_300);
    const late = await publish(gw.url, { rooms: ["user_7"], event: "late", args: [] }, "brief");
    assert.deepEqual(late.body, { matched: 0, queued: 0, online: 0 }, "after the TTL the device is gone");
    assert.deepEqual(await devicesOf(gw.url, "7", "brief"), {});
    const back = await online(gw.url, { site: "brief", id: "7", deviceId: "phone" });
    assert.deepEqual(eventsOf(back, "_settings")[0], [{ device_ttl: 1 }]);
    await sleep(QUIET_MS);
    assert.deepEqual(eventsOf(back, "_batch"), [], "the expired mailbox went with its device");
  });

  it("updateUserUrl hears connects and, debounced, disconnects, with the client's token; failures are retried", { timeout: TEST_TIMEOUT_MS }, async () => {
    const seen = [];
    let failures = 1;
    presenceRoutes["/users/8"] = (req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        seen.push({ method: req.method, auth: req.headers.authorization, body: JSON.parse(body) });
        if (failures-- > 0) res.writeHead(503).end("busy");
        else json(res, 200, {});
      });
    };
    const phone = await online(gw.url, { id: "8", deviceId: "phone" });
    await until(() => seen.length === 2, STEP_TIMEOUT_MS, "a PUT, its 503 and the retry");
    for (const put of seen) {
      assert.equal(put.method, "PUT");
      assert.ok(put.auth.startsWith("Bearer ey"), put.auth);
      const claims = JSON.parse(Buffer.from(put.auth.split(".")[1], "base64url"));
      assert.equal(claims.sub, "8", "the client's own token");
      assert.equal(put.body.id, "8");
      assert.match(put.body.user.last_connected, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    }
    // A flap shorter than the debounce time reports nothing.
    phone.disconnect();
    const again = await online(gw.url, { id: "8", deviceId: "phone" });
    await sleep(700);
    assert.equal(seen.length, 2, `a quick reconnect is not reported: ${JSON.stringify(seen.slice(2))}`);
    again.disconnect();
    await until(() => seen.length === 3, STEP_TIMEOUT_MS, "last_disconnected");
    assert.deepEqual(Object.keys(seen[2].body.user), ["last_disconnected"]);
  });

  it("100k pending entries replay in bounded pages, each acked before the next", { timeout: 240_000 }, async () => {
    await registerThenLeave(gw.url, { id: "9", deviceId: "phone" });
    const TOTAL = 100_000;
    const PER_REQUEST = 500;
    let next = 0;
    const publisher = async () => {
      while (next < TOTAL) {
        const start = next;
        next += PER_REQUEST;
        const messages = [];
        for (let i = start; i < start + PER_REQUEST; i++) messages.push({ rooms: ["user_9"], event: "n", args: [i] });
        // 500 durable appends, each committed (group commit with the 15 other publishers): on a loaded machine
        // that outlasts the 5 s step timeout, which is meant for one message.
        const res = await api(gw.url, "POST", "/api/v1/sites/app/batch", { key: KEY, body: { messages }, timeoutMs: 60_000 });
        assert.equal(res.status, 200, JSON.stringify(res.body));
      }
    };
    await Promise.all(Array.from({ length: 16 }, publisher));
    assert.equal((await devicesOf(gw.url, "9")).phone.pending, TOTAL);

    const pages = [];
    const phone = device(clients, gw.url, { id: "9", deviceId: "phone", autoAck: false });
    phone.on("_batch", (entries, ack) => {
      pages.push(entries.length);
      // Holding the ack a moment: no second page may arrive before it.
      setTimeout(ack, 2);
    });
    const received = new Set();
    phone.on("_batch", (entries) => entries.forEach(([, i]) => received.add(i)));
    await until(() => received.size === TOTAL, 120_000, `all ${TOTAL} entries`);
    assert.ok(pages.every((n) => n <= 1000), `pages hold at most page_entries: ${Math.max(...pages)}`);
    assert.ok(pages.length >= TOTAL / 1000, `${pages.length} pages`);
    await until(async () => (await devicesOf(gw.url, "9")).phone.pending === 0, 30_000, "every page acked");
  });

  it("bad deviceIds are refused with a clear error", { timeout: TEST_TIMEOUT_MS }, async () => {
    const bad = device(clients, gw.url, { id: "10", deviceId: "a\u0000b" });
    const err = await new Promise((resolve) => bad.once("connect_error", resolve));
    assert.match(err.message, /deviceId must be at most 256 bytes/);
  });
});

describe("per-device caps", { timeout: 60_000 }, () => {
  let gw;
  before(async () => {
    gw = await startGateway({
      configYaml: `
server:
  mailbox: {max_entries: 5}
sites:${siteYaml("app")}
`,
    });
  });
  after(async () => {
    clients.closeAll();
    await gw?.stop();
  });

  it("a mailbox over its cap drops the oldest and ends in _resync", { timeout: TEST_TIMEOUT_MS }, async () => {
    await registerThenLeave(gw.url, { id: "1", deviceId: "phone" });
    for (let i = 0; i < 8; i++) await publish(gw.url, { rooms: ["user_1"], event: "n", args: [i] });
    const status = (await devicesOf(gw.url, "1")).phone;
    assert.deepEqual([status.pending, status.overflowed], [5, true]);
    const back = await online(gw.url, { id: "1", deviceId: "phone" });
    await until(() => eventsOf(back, "_resync").length === 1, STEP_TIMEOUT_MS, "_resync");
    await sleep(QUIET_MS);
    assert.deepEqual(back.log.map((e) => e.event), ["_settings", "_resync"]);
    const after = (await devicesOf(gw.url, "1")).phone;
    assert.deepEqual([after.pending, after.overflowed], [0, false]);
  });
});

describe("kill -9 in the middle of a stream", { timeout: 120_000 }, () => {
  it("every message answered 200 is delivered after the restart; nothing acked comes back", { timeout: 90_000 }, async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "herald-crash-"));
    const port = await freePort();
    const configYaml = `
sites:${siteYaml("app")}
`;
    let gw = await startGateway({ configYaml, dir, port, keep: true });
    try {
      const phone = device(clients, gw.url, {
        id: "1",
        deviceId: "phone",
        reconnection: true,
        reconnectionDelay: 100,
        reconnectionDelayMax: 200,
        randomizationFactor: 0,
      });
      await waitConnected(phone);
      await settled(phone);
      const acked = new Map(); // n -> when its ack was sent
      const got = [];
      phone.onAny((event, ...args) => {
        const ts = Date.now();
        const numbers = event === "n" ? [args[0]] : event === "_batch" ? args[0].map(([, n]) => n) : [];
        for (const n of numbers) {
          got.push({ n, ts });
          if (!acked.has(n)) acked.set(n, ts); // device() acks everything it receives at once
        }
      });

      const ok = new Set();
      let killedAt = 0;
      const TOTAL = 600;
      for (let n = 0; n < TOTAL; n++) {
        if (n === 300) {
          await gw.kill();
          killedAt = Date.now();
          gw = await startGateway({ configYaml, dir, port, keep: true });
        }
        try {
          const res = await publish(gw.url, { rooms: ["user_1"], event: "n", args: [n] });
          if (res.status === 200) ok.add(n);
        } catch {}
      }
      await until(() => [...ok].every((n) => got.some((g) => g.n === n)), 30_000, "every 200 delivered");
      // An ack still in flight when the process died may be lost; one sent 500 ms before is not.
      const settledBefore = killedAt - 500;
      const redelivered = got.filter(
        (g) => g.ts > killedAt && acked.get(g.n) !== undefined && acked.get(g.n) < settledBefore,
      );
      assert.deepEqual(redelivered.map((g) => g.n), [], "acked entries delivered again after the restart");
      assert.ok(ok.size >= TOTAL - 50, `${ok.size} of ${TOTAL} publishes got a 200`);
    } finally {
      clients.closeAll();
      await gw.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
