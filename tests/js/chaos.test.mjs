// Chaos: the services herald depends on fail under it. A Redis of the test's own (append-only, fsync always, on a
// free port) is killed with SIGKILL and restarted in the middle of a stream of publishes to an online device and
// an offline one: nothing answered 200 is lost, every refusal is a 503 that says why, and the online client is
// never dropped. An auth webhook that hangs costs a client its connect, never the gateway its other clients.
//
// Needs: redis-server on the PATH (scripts/services.sh checks it; Debian: apt-get install redis-server).

import { describe, it, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { startAuthServer, startGateway } from "./gateway-helpers.mjs";
import { freePort } from "./server.mjs";
import { awaitOffline, device, devicesOf, eventsOf, publish, settled, siteYaml } from "./mailbox-helpers.mjs";
import { Clients, STEP_TIMEOUT_MS, sleep, until, waitConnected } from "./util.mjs";

const clients = new Clients();
afterEach(() => clients.closeAll());

function answersPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    sock.setTimeout(500, () => resolve(false) || sock.destroy());
    sock.once("error", () => resolve(false));
    sock.once("connect", () => sock.write("PING\r\n"));
    sock.once("data", (d) => {
      resolve(d.toString().startsWith("+PONG"));
      sock.destroy();
    });
  });
}

/** A redis-server of this test's own on `port`, keeping every write on disk in `dir` before it answers. */
async function startRedis(port, dir) {
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--appendonly", "yes", "--appendfsync", "always",
      "--save", "", "--logfile", path.join(dir, "redis.log")],
    { stdio: "ignore" },
  );
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.once("error", () => {});
  await until(() => answersPing(port), 10_000, `redis-server on ${port}`);
  return {
    async kill() {
      child.kill("SIGKILL");
      await exited;
    },
  };
}

describe("Redis killed and restarted during publishes", { timeout: 120_000 }, () => {
  let gw, redis, dir;
  after(async () => {
    clients.closeAll();
    await gw?.stop();
    await redis?.kill();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("loses nothing answered 200, refuses with 503 while it is down, and drops no online client", { timeout: 100_000 }, async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "herald-chaos-redis-"));
    const port = await freePort();
    redis = await startRedis(port, dir);
    gw = await startGateway({
      configYaml: `
server:
  redis_url: redis://127.0.0.1:${port}/
sites:${siteYaml("app")}
`,
    });
    const run = `${Date.now()}`;
    const onlineUser = `${run}on`;
    const offlineUser = `${run}off`;
    const away = device(clients, gw.url, { id: offlineUser, deviceId: "tablet" });
    await waitConnected(away);
    await settled(away);
    away.disconnect();
    await awaitOffline(gw.url, offlineUser, "tablet");
    // Acks a while after each entry, so some acks reach herald while Redis is down.
    const phone = device(clients, gw.url, { id: onlineUser, deviceId: "phone", autoAck: false });
    phone.onAny((...args) => {
      const ack = args.at(-1);
      if (typeof ack === "function") setTimeout(ack, 600);
    });
    let dropped = null;
    phone.on("disconnect", (reason) => (dropped = reason));
    await waitConnected(phone);
    await settled(phone);

    const answered = { [onlineUser]: [], [offlineUser]: [] };
    const refusals = [];
    let n = 0;
    let stop = false;
    const publisher = (async () => {
      while (!stop) {
        const i = n++;
        const user = i % 2 === 0 ? onlineUser : offlineUser;
        const res = await publish(gw.url, { rooms: [`user_${user}`], event: "n", args: [i] }).catch((e) => ({
          status: 0,
          body: String(e),
        }));
        if (res.status === 200) answered[user].push(i);
        else refusals.push(res);
        await sleep(5);
      }
    })();

    await until(() => n >= 100, 20_000, "100 publishes before the crash");
    await redis.kill();
    // Longer than the publish's store timeout (3 s), so publishes answer 503 meanwhile.
    await sleep(6000);
    redis = await startRedis(port, dir);
    const resumed = n;
    await until(() => answered[onlineUser].some((i) => i > resumed) && answered[offlineUser].some((i) => i > resumed),
      30_000, "publishes answered 200 again after the restart");
    await until(() => n >= resumed + 100, 20_000, "100 publishes after the restart");
    stop = true;
    await publisher;

    assert.ok(refusals.length > 0, "some publishes fell in the outage");
    for (const r of refusals) {
      assert.equal(r.status, 503, JSON.stringify(r));
      assert.match(JSON.stringify(r.body), /mailbox store is unavailable/);
    }
    // The online device: every 200 arrives live, in order, and the client was never dropped.
    const want = answered[onlineUser];
    const got = () => eventsOf(phone, "n").map(([i]) => i);
    await until(() => want.every((i) => got().includes(i)), 20_000, `${want.length} live entries`);
    const seen = got().filter((i) => want.includes(i));
    assert.deepEqual([...new Set(seen)], want, "in publish order");
    assert.equal(dropped, null, `the online client was dropped: ${dropped}`);
    assert.ok(phone.connected);

    // The offline device: everything answered 200 waits in its mailbox, and replays in order.
    const back = device(clients, gw.url, { id: offlineUser, deviceId: "tablet" });
    const batched = () => eventsOf(back, "_batch").flatMap(([entries]) => entries.map(([, i]) => i));
    await until(() => answered[offlineUser].every((i) => batched().includes(i)), 20_000, "the offline mailbox");
    const replayed = batched().filter((i) => answered[offlineUser].includes(i));
    assert.deepEqual([...new Set(replayed)], answered[offlineUser], "in publish order");
    await until(async () => (await devicesOf(gw.url, onlineUser)).phone.pending === 0, STEP_TIMEOUT_MS, "acked");
  });
});

describe("an auth webhook that hangs", { timeout: 60_000 }, () => {
  let gw, auth;
  after(async () => {
    clients.closeAll();
    await gw?.stop();
    await auth?.close();
  });

  it("refuses the clients it holds within the webhook's timeout; the others are served", { timeout: 30_000 }, async () => {
    auth = await startAuthServer({
      "/rooms": (req, res) => {
        if (req.headers.authorization === "Bearer good") {
          res.writeHead(200, { "Content-Type": "application/json" });
          res.end('["news"]');
        }
        // Any other token: never answered.
      },
    });
    gw = await startGateway({
      configYaml: `
server:
  limits: {max_concurrent_auth: 4}
sites:
  - name: shop
    api_keys: [chaos-key-0123456789]
    auth: {kind: webhook, url: "${auth.url}/rooms", timeout_ms: 1000}
`,
    });
    const { io } = await import("socket.io-client");
    const open = (token) =>
      clients.add(io(`${gw.url}/shop`, { forceNew: true, reconnection: false, transports: ["websocket"], auth: { token } }));
    const started = Date.now();
    const held = Array.from({ length: 12 }, () => open("hang"));
    const errors = await Promise.all(held.map((s) => new Promise((resolve) => s.once("connect_error", resolve))));
    for (const e of errors) assert.match(e.message, /timed out|busy/);
    // Twelve hanging connects through four slots: at most a timeout for a slot and a timeout for the call each.
    assert.ok(Date.now() - started < 6_000, `held ${Date.now() - started} ms`);
    const good = open("good");
    await waitConnected(good);
    assert.ok(auth.calls.length <= 12, `${auth.calls.length} webhook calls`);
  });
});

/** Mounts a tmpfs of `size` at a new directory; null when this machine does not let the test mount one. */
function mountTmpfs(size) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "herald-chaos-disk-"));
  const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir]);
  if (mounted.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    return null;
  }
  return {
    dir,
    unmount() {
      spawnSync("umount", ["-l", dir]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Fills the filesystem of `dir` with a file until it is full. */
function fill(file) {
  spawnSync("dd", ["if=/dev/zero", `of=${file}`, "bs=64k"], { stdio: "ignore" });
}

describe("a full disk under the embedded store", { timeout: 60_000 }, () => {
  let gw, disk;
  after(async () => {
    clients.closeAll();
    await gw?.stop();
    disk?.unmount();
  });

  it("answers 503 with the reason while the disk is full and recovers when space returns", { timeout: 45_000 }, async (t) => {
    disk = mountTmpfs("8m");
    if (!disk) {
      t.skip("cannot mount a tmpfs here (needs root): the full-disk test did not run");
      return;
    }
    // The gateway's directory (its config, and its data directory with mailbox.redb) is on the small disk.
    gw = await startGateway({ dir: disk.dir, keep: true, configYaml: `sites:${siteYaml("app")}` });
    // A tablet that is away keeps every entry, so the store must grow.
    const tablet = device(clients, gw.url, { id: "d1", deviceId: "tablet" });
    await waitConnected(tablet);
    await settled(tablet);
    tablet.disconnect();
    await awaitOffline(gw.url, "d1", "tablet");
    const phone = device(clients, gw.url, { id: "d1", deviceId: "phone" });
    await waitConnected(phone);
    await settled(phone);
    assert.equal((await publish(gw.url, { rooms: ["user_d1"], event: "n", args: [0] })).status, 200);

    const filler = path.join(disk.dir, "filler");
    fill(filler);
    let refused;
    let stored = 1;
    for (let i = 1; i <= 100 && !refused; i++) {
      const res = await publish(gw.url, { rooms: ["user_d1"], event: "n", args: [i, "x".repeat(200_000)] });
      if (res.status === 200) stored++;
      else refused = res;
    }
    assert.ok(refused, "a publish was refused once the disk filled");
    assert.equal(refused.status, 503, JSON.stringify(refused));
    assert.match(refused.body.error, /disk is full/);
    assert.ok(phone.connected, "the online client stays");

    rmSync(filler);
    let again;
    await until(async () => {
      again = await publish(gw.url, { rooms: ["user_d1"], event: "n", args: ["after"] });
      return again.status === 200;
    }, 20_000, `publishes answered 200 again (last: ${JSON.stringify(again)})`);
    await until(() => eventsOf(phone, "n").some(([a]) => a === "after"), STEP_TIMEOUT_MS, "the entry after recovery");
    // The store still holds everything it answered 200 for, before and after the disk filled.
    const { phone: status, tablet: away } = await devicesOf(gw.url, "d1");
    assert.ok(status.connected);
    assert.equal(away.pending, stored + 1, "the away tablet mailbox");
  });
});
