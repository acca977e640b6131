// herald's browser client kit, `/herald.js`, in a real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core). Pages of another origin (a small Node app server) import the module from herald, as an
// application would; pages of herald's own origin use it as its SharedWorker too. Covered: events from the HTTP
// API, client events with their reply or error, mailbox entries acked as they arrive (none back after a
// reconnect), reconnection with backoff and resume (what was published while away, once each), attempts that
// back off while herald is down, one shared connection for two tabs (replies to the tab that asked, a closed tab
// forgotten), the fallback without SharedWorker, a cross-origin page sharing through its own worker file, and
// the 404 at the socket.io client's usual paths. Without /usr/bin/chromium the browser tests fail, saying how
// to install it.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import http from "node:http";
import { MISSING, hasChromium, launchChromium } from "./browser-helpers.mjs";
import { HOST, api, startGateway } from "./gateway-helpers.mjs";
import { KEY as MAILBOX_KEY, siteYaml, tokenFor } from "./mailbox-helpers.mjs";
import { reply, startBackend } from "./two-way-helpers.mjs";
import { QUIET_MS, STEP_TIMEOUT_MS, isOffset, sleep, until } from "./util.mjs";

const KEY = "kit-key-0123456789";
const TEST_TIMEOUT_MS = 40_000;
const DESK_TOKEN = "desk-token";

function configYaml(backend) {
  return `
sites:
  - name: news
    api_keys: [${KEY}]
    public_channel: lobby
    recovery_window_ms: 60000
    events:
      bid: {url: "${backend.url}/events/bid"}
  # The shared-connection tests count this site's connections: no other test connects to it.
  - name: board
    api_keys: [${KEY}]
    auth: {kind: webhook, url: "${backend.url}/auth"}
    events:
      bid: {url: "${backend.url}/events/bid"}
${siteYaml("app")}`;
}

async function publish(gw, site, body, key = KEY) {
  const res = await api(gw.url, "POST", `/api/v1/sites/${site}/publish`, { key, body });
  assert.equal(res.status, 200, JSON.stringify(res.body));
}

/** The site's sockets on the plain WebSocket, from `/metrics` (`herald_connections`). */
async function plainConnections(gw, site) {
  const text = await (await fetch(`${gw.url}/metrics`)).text();
  const line = text
    .split("\n")
    .find((l) => l.startsWith("herald_connections{") && l.includes(`site="${site}"`) && l.includes('transport="plain-websocket"'));
  return line ? Number(line.split(" ").at(-1)) : 0;
}

/** The site's sockets from the API's listing. */
async function listed(gw, site) {
  const res = await api(gw.url, "GET", `/api/v1/sites/${site}/sockets`, { key: KEY });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.sockets;
}

/** The API and the metrics agree that `site` has exactly `n` connections, and still do a moment later. */
async function assertConnections(gw, site, n) {
  await until(async () => (await listed(gw, site)).length === n, STEP_TIMEOUT_MS, `${n} socket(s) of ${site}`);
  await sleep(QUIET_MS);
  assert.equal((await listed(gw, site)).length, n, "sockets listed");
  assert.equal(await plainConnections(gw, site), n, "herald_connections");
}

/** An application's server on another origin: a blank page, and a worker file that imports the kit. */
async function startAppServer(herald) {
  const server = http.createServer((req, res) => {
    if (req.url === "/herald-worker.js") {
      res.writeHead(200, { "Content-Type": "text/javascript" }).end(`import "${herald}/herald.js";\n`);
    } else {
      res.writeHead(200, { "Content-Type": "text/html" }).end("<!doctype html><title>app</title>");
    }
  });
  await new Promise((resolve) => server.listen(0, HOST, resolve));
  return {
    url: `http://${HOST}:${server.address().port}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** A browser tab with the kit's client in `window.client` and what it heard in `window.log`. */
class Tab {
  static async open(context, url) {
    const page = await context.newPage();
    const sockets = [];
    page.on("websocket", (ws) => sockets.push(ws.url()));
    await page.goto(url);
    return new Tab(page, sockets);
  }

  constructor(page, sockets) {
    this.page = page;
    /** The URL of every WebSocket the page (not its worker) opened. */
    this.sockets = sockets;
  }

  /**
   * Imports the kit from `module` and connects to `site` with `options`. With `tokenFunction`, `token` is a
   * function answering `window.token` (set to `tokenFunction` first), its calls counted in `window.tokens`.
   * The connection's own events and `events` go to `window.log`.
   */
  connect(module, site, options = {}, events = []) {
    return this.page.evaluate(
      async ({ module, site, options, events }) => {
        const { connect } = await import(module);
        window.log = [];
        window.tokens = 0;
        if (options.tokenFunction) {
          window.token = options.tokenFunction;
          options.token = async () => (window.tokens++, window.token);
        }
        const client = (window.client = connect(site, options));
        for (const name of ["connect", "disconnect", "reconnecting", "error"]) {
          client.on(name, (detail) => window.log.push({ name, detail: detail instanceof Error ? detail.message : detail }));
        }
        for (const name of events) client.on(name, (...args) => window.log.push({ name, args }));
      },
      { module, site, options, events },
    );
  }

  /** What the tab heard named `name`. */
  heard(name) {
    return this.page.evaluate((name) => window.log.filter((e) => e.name === name), name);
  }

  /** Waits until `fn(arg)` is true in the page. */
  until(fn, arg, timeout = STEP_TIMEOUT_MS) {
    return this.page.waitForFunction(fn, arg, { timeout });
  }

  /** Waits until the tab heard `n` entries named `name`. */
  waitHeard(name, n, timeout = STEP_TIMEOUT_MS) {
    return this.page.waitForFunction(([name, n]) => window.log.filter((e) => e.name === name).length >= n, [name, n], { timeout });
  }

  /** The client's state, socket, rooms and tabs. */
  client() {
    return this.page.evaluate(() => ({ state: client.state, socket: client.socket, rooms: client.rooms, tabs: client.tabs }));
  }

  /** `client.emit(event, ...args)`: { value } or { error }. */
  emit(event, ...args) {
    return this.page.evaluate(
      ([event, args]) => client.emit(event, ...args).then((value) => ({ value }), (error) => ({ error: error.message })),
      [event, args],
    );
  }

  close() {
    return this.page.close();
  }
}

describe("/herald.js and the socket.io client's paths", () => {
  let gw;
  before(async () => {
    gw = await startGateway({ configYaml: configYaml({ url: "http://127.0.0.1:9" }) });
  });
  after(async () => {
    await gw?.stop();
  });

  it("/herald.js is a module with a cache tag; /socket.io/socket.io.js says where to get the client; polling still works", async () => {
    const kit = await fetch(`${gw.url}/herald.js`);
    assert.equal(kit.status, 200);
    assert.equal(kit.headers.get("content-type"), "text/javascript; charset=utf-8");
    assert.match(kit.headers.get("cache-control"), /max-age=\d+/);
    assert.equal(kit.headers.get("access-control-allow-origin"), "*", "pages of any origin may import it");
    const etag = kit.headers.get("etag");
    assert.match(etag, /^"[\w.-]+-[0-9a-f]{16}"$/);
    const source = await kit.text();
    assert.match(source, /^\/\*\*\n \* herald\.js/);
    assert.match(source, /export function connect\(site, options = \{\}\)/);
    const again = await fetch(`${gw.url}/herald.js`, { headers: { "if-none-match": etag } });
    assert.equal(again.status, 304);
    assert.equal(again.headers.get("etag"), etag);

    for (const bundle of ["socket.io.js", "socket.io.min.js"]) {
      const res = await fetch(`${gw.url}/socket.io/${bundle}`);
      assert.equal(res.status, 404, bundle);
      assert.equal(res.headers.get("content-type"), "text/plain; charset=utf-8");
      const body = await res.text();
      assert.match(body, /^herald does not serve the socket\.io client\./);
      assert.match(body, /npm install socket\.io-client/);
      assert.match(body, /https:\/\/cdn\.jsdelivr\.net\/npm\/socket\.io-client@4\/dist\/socket\.io\.min\.js/);
      assert.match(body, /import \{ connect \} from "\/herald\.js"/);
    }
    const handshake = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling`);
    assert.equal(handshake.status, 200);
    assert.match(await handshake.text(), /^0\{"sid":/);
  });
});

describe("the browser client kit in headless Chromium", () => {
  let backend;
  let gw;
  let app;
  let browser;
  let context;
  const tabs = [];
  const tab = async (url, ctx = context) => {
    const opened = await Tab.open(ctx, url);
    tabs.push(opened);
    return opened;
  };

  before(async () => {
    if (!hasChromium()) return;
    backend = await startBackend({
      // board's clients: a token that names the desk gets the room hall.
      "/auth": (call, res) =>
        call.headers.authorization === `Bearer ${DESK_TOKEN}` ? reply(res, 200, { user: "desk", rooms: ["hall"] }) : reply(res, 401, { error: "not a desk token" }),
      "/events/bid": (call, res) => {
        const [amount] = call.body.args;
        if (amount < 0) return reply(res, 422, { error: "a bid must be positive" });
        reply(res, 200, { reply: [{ accepted: amount, socket: call.body.socket.id }] });
      },
    });
    gw = await startGateway({ configYaml: configYaml(backend) });
    app = await startAppServer(gw.url);
    browser = await launchChromium();
    context = await browser.newContext();
  });

  afterEach(async () => {
    for (const t of tabs.splice(0)) await t.page.close().catch(() => {});
  });

  after(async () => {
    await browser?.close();
    await app?.close();
    await gw?.stop();
    await backend?.close();
  });

  it("a page of another origin imports the kit: events from the API, a client event's reply, and its errors", { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok(hasChromium(), MISSING);
    const page = await tab(app.url);
    await page.connect(`${gw.url}/herald.js`, "news", {}, ["tick"]);
    await page.waitHeard("connect", 1);
    const [{ detail: welcome }] = await page.heard("connect");
    assert.deepEqual(welcome.rooms, ["lobby"]);
    assert.deepEqual(await page.client(), { state: "connected", socket: welcome.socket, rooms: ["lobby"], tabs: undefined });

    for (const n of [1, 2]) await publish(gw, "news", { rooms: ["lobby"], event: "tick", args: [n, { n }] });
    await page.waitHeard("tick", 2);
    assert.deepEqual((await page.heard("tick")).map((e) => e.args), [[1, { n: 1 }], [2, { n: 2 }]]);

    assert.deepEqual(await page.emit("bid", 42), { value: { accepted: 42, socket: welcome.socket } });
    assert.equal(backend.to("/events/bid").at(-1).body.socket.id, welcome.socket);
    const refused = await page.emit("bid", -1);
    assert.match(refused.error ?? "", /positive|422/, JSON.stringify(refused));
    assert.deepEqual(await page.emit("nope"), { error: "event 'nope' is not routed" });

    await sleep(QUIET_MS);
    assert.equal((await page.heard("tick")).length, 2);
    assert.deepEqual(await page.heard("error"), [], "no error event: errors answering an emit reject it");
    assert.equal(page.sockets.length, 1);
    assert.equal(new URL(page.sockets[0]).pathname, "/ws/news");
  });

  it("on a mailbox site entries are acked as they arrive, and none comes back after a reconnect", { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok(hasChromium(), MISSING);
    const pending = async () => {
      const res = await api(gw.url, "GET", "/api/v1/sites/app/users/user_kit1/devices", { key: MAILBOX_KEY });
      return res.body.devices.find((d) => d.deviceId === "kit-tab")?.pending;
    };
    const page = await tab(app.url);
    const options = { tokenFunction: tokenFor("kit1"), deviceId: "kit-tab", backoff: { min: 200, max: 400 } };
    await page.connect(`${gw.url}/herald.js`, "app", options, ["job"]);
    await page.waitHeard("connect", 1);
    const [{ detail: first }] = await page.heard("connect");
    assert.deepEqual(first.rooms, ["user_kit1"]);

    for (const n of [1, 2, 3]) await publish(gw, "app", { rooms: ["user_kit1"], event: "job", args: [n] }, MAILBOX_KEY);
    await page.waitHeard("job", 3);
    await until(async () => (await pending()) === 0, STEP_TIMEOUT_MS, "every entry acked");

    // herald drops the socket; the kit comes back with a fresh token, and the acked entries stay gone.
    const res = await api(gw.url, "DELETE", `/api/v1/sites/app/sockets/${first.socket}`, { key: MAILBOX_KEY });
    assert.equal(res.status, 204, JSON.stringify(res.body));
    await page.waitHeard("connect", 2);
    await sleep(QUIET_MS);
    assert.equal((await page.heard("job")).length, 3, "no entry came back");
    await publish(gw, "app", { rooms: ["user_kit1"], event: "job", args: [4] }, MAILBOX_KEY);
    await page.waitHeard("job", 4);
    await until(async () => (await pending()) === 0, STEP_TIMEOUT_MS, "the new entry acked");
    await sleep(QUIET_MS);
    assert.deepEqual((await page.heard("job")).map((e) => e.args), [[1], [2], [3], [4]]);
    assert.equal(await page.page.evaluate(() => window.tokens), 2, "the token function is asked before each connect");
    for (const url of page.sockets) assert.equal(new URL(url).searchParams.get("lastEventId"), null, "mailbox ids are never sent back");
  });

  it("a refused connect is an error event and the kit keeps trying, so a token function can mend it", { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok(hasChromium(), MISSING);
    const page = await tab(app.url);
    await page.connect(`${gw.url}/herald.js`, "app", { tokenFunction: "not-a-jwt", deviceId: "kit-late", backoff: { min: 100, max: 200 } });
    await page.waitHeard("error", 2);
    const errors = await page.heard("error");
    assert.ok(errors.every((e) => e.detail === errors[0].detail && /token/i.test(e.detail)), JSON.stringify(errors));
    assert.equal((await page.heard("connect")).length, 0);
    assert.equal((await page.heard("disconnect")).length, 0, "it never was connected");
    assert.notEqual((await page.client()).state, "connected");

    await page.page.evaluate((token) => (window.token = token), tokenFor("kit2"));
    await page.waitHeard("connect", 1);
    assert.deepEqual((await page.client()).rooms, ["user_kit2"]);
  });

  it("when herald drops it, the kit reconnects after a backoff and gets what was published meanwhile, once each", { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok(hasChromium(), MISSING);
    const page = await tab(app.url);
    // At least a second away: time enough to publish while it is.
    await page.connect(`${gw.url}/herald.js`, "news", { backoff: { min: 2000, max: 4000 } }, ["seq"]);
    await page.waitHeard("connect", 1);
    const [{ detail: first }] = await page.heard("connect");
    for (const n of [1, 2]) await publish(gw, "news", { rooms: ["lobby"], event: "seq", args: [n] });
    await page.waitHeard("seq", 2);

    const res = await api(gw.url, "DELETE", `/api/v1/sites/news/sockets/${first.socket}`, { key: KEY });
    assert.equal(res.status, 204, JSON.stringify(res.body));
    await page.waitHeard("reconnecting", 1);
    for (const n of [3, 4]) await publish(gw, "news", { rooms: ["lobby"], event: "seq", args: [n] });
    assert.equal((await page.client()).state, "reconnecting", "published while the kit was away");
    assert.equal((await page.heard("seq")).length, 2);
    const [{ detail: wait }] = await page.heard("reconnecting");
    assert.equal(wait.attempt, 1);
    assert.ok(wait.delay >= 1000 && wait.delay <= 2000, `the first delay is 50–100 % of min: ${wait.delay}`);
    assert.deepEqual((await page.heard("disconnect")).map((e) => e.detail), ["server namespace disconnect"]);
    // An emit made while away waits for the next connection.
    await page.page.evaluate(() => (window.queued = client.emit("bid", 9)));

    await page.waitHeard("connect", 2, 2000 + STEP_TIMEOUT_MS);
    await page.waitHeard("seq", 4);
    await publish(gw, "news", { rooms: ["lobby"], event: "seq", args: [5] });
    await page.waitHeard("seq", 5);
    await sleep(QUIET_MS);
    assert.deepEqual((await page.heard("seq")).map((e) => e.args), [[1], [2], [3], [4], [5]], "in order, once each");
    const second = (await page.heard("connect"))[1].detail;
    assert.notEqual(second.socket, first.socket);
    assert.deepEqual(await page.page.evaluate(() => window.queued), { accepted: 9, socket: second.socket });
    assert.deepEqual(second.rooms, ["lobby"]);
    assert.equal(page.sockets.length, 2);
    assert.equal(new URL(page.sockets[0]).searchParams.get("lastEventId"), null);
    assert.ok(isOffset(new URL(page.sockets[1]).searchParams.get("lastEventId")), page.sockets[1]);
  });

  it("while herald is down, attempts back off exponentially with jitter; the kit is back when herald is", { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok(hasChromium(), MISSING);
    const yaml = configYaml(backend);
    const own = await startGateway({ configYaml: yaml, keep: true });
    let restarted;
    try {
      const page = await tab(app.url);
      const backoff = { min: 200, max: 1600 };
      await page.connect(`${own.url}/herald.js`, "news", { backoff }, ["tick"]);
      await page.waitHeard("connect", 1);
      await own.kill();
      await page.waitHeard("reconnecting", 6, 15_000);
      const waits = (await page.heard("reconnecting")).map((e) => e.detail);
      waits.forEach(({ attempt, delay }, i) => {
        assert.equal(attempt, i + 1);
        const ceiling = Math.min(backoff.max, backoff.min * 2 ** i);
        assert.ok(delay >= ceiling / 2 && delay <= ceiling, `attempt ${attempt}: ${delay} ms, ceiling ${ceiling}`);
      });
      const capped = waits.slice(3, 6).map((w) => w.delay);
      assert.ok(new Set(capped).size > 1, `jittered: ${capped}`);
      assert.equal((await page.client()).state, "reconnecting");

      restarted = await startGateway({ configYaml: yaml, dir: own.dir, port: own.port });
      await page.waitHeard("connect", 2, 2 * backoff.max + STEP_TIMEOUT_MS);
      await publish(restarted, "news", { rooms: ["lobby"], event: "tick", args: ["back"] });
      await page.waitHeard("tick", 1);
      assert.deepEqual((await page.heard("tick")).map((e) => e.args), [["back"]]);
    } finally {
      if (restarted) await restarted.stop();
      else {
        await own.kill();
        rmSync(own.dir, { recursive: true, force: true });
      }
    }
  });

  it("shared: two tabs hold one connection; both get the events, each emit's reply goes to its tab, a closed tab is forgotten", { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok(hasChromium(), MISSING);
    // Pages of herald's origin (its /readyz answer): the module is its own SharedWorker.
    const [one, two] = [await tab(`${gw.url}/readyz`), await tab(`${gw.url}/readyz`)];
    const authsBefore = backend.to("/auth").length;
    for (const t of [one, two]) await t.connect("/herald.js", "board", { shared: true, tokenFunction: DESK_TOKEN }, ["tick"]);
    await one.waitHeard("connect", 1);
    await two.waitHeard("connect", 1);
    await two.until(() => client.tabs === 2);
    const [a, b] = [await one.client(), await two.client()];
    assert.equal(a.socket, b.socket, "one socket");
    assert.deepEqual(a, { state: "connected", socket: a.socket, rooms: ["hall"], tabs: 2 });
    await assertConnections(gw, "board", 1);
    assert.deepEqual([one.sockets, two.sockets], [[], []], "the worker holds the WebSocket, not the pages");
    // The worker asked the first tab's token function, once, and connected with its answer.
    const asked = [await one.page.evaluate(() => window.tokens), await two.page.evaluate(() => window.tokens)];
    assert.deepEqual(asked, [1, 0]);
    const auths = backend.to("/auth").slice(authsBefore);
    assert.equal(auths.length, 1);
    assert.equal(auths[0].headers.authorization, `Bearer ${DESK_TOKEN}`);

    await publish(gw, "board", { rooms: ["hall"], event: "tick", args: [1] });
    await one.waitHeard("tick", 1);
    await two.waitHeard("tick", 1);

    const [fromOne, fromTwo] = await Promise.all([one.emit("bid", 1), two.emit("bid", 2)]);
    assert.deepEqual(fromOne, { value: { accepted: 1, socket: a.socket } });
    assert.deepEqual(fromTwo, { value: { accepted: 2, socket: a.socket } });

    await one.close();
    await two.until(() => client.tabs === 1);
    await publish(gw, "board", { rooms: ["hall"], event: "tick", args: [2] });
    await two.waitHeard("tick", 2);
    assert.deepEqual(await two.emit("bid", 3), { value: { accepted: 3, socket: a.socket } });
    await assertConnections(gw, "board", 1);
    assert.equal((await two.heard("connect")).length, 1, "the connection stayed up");
    assert.deepEqual((await two.heard("tick")).map((e) => e.args), [[1], [2]]);

    await two.close();
    await assertConnections(gw, "board", 0);
  });

  it("shared without SharedWorker: each tab has a connection of its own", { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok(hasChromium(), MISSING);
    const bare = await browser.newContext();
    try {
      await bare.addInitScript(() => delete window.SharedWorker);
      const [one, two] = [await tab(`${gw.url}/readyz`, bare), await tab(`${gw.url}/readyz`, bare)];
      assert.equal(await one.page.evaluate(() => typeof SharedWorker), "undefined");
      for (const t of [one, two]) await t.connect("/herald.js", "board", { shared: true, token: DESK_TOKEN }, ["tick"]);
      await one.waitHeard("connect", 1);
      await two.waitHeard("connect", 1);
      const [a, b] = [await one.client(), await two.client()];
      assert.notEqual(a.socket, b.socket);
      assert.equal(a.tabs, undefined);
      await assertConnections(gw, "board", 2);
      assert.deepEqual([one.sockets.length, two.sockets.length], [1, 1], "each page opened its WebSocket");
      await publish(gw, "board", { rooms: ["hall"], event: "tick", args: [1] });
      await one.waitHeard("tick", 1);
      await two.waitHeard("tick", 1);
    } finally {
      for (const t of tabs.splice(0)) await t.page.close().catch(() => {});
      await bare.close();
    }
    await assertConnections(gw, "board", 0);
  });

  it("shared on a page of another origin: without `worker` a connection per tab, with the app's worker file one", { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok(hasChromium(), MISSING);
    const module = `${gw.url}/herald.js`;
    // A SharedWorker's script must be of the page's origin: the kit's own URL is refused, and it falls back.
    const alone = [await tab(app.url), await tab(app.url)];
    for (const t of alone) await t.connect(module, "board", { shared: true, token: DESK_TOKEN }, []);
    for (const t of alone) await t.waitHeard("connect", 1);
    await assertConnections(gw, "board", 2);
    for (const t of tabs.splice(0)) await t.close();
    await assertConnections(gw, "board", 0);

    const [one, two] = [await tab(app.url), await tab(app.url)];
    const options = { shared: true, token: DESK_TOKEN, worker: "/herald-worker.js" };
    for (const t of [one, two]) await t.connect(module, "board", options, ["tick"]);
    await one.waitHeard("connect", 1);
    await two.waitHeard("connect", 1);
    assert.equal((await one.client()).socket, (await two.client()).socket);
    await assertConnections(gw, "board", 1);
    await publish(gw, "board", { rooms: ["hall"], event: "tick", args: ["both"] });
    await one.waitHeard("tick", 1);
    await two.waitHeard("tick", 1);
    assert.deepEqual(await two.emit("bid", 7), { value: { accepted: 7, socket: (await two.client()).socket } });
  });
});
