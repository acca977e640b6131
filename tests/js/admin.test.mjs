// The admin console at /admin in a real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against the real `herald` binary, with a real socket.io-client 4.x as the client being
// watched. The steps build on each other: log in through the form (a wrong token first), see the client appear
// in the sockets table and the connections chart, open its details, publish from the form (retained) and see
// the event reach the client, the live tail and the room's retained values, disconnect the client from the
// console and see it leave, look up a user's devices and what their mailboxes hold, log out.
//
// Each step saves a full-page screenshot to tests/js/output/admin/ (gitignored) and names its path in the test
// log (`# screenshot …`). Without /usr/bin/chromium each test fails, saying how to install it.

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { io } from "socket.io-client";
import { MISSING, hasChromium, launchChromium } from "./browser-helpers.mjs";
import { api, craftJwt, startGateway } from "./gateway-helpers.mjs";
import { isOffset, nextEvent, waitConnected } from "./util.mjs";

const TOKEN = "admin-token-0123456789abcdef";
const KEY = "news-key-0123456789";
const INBOX_KEY = "inbox-key-0123456789";
const JWT_SECRET = "admin-console-jwt-secret-0123456789";
const OUTPUT = path.join(path.dirname(fileURLToPath(import.meta.url)), "output", "admin");
// The page polls every 3 s; a step waits for at most two polls and some slack.
const UI_TIMEOUT_MS = 10_000;
const TEST_TIMEOUT_MS = 40_000;

const CONFIG = `
server:
  admin_token: ${TOKEN}
sites:
  - name: news
    api_keys: [${KEY}]
    public_channel: lobby
  - name: inbox
    api_keys: [${INBOX_KEY}]
    auth: {kind: jwt, algorithm: HS256, secret: "${JWT_SECRET}"}
    user_room_prefix: user_
    device_ttl_secs: 3600
`;

describe("the admin console in headless Chromium", () => {
  let gw;
  let browser;
  let page;
  let client;
  let device;
  let shots = 0;

  /** Saves a full-page screenshot and names it in the test log. */
  async function screenshot(t, name) {
    shots += 1;
    const file = path.join(OUTPUT, `${String(shots).padStart(2, "0")}-${name}.png`);
    // The top bar is sticky: from the top, a full-page shot shows it where it belongs.
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: file, fullPage: true });
    t.diagnostic(`screenshot ${file}`);
  }

  const visible = (selector) => page.locator(selector).first().waitFor({ state: "visible", timeout: UI_TIMEOUT_MS });
  const waitFor = (fn, arg) => page.waitForFunction(fn, arg, { timeout: UI_TIMEOUT_MS });

  before(async () => {
    if (!hasChromium()) return;
    // One run's screenshots only.
    rmSync(OUTPUT, { recursive: true, force: true });
    mkdirSync(OUTPUT, { recursive: true });
    gw = await startGateway({ configYaml: CONFIG });
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
    page.on("pageerror", (error) => console.error(`page error: ${error.message}`));
    page.on("console", (message) => message.type() === "error" && console.error(`page console: ${message.text()}`));
  });

  after(async () => {
    client?.close();
    device?.close();
    await browser?.close();
    await gw?.stop();
  });

  it("logs in through the form: a wrong token is refused, the right one opens the console", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    assert.ok(hasChromium(), MISSING);
    const first = await page.goto(`${gw.url}/admin`);
    assert.equal(first.status(), 200);
    const csp = first.headers()["content-security-policy"];
    assert.match(csp, /script-src 'self'/);
    assert.doesNotMatch(csp, /unsafe-inline/);
    await visible("#token");
    await screenshot(t, "login");

    await page.fill("#token", "not-the-token-at-all");
    const [refused] = await Promise.all([page.waitForNavigation(), page.click("#login")]);
    assert.equal(refused.status(), 401);
    await visible(".notice");
    assert.equal(await page.textContent(".notice"), "That is not the admin token.");

    await page.fill("#token", TOKEN);
    await Promise.all([page.waitForNavigation(), page.click("#login")]);
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === "herald_admin");
    assert.ok(session, JSON.stringify(cookies));
    assert.equal(session.httpOnly, true);
    assert.equal(session.sameSite, "Strict");
    await waitFor(() => document.getElementById("site-name")?.textContent === "inbox");
    await visible("#sites button[data-site='news']");
    await screenshot(t, "console");
  });

  it("shows a connected socket.io client in the sockets table, the chart and its details", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    assert.ok(hasChromium(), MISSING);
    await page.click("#sites button[data-site='news']");
    await waitFor(() => document.getElementById("site-name")?.textContent === "news");
    client = io(`${gw.url}/news`, { transports: ["websocket"], query: { deviceId: "phone-7" }, reconnection: false });
    await waitConnected(client);
    const row = `#sockets tr[data-id="${client.id}"]`;
    await visible(row);
    assert.match(await page.textContent(row), /phone-7/);
    assert.match(await page.textContent(row), /websocket/);
    assert.match(await page.textContent(row), /lobby/);
    // The chart's newest point is the sample taken when the page asked: one WebSocket.
    await waitFor(() => /websocket\s*1/.test(document.getElementById("legend-connections").textContent));
    assert.equal(await page.textContent("#stat-connections"), "1");
    assert.ok(await page.locator("#chart-connections svg path[fill='#3b82f6']").count() > 0, "a websocket area");
    await screenshot(t, "client-connected");

    await page.click(row);
    await waitFor(() => document.getElementById("socket-panel").dataset.state === "connected");
    const details = await page.textContent("#socket-details");
    assert.match(details, /phone-7/);
    assert.match(details, /Engine\.IO v4/);
    assert.match(details, /lobby/);
    await screenshot(t, "socket-details");
  });

  it("publishes from the form: the client gets the event and the live tail shows it", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    assert.ok(hasChromium(), MISSING);
    await page.fill("#tail-room", "lobby");
    await page.click("#tail-toggle");
    await waitFor(() => document.getElementById("tail-status").dataset.state === "tailing");

    const received = nextEvent(client, "greeting");
    await page.fill("#pub-rooms", "lobby");
    await page.fill("#pub-event", "greeting");
    await page.fill("#pub-args", '[{"text": "hello from the console"}, 42]');
    await page.check("#pub-retain");
    await page.click("#publish");
    // The site recovers connections: the client gets the packet's offset as a last argument.
    const args = await received;
    assert.ok(isOffset(args.at(-1)), JSON.stringify(args));
    assert.deepEqual(args.slice(0, -1), [{ text: "hello from the console" }, 42]);
    await waitFor(() => /reached 1 socket.*retained value changed/.test(document.getElementById("publish-result").textContent));
    await visible("#tail li[data-event='greeting']");
    const tailed = await page.textContent("#tail li[data-event='greeting']");
    assert.match(tailed, /admin/);
    assert.match(tailed, /hello from the console/);

    // A publish from another source (the v1 API) reaches the same tail.
    const other = nextEvent(client, "from-api");
    const res = await api(gw.url, "POST", "/api/v1/sites/news/publish", { key: KEY, body: { rooms: ["lobby"], event: "from-api", args: [1] } });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    await other;
    await visible("#tail li[data-event='from-api']");
    assert.match(await page.textContent("#tail li[data-event='from-api']"), /api/);

    // The room keeps what the console retained: picking it shows its value (and only its sockets).
    await page.click("#rooms tr[data-room='lobby']");
    await waitFor(() => /greeting.*hello from the console/.test(document.getElementById("retained-list").textContent));
    await visible(`#sockets tr[data-id="${client.id}"]`);
    await screenshot(t, "published-and-tailed");
  });

  it("disconnects the client from the console and sees it leave", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    assert.ok(hasChromium(), MISSING);
    const id = client.id;
    const gone = nextEvent(client, "disconnect");
    await page.click("#disconnect");
    await waitFor(() => document.getElementById("disconnect").dataset.armed === "1");
    await page.click("#disconnect");
    assert.equal((await gone)[0], "io server disconnect");
    await page.locator(`#sockets tr[data-id="${id}"]`).waitFor({ state: "detached", timeout: UI_TIMEOUT_MS });
    await waitFor(() => document.getElementById("socket-panel").dataset.state === "gone");
    await waitFor(() => document.getElementById("stat-connections").textContent === "0");
    await screenshot(t, "client-disconnected");
  });

  it("shows a user's devices with the entries their mailboxes still hold", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    assert.ok(hasChromium(), MISSING);
    const token = craftJwt("HS256", { sub: "42", rooms: ["user_42"], exp: Math.floor(Date.now() / 1000) + 600 }, JWT_SECRET);
    // forceNew: its own connection, with its own query (io() would share the first client's).
    device = io(`${gw.url}/inbox`, { auth: { token }, query: { deviceId: "laptop" }, transports: ["websocket"], reconnection: false, forceNew: true });
    await waitConnected(device);
    // No listener for `note`: the client never acks, so both entries stay in the laptop's mailbox.
    for (const n of [1, 2]) {
      const res = await api(gw.url, "POST", "/api/v1/sites/inbox/publish", { key: INBOX_KEY, body: { rooms: ["user_42"], event: "note", args: [{ n }] } });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.queued, 1);
    }
    await page.click("#sites button[data-site='inbox']");
    await waitFor(() => document.getElementById("site-name")?.textContent === "inbox");
    await page.fill("#user-name", "42");
    await page.click("#user-form button");
    const card = ".device[data-device='laptop']";
    await visible(card);
    await waitFor((selector) => /2 pending entries/.test(document.querySelector(selector).textContent), card);
    const text = await page.textContent(card);
    assert.match(text, /connected/);
    assert.match(text, /note/);
    assert.match(text, /"n":2/);
    await screenshot(t, "user-devices");
  });

  it("logs out: the session ends and the console asks for the token again", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    assert.ok(hasChromium(), MISSING);
    await Promise.all([page.waitForNavigation(), page.click("#logout")]);
    await visible("#token");
    const cookies = await page.context().cookies();
    assert.equal(cookies.find((c) => c.name === "herald_admin"), undefined, JSON.stringify(cookies));
    const res = await page.request.get(`${gw.url}/api/v1/admin/overview`);
    assert.equal(res.status(), 401);
    await screenshot(t, "logged-out");
  });
});
