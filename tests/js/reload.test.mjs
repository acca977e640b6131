// Live reconfiguration of the real `herald` binary: SIGHUP re-reads its config file, and sites added, changed
// or removed take effect while the clients of the other sites stay connected and lose nothing.
//
// Environment: HERALD_GATEWAY_BIN (default: `herald` beside HERALD_BIN's directory).

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { io } from "socket.io-client";
import { api, craftJwt, startGateway } from "./gateway-helpers.mjs";
import { awaitOffline, device, eventsOf, publish as publishMailbox, settled, siteYaml } from "./mailbox-helpers.mjs";
import { Clients, STEP_TIMEOUT_MS, TEST_TIMEOUT_MS, nextEvent, sleep, until, waitConnected } from "./util.mjs";

const ALPHA_KEY = "alpha-key-0123456789";
const ALPHA_KEY_2 = "alpha-key-rotated-0123456789";
const BETA_KEY = "beta-key-0123456789";
const SECRET_1 = "alpha-jwt-secret-one-0123456789abcdef";
const SECRET_2 = "alpha-jwt-secret-two-0123456789abcdef";

const alpha = ({ key = ALPHA_KEY, secret = SECRET_1 } = {}) => `
  - name: alpha
    api_keys: [${key}]
    auth: {kind: jwt, algorithm: HS256, secret: "${secret}"}`;
const beta = `
  - name: beta
    api_keys: [${BETA_KEY}]
    public_channel: lobby`;
const ADMIN_TOKEN = "reload-admin-token-0123456789";
const configOf = (...sites) =>
  `server:\n  admin_token: ${ADMIN_TOKEN}\n  engine: {ping_interval_ms: 25000}\nsites:${sites.join("")}\n`;

const token = (secret) => {
  const now = Math.floor(Date.now() / 1000);
  return craftJwt("HS256", { sub: "u1", rooms: ["news"], iat: now, exp: now + 600 }, secret);
};

describe("live reconfiguration on SIGHUP", () => {
  const clients = new Clients();
  let gw;
  /** Every alpha client: its socket, the ticks it got, and whether it ever disconnected. */
  const watchers = [];

  /** Rewrites the config file and sends SIGHUP; resolves once the log shows the outcome. */
  async function reload(yaml, expect = "configuration reloaded") {
    const before = gw.output().split(expect).length;
    writeFileSync(gw.file, yaml);
    gw.signal("SIGHUP");
    await until(() => gw.output().split(expect).length > before, STEP_TIMEOUT_MS, `"${expect}" in the log`);
  }

  const publish = (site, key, body) => api(gw.url, "POST", `/api/v1/sites/${site}/publish`, { key, body });

  function alphaClient(secret, transport) {
    return clients.add(
      io(`${gw.url}/alpha`, { forceNew: true, reconnection: false, transports: [transport], auth: { token: token(secret) } }),
    );
  }

  before(async () => {
    gw = await startGateway({ configYaml: configOf(alpha()) });
    for (let i = 0; i < 10; i++) {
      const socket = alphaClient(SECRET_1, i % 2 ? "polling" : "websocket");
      const watcher = { socket, ticks: [], disconnects: [] };
      socket.on("tick", (n) => watcher.ticks.push(n));
      socket.on("disconnect", (reason) => watcher.disconnects.push(reason));
      watchers.push(watcher);
      await waitConnected(socket);
    }
  });
  after(async () => {
    clients.closeAll();
    await gw?.stop();
  });

  /** Publishes ticks to alpha's room every 5 ms while `during` runs; returns how many were sent. */
  async function ticking(key, during) {
    let sent = 0;
    let stop = false;
    const loop = (async () => {
      while (!stop) {
        const res = await publish("alpha", key, { rooms: ["news"], event: "tick", args: [++sent] });
        assert.equal(res.status, 200, `tick ${sent}: ${JSON.stringify(res.body)}`);
        await sleep(5);
      }
    })();
    try {
      await during();
    } finally {
      stop = true;
      await loop;
    }
    return sent;
  }

  /** Every alpha client got ticks 1..n since `from`, in order, once each, and never disconnected. */
  async function assertEveryTick(from, n) {
    for (const w of watchers) {
      await until(() => w.ticks.length >= n - from, STEP_TIMEOUT_MS, `${n - from} ticks`);
      assert.deepEqual(w.ticks.splice(0), Array.from({ length: n - from }, (_, i) => from + i + 1));
      assert.deepEqual(w.disconnects, []);
      assert.ok(w.socket.connected);
    }
  }

  it("adds a site under live traffic: the other site's clients lose nothing", { timeout: TEST_TIMEOUT_MS }, async () => {
    // An unknown site answers as a wrong key does, so keys cannot be used to list sites.
    assert.equal((await publish("beta", BETA_KEY, { rooms: ["lobby"], event: "hi", args: [] })).status, 401);
    const sent = await ticking(ALPHA_KEY, async () => {
      await sleep(200);
      await reload(configOf(alpha(), beta));
      await sleep(200);
    });
    assert.ok(sent > 10, `only ${sent} ticks were published`);
    const b = clients.add(io(`${gw.url}/beta`, { forceNew: true, reconnection: false, transports: ["websocket"] }));
    await waitConnected(b);
    const got = nextEvent(b, "hi");
    assert.equal((await publish("beta", BETA_KEY, { rooms: ["lobby"], event: "hi", args: ["there"] })).status, 200);
    assert.equal((await got)[0], "there");
    await assertEveryTick(0, sent);
    assert.match(gw.output(), /configuration reloaded.*added=\["beta"\]/);
  });

  it("changes a site's key and auth: its clients stay, the new rules apply", { timeout: TEST_TIMEOUT_MS }, async () => {
    await reload(configOf(alpha({ key: ALPHA_KEY_2, secret: SECRET_2 }), beta));
    assert.equal((await publish("alpha", ALPHA_KEY, { rooms: ["news"], event: "tick", args: [0] })).status, 401);
    const sent = await ticking(ALPHA_KEY_2, () => sleep(200));
    await assertEveryTick(0, sent);
    const old = alphaClient(SECRET_1, "websocket");
    await assert.rejects(waitConnected(old), /connect_error/);
    await waitConnected(alphaClient(SECRET_2, "websocket"));
    assert.match(gw.output(), /changed=\["alpha"\]/);
  });

  it("removes a site: its clients are disconnected, the others stay", { timeout: TEST_TIMEOUT_MS }, async () => {
    const b = clients.add(io(`${gw.url}/beta`, { forceNew: true, reconnection: false, transports: ["polling"] }));
    await waitConnected(b);
    const gone = nextEvent(b, "disconnect");
    const sent = await ticking(ALPHA_KEY_2, () => reload(configOf(alpha({ key: ALPHA_KEY_2, secret: SECRET_2 }))));
    assert.equal((await gone)[0], "io server disconnect");
    assert.equal((await publish("beta", BETA_KEY, { rooms: ["lobby"], event: "hi", args: [] })).status, 401);
    const again = clients.add(io(`${gw.url}/beta`, { forceNew: true, reconnection: false, transports: ["websocket"] }));
    await assert.rejects(waitConnected(again), /Invalid namespace/);
    await assertEveryTick(0, sent);
  });

  it("refuses a broken config with its reason and keeps running the old one", { timeout: TEST_TIMEOUT_MS }, async () => {
    await reload(`${configOf(alpha({ key: ALPHA_KEY_2, secret: SECRET_2 }))}  - name: "no spaces allowed"\n`, "reload refused");
    const line = gw.output().split("\n").findLast((l) => l.includes("reload refused"));
    assert.match(line, /no spaces allowed/);
    await reload("sites: [ {name: alpha", "reload refused");
    const sent = await ticking(ALPHA_KEY_2, () => sleep(100));
    await assertEveryTick(0, sent);
    await waitConnected(alphaClient(SECRET_2, "polling"));
  });

  it("names the settings only a restart applies, and applies the sites", { timeout: TEST_TIMEOUT_MS }, async () => {
    const slower = configOf(alpha({ key: ALPHA_KEY_2, secret: SECRET_2 }), beta).replace("25000", "20000");
    await reload(slower, "take effect at the next restart");
    const line = gw.output().split("\n").findLast((l) => l.includes("next restart"));
    assert.match(line, /server\.engine\.ping_interval_ms/);
    assert.equal((await publish("beta", BETA_KEY, { rooms: ["lobby"], event: "hi", args: [] })).status, 200);
  });

  it("adds the first site with mailboxes: an offline device gets its backlog", { timeout: TEST_TIMEOUT_MS }, async () => {
    const app = siteYaml("app", "    device_ttl_secs: 3600");
    await reload(configOf(alpha({ key: ALPHA_KEY_2, secret: SECRET_2 }), beta, app));
    const phone = device(clients, gw.url, { id: "9", deviceId: "phone" });
    await settled(phone);
    phone.disconnect();
    await awaitOffline(gw.url, "9", "phone");
    const res = await publishMailbox(gw.url, { rooms: ["user_9"], event: "note", args: ["kept"] });
    assert.deepEqual(res.body, { matched: 0, queued: 1, online: 0 });
    const back = device(clients, gw.url, { id: "9", deviceId: "phone" });
    await until(() => eventsOf(back, "_batch").length === 1, STEP_TIMEOUT_MS, "_batch");
    assert.deepEqual(eventsOf(back, "_batch")[0], [[["note", "kept"]]]);
  });

  it("POST /api/v1/admin/reload does what SIGHUP does, behind the admin token", { timeout: TEST_TIMEOUT_MS }, async () => {
    const app = siteYaml("app", "    device_ttl_secs: 3600");
    const current = configOf(alpha({ key: ALPHA_KEY_2, secret: SECRET_2 }), beta, app).replace("25000", "20000");
    const reloadApi = (token) =>
      api(gw.url, "POST", "/api/v1/admin/reload", { headers: { authorization: `Bearer ${token}` } });
    writeFileSync(gw.file, current.replace(beta, ""));
    assert.equal((await reloadApi("not-the-admin-token-0123")).status, 401);
    assert.equal((await publish("beta", BETA_KEY, { rooms: ["lobby"], event: "hi", args: [] })).status, 200);
    const done = await reloadApi(ADMIN_TOKEN);
    assert.equal(done.status, 200, JSON.stringify(done.body));
    assert.deepEqual(done.body, {
      added: [],
      removed: ["beta"],
      changed: [],
      unchanged: ["alpha", "app"],
      // Still not what runs: the engine keeps the interval it started with.
      restart_needed: ["server.engine.ping_interval_ms"],
    });
    writeFileSync(gw.file, current.replace("name: beta", 'name: "be ta"'));
    const refused = await reloadApi(ADMIN_TOKEN);
    assert.equal(refused.status, 422);
    assert.match(refused.body.error, /be ta/);
    assert.equal((await publish("beta", BETA_KEY, { rooms: ["lobby"], event: "hi", args: [] })).status, 401);
    const sent = await ticking(ALPHA_KEY_2, () => sleep(100));
    await assertEveryTick(0, sent);
  });
});
