// socket.io-client 4.x against the real `herald` gateway binary: crossroads-style sites authenticated by a real
// HTTP auth webhook (started here with node's http module), JWT sites, the publish API (`POST /send` and
// `/api/v1`) and the admin API, seen from the client's side.
//
// Environment:
//   HERALD_GATEWAY_BIN  the gateway binary (default: `herald` next to HERALD_BIN's directory, i.e.
//                       <repo>/target/debug/herald)
//   HERALD_LOG          if set, the gateway's output is copied to stderr

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHmac, createSign } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { io } from "socket.io-client";
import { freePort } from "./server.mjs";
import { HOST, api, b64url, craftJwt, gatewayBin, json, startAuthServer, startGateway, withoutNode } from "./gateway-helpers.mjs";
import {
  Clients,
  QUIET_MS,
  STEP_TIMEOUT_MS,
  TEST_TIMEOUT_MS,
  nextEvent,
  record,
  sleep,
  until,
  waitConnected,
} from "./util.mjs";

const SHOP_KEY = "shop-key-0123456789";
const APP_KEY = "app-key-0123456789";
const JWT_SECRET = "app-jwt-secret-0123456789abcdef";

// ---------------------------------------------------------------------------------------------------------------
// Helpers: the gateway process, the auth webhook, the API, tokens.

/** The rooms the backend grants each token (crossroads' answer: a JSON array of rooms). */
const TOKENS = {
  good: ["user_7", "team_a"],
  good2: ["user_8", "team_a"],
};
function bearer(req) {
  const h = req.headers.authorization || "";
  return h.startsWith("Bearer ") ? h.slice("Bearer ".length) : null;
}
const AUTH_ROUTES = {
  // checks `Authorization: Bearer <token>`, answers the token's rooms or 401
  "/auth": (req, res) => {
    const rooms = TOKENS[bearer(req)];
    if (rooms) json(res, 200, rooms);
    else res.writeHead(401).end("no");
  },
  "/auth500": (req, res) => res.writeHead(500).end("boom"),
  "/nouser": (req, res) => json(res, 200, bearer(req) === "good" ? ["team_a", "user_"] : []),
  "/slow": (req, res, { later }) => later(2_000, () => json(res, 200, TOKENS.good)),
};

/** `herald token ...`; resolves the token. */
function heraldToken(args) {
  return new Promise((resolve, reject) => {
    execFile(gatewayBin(), ["token", ...args], { timeout: STEP_TIMEOUT_MS }, (err, stdout, stderr) => {
      if (err) reject(new Error(`herald token ${args.join(" ")} failed: ${err.message}\n${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

const FIXTURES = new URL("../../crates/herald/tests/fixtures/", import.meta.url);
const RSA_PUBLIC = readFileSync(new URL("rsa_public.pem", FIXTURES), "utf8");
const RSA_PRIVATE = readFileSync(new URL("rsa_private.pem", FIXTURES), "utf8");
/** An RS256 JWT signed with the test key pair's private key. */
function craftRsJwt(claims) {
  const signingInput = `${b64url({ alg: "RS256", typ: "JWT" })}.${b64url(claims)}`;
  const sig = createSign("RSA-SHA256").update(signingInput).sign(RSA_PRIVATE).toString("base64url");
  return `${signingInput}.${sig}`;
}
/** The PEM as a YAML block scalar indented for a site field. */
const yamlBlock = (text, indent) => "|\n" + text.trim().split("\n").map((l) => " ".repeat(indent) + l).join("\n");

const clients = new Clients();
afterEach(() => clients.closeAll());

const longLived = new Clients(); // clients a whole describe block shares; closed in its after hook

function client(url, opts = {}, owner = clients) {
  return owner.add(io(url, { forceNew: true, reconnection: false, timeout: STEP_TIMEOUT_MS, ...opts }));
}

/** Resolves with the message of the client's connect_error; fails if it connects instead. */
async function refusal(socket) {
  let onConnect;
  const connected = new Promise((_, reject) => {
    onConnect = () => reject(new Error(`${socket.nsp} connected but was expected to be refused`));
    socket.once("connect", onConnect);
  });
  try {
    const [err] = await Promise.race([nextEvent(socket, "connect_error"), connected]);
    return err.message;
  } finally {
    socket.off("connect", onConnect);
  }
}

/** Records `event` on each named client: { name: [[...args], ...] }. */
function recordAll(named, event) {
  return Object.fromEntries(Object.entries(named).map(([name, s]) => [name, record(s, event)]));
}

/** Waits until each expected client got one event, listens a quiet period, then checks everyone exactly. */
async function expectOnly(got, expected, args, what) {
  await until(() => expected.every((n) => got[n].length >= 1), STEP_TIMEOUT_MS, `${what}: delivery to ${expected}`);
  await sleep(QUIET_MS);
  for (const name of Object.keys(got)) {
    const want = expected.includes(name) ? [args] : [];
    assert.deepEqual(got[name], want, `${what}: what client ${name} received`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// A crossroads sites.yml gateway: webhook sites against the node auth server.

describe("crossroads sites.yml gateway with a real auth webhook", { timeout: 60_000 }, () => {
  let auth, gw, deadPort;

  before(async () => {
    auth = await startAuthServer(AUTH_ROUTES);
    deadPort = await freePort(); // nothing listens there
    gw = await startGateway({
      sitesYaml: `
shop:
  authUrl: ${auth.url}/auth
  authScheme: Bearer
  apiKey: ${SHOP_KEY}
  userRoomPrefix: user_
  publicChannel: lobby
broken:
  authUrl: ${auth.url}/auth500
  apiKey: broken-key-0123456789
  userRoomPrefix: user_
unreachable:
  authUrl: http://${HOST}:${deadPort}/auth
  apiKey: unreachable-key-0123456789
nouser:
  authUrl: ${auth.url}/nouser
  apiKey: nouser-key-0123456789
  userRoomPrefix: user_
`,
    });
  });
  after(async () => {
    clients.closeAll();
    await gw?.stop();
    await auth?.close();
  });

  describe("publishing to crossroads-style clients", () => {
    let A, B, C, P;
    let named;

    before(async () => {
      // A: the query in the namespace URL, as crossroads clients write it (websocket only)
      A = client(`${gw.url}/shop?token=good&deviceId=d1`, { transports: ["websocket"] }, longLived);
      // B: the query as an option (polling, upgraded)
      B = client(`${gw.url}/shop`, { query: { token: "good", deviceId: "d2" } }, longLived);
      // C: the token in the v4 auth payload (polling only)
      C = client(`${gw.url}/shop`, { auth: { token: "good2", deviceId: "d3" }, transports: ["polling"] }, longLived);
      // P: no token: only the public channel
      P = client(`${gw.url}/shop`, { transports: ["websocket"] }, longLived);
      await Promise.all([A, B, C, P].map((s) => waitConnected(s)));
      named = { A, B, C, P };
    });
    after(() => longLived.closeAll());

    it("the auth server was asked with `Authorization: Bearer <token>`", { timeout: TEST_TIMEOUT_MS }, () => {
      const seen = auth.calls.filter((c) => c.path === "/auth").map((c) => c.authorization);
      assert.ok(seen.includes("Bearer good"), `auth calls: ${JSON.stringify(auth.calls)}`);
      assert.ok(seen.includes("Bearer good2"), `auth calls: ${JSON.stringify(auth.calls)}`);
    });

    it("the sockets API lists each client with its user, device and rooms", { timeout: TEST_TIMEOUT_MS }, async () => {
      const { status, body } = withoutNode(await api(gw.url, "GET", "/api/v1/sites/shop/sockets", { key: SHOP_KEY }));
      assert.equal(status, 200);
      const byId = Object.fromEntries(body.sockets.map((s) => [s.id, s]));
      assert.equal(body.sockets.length, 4);
      assert.deepEqual(byId[A.id], { id: A.id, user: "7", deviceId: "d1", rooms: [A.id, "user_7", "team_a", "lobby"] });
      assert.deepEqual(byId[B.id], { id: B.id, user: "7", deviceId: "d2", rooms: [B.id, "user_7", "team_a", "lobby"] });
      assert.deepEqual(byId[C.id], { id: C.id, user: "8", deviceId: "d3", rooms: [C.id, "user_8", "team_a", "lobby"] });
      assert.deepEqual(byId[P.id], { id: P.id, user: null, deviceId: null, rooms: [P.id, "lobby"] });
    });

    it("POST /send with a JSON body reaches the user room only", { timeout: TEST_TIMEOUT_MS }, async () => {
      const got = recordAll(named, "json-send");
      const res = await api(gw.url, "POST", `/send?site=shop&apiKey=${SHOP_KEY}`, {
        body: { rooms: ["user_7"], event: "json-send", args: [{ n: 1 }, "two"] },
      });
      assert.deepEqual(res, { status: 200, body: "OK" });
      await expectOnly(got, ["A", "B"], [{ n: 1 }, "two"], "/send json to user_7");
    });

    it("POST /send with a form body (one room, then rooms[])", { timeout: TEST_TIMEOUT_MS }, async () => {
      let got = recordAll(named, "form-one");
      let res = await api(gw.url, "POST", `/send?site=shop&apiKey=${SHOP_KEY}`, {
        form: "rooms=user_8&event=form-one&args=hi",
      });
      assert.deepEqual(res, { status: 200, body: "OK" });
      await expectOnly(got, ["C"], ["hi"], "/send form to user_8");

      got = recordAll(named, "form-many");
      res = await api(gw.url, "POST", `/send?site=shop&apiKey=${SHOP_KEY}`, {
        form: "rooms%5B%5D=user_7&rooms%5B%5D=user_8&event=form-many&args=x",
      });
      assert.deepEqual(res, { status: 200, body: "OK" });
      // a client in several of the rooms gets the event once
      await expectOnly(got, ["A", "B", "C"], ["x"], "/send form to user_7+user_8");
    });

    it("POST /send refuses a wrong key and a missing key", { timeout: TEST_TIMEOUT_MS }, async () => {
      const got = recordAll(named, "nope");
      const body = { rooms: ["lobby"], event: "nope" };
      assert.deepEqual(await api(gw.url, "POST", `/send?site=shop&apiKey=wrong`, { body }), {
        status: 401,
        body: { error: "ApiKey invalid." },
      });
      assert.deepEqual(await api(gw.url, "POST", `/send?site=shop`, { body }), {
        status: 400,
        body: { error: "Missing query param 'site' or 'apiKey'." },
      });
      await sleep(QUIET_MS);
      for (const [name, events] of Object.entries(got)) assert.deepEqual(events, [], `client ${name}`);
    });

    it("POST /api/v1/.../publish to rooms", { timeout: TEST_TIMEOUT_MS }, async () => {
      const got = recordAll(named, "v1-team");
      const res = await api(gw.url, "POST", "/api/v1/sites/shop/publish", {
        key: SHOP_KEY,
        body: { rooms: ["team_a"], event: "v1-team", args: [1, { deep: [true, null] }] },
      });
      // team_a is a shared room of a site with user rooms: one mailbox entry per device of its users, all online
      assert.deepEqual(res, { status: 200, body: { matched: 0, queued: 3, online: 3 } });
      await expectOnly(got, ["A", "B", "C"], [1, { deep: [true, null] }], "v1 to team_a");
    });

    it("POST /api/v1/.../publish to all", { timeout: TEST_TIMEOUT_MS }, async () => {
      const got = recordAll(named, "v1-all");
      const res = await api(gw.url, "POST", "/api/v1/sites/shop/publish", {
        key: SHOP_KEY,
        body: { all: true, event: "v1-all", args: ["everyone"] },
      });
      assert.deepEqual(res, { status: 200, body: { matched: 4, queued: 0, online: 0 } });
      await expectOnly(got, ["A", "B", "C", "P"], ["everyone"], "v1 all");
    });

    it("POST /api/v1/.../publish with except (a room and a socket id)", { timeout: TEST_TIMEOUT_MS }, async () => {
      let got = recordAll(named, "v1-except");
      let res = await api(gw.url, "POST", "/api/v1/sites/shop/publish", {
        key: SHOP_KEY,
        body: { rooms: ["lobby"], except: ["user_7"], event: "v1-except", args: [] },
      });
      assert.deepEqual(res, { status: 200, body: { matched: 2, queued: 0, online: 0 } });
      await expectOnly(got, ["C", "P"], [], "v1 lobby except user_7");

      got = recordAll(named, "v1-except-id");
      res = await api(gw.url, "POST", "/api/v1/sites/shop/publish", {
        key: SHOP_KEY,
        body: { all: true, except: [P.id, A.id], event: "v1-except-id", args: ["e"] },
      });
      assert.deepEqual(res, { status: 200, body: { matched: 2, queued: 0, online: 0 } });
      await expectOnly(got, ["B", "C"], ["e"], "v1 all except P and A by id");
    });

    it("POST /api/v1/.../publish to one socket id (sockets, and an id as a room)", { timeout: TEST_TIMEOUT_MS }, async () => {
      let got = recordAll(named, "v1-one");
      let res = await api(gw.url, "POST", "/api/v1/sites/shop/publish", {
        key: SHOP_KEY,
        body: { sockets: [B.id], event: "v1-one", args: ["just you"] },
      });
      assert.deepEqual(res, { status: 200, body: { matched: 1, queued: 0, online: 0 } });
      await expectOnly(got, ["B"], ["just you"], "v1 to socket B");

      got = recordAll(named, "v1-one-room");
      res = await api(gw.url, "POST", "/api/v1/sites/shop/publish", {
        key: SHOP_KEY,
        body: { rooms: [P.id], event: "v1-one-room", args: [] },
      });
      assert.deepEqual(res, { status: 200, body: { matched: 1, queued: 0, online: 0 } });
      await expectOnly(got, ["P"], [], "v1 to P's id as a room");
    });

    it("POST /api/v1/.../publish refuses a wrong bearer key", { timeout: TEST_TIMEOUT_MS }, async () => {
      const res = await api(gw.url, "POST", "/api/v1/sites/shop/publish", {
        key: "wrong",
        body: { all: true, event: "x" },
      });
      assert.deepEqual(res, { status: 401, body: { error: "invalid API key for site 'shop'" } });
    });
  });

  describe("refusals seen by the client", () => {
    it("a bad token: 'the token was refused'", { timeout: TEST_TIMEOUT_MS }, async () => {
      assert.equal(await refusal(client(`${gw.url}/shop?token=bad&deviceId=d9`)), "the token was refused");
      assert.equal(await refusal(client(`${gw.url}/shop`, { auth: { token: "bad" } })), "the token was refused");
    });

    it("the auth server answering 500: 'authentication is unavailable'", { timeout: TEST_TIMEOUT_MS }, async () => {
      assert.equal(await refusal(client(`${gw.url}/broken?token=good`)), "authentication is unavailable");
    });

    it("an unreachable auth URL: 'authentication is unavailable'", { timeout: TEST_TIMEOUT_MS }, async () => {
      assert.equal(
        await refusal(client(`${gw.url}/unreachable`, { query: { token: "good" } })),
        "authentication is unavailable",
      );
    });

    it("an answer without a user room: 'the answer holds no user room'", { timeout: TEST_TIMEOUT_MS }, async () => {
      // the answer holds "team_a" and the bare prefix "user_", which names no one
      assert.equal(await refusal(client(`${gw.url}/nouser?token=good`)), "the answer holds no user room");
    });

    it("a refused client does not stop the same connection's other namespaces", { timeout: TEST_TIMEOUT_MS }, async () => {
      const ok = client(`${gw.url}/shop?token=good&deviceId=mux`);
      await waitConnected(ok);
      const bad = clients.add(ok.io.socket("/broken"));
      bad.connect();
      assert.equal(await refusal(bad), "authentication is unavailable");
      assert.ok(ok.connected, "the /shop socket stays connected");
    });
  });

  describe("API admin through the real client", () => {
    it("list, join a room, publish to it, then disconnect from the API", { timeout: TEST_TIMEOUT_MS }, async () => {
      const X = client(`${gw.url}/shop?token=good&deviceId=d1`, { transports: ["websocket"] });
      const Y = client(`${gw.url}/shop?token=good2&deviceId=d2`, { transports: ["websocket"] });
      await Promise.all([waitConnected(X), waitConnected(Y)]);

      const list = withoutNode(await api(gw.url, "GET", "/api/v1/sites/shop/sockets?room=user_7", { key: SHOP_KEY }));
      assert.equal(list.status, 200);
      assert.deepEqual(list.body, {
        sockets: [{ id: X.id, user: "7", deviceId: "d1", rooms: [X.id, "user_7", "team_a", "lobby"] }],
      });

      const join = await api(gw.url, "POST", `/api/v1/sites/shop/sockets/${X.id}/rooms`, {
        key: SHOP_KEY,
        body: { join: ["vip"] },
      });
      assert.deepEqual(join, { status: 200, body: { rooms: [X.id, "user_7", "team_a", "lobby", "vip"] } });

      const got = recordAll({ X, Y }, "vip-news");
      const pub = await api(gw.url, "POST", "/api/v1/sites/shop/publish", {
        key: SHOP_KEY,
        body: { rooms: ["vip"], event: "vip-news", args: ["welcome"] },
      });
      // vip joined through the API is one of user_7's shared rooms: one entry per device of user_7 (earlier tests'
      // devices are offline but within their TTL), online for X only
      const devices = await api(gw.url, "GET", "/api/v1/sites/shop/users/user_7/devices", { key: SHOP_KEY });
      assert.equal(devices.status, 200);
      assert.ok(devices.body.devices.some((d) => d.deviceId === "d1" && d.connected), JSON.stringify(devices.body));
      assert.deepEqual(pub, { status: 200, body: { matched: 0, queued: devices.body.devices.length, online: 1 } });
      await expectOnly(got, ["X"], ["welcome"], "publish to vip");

      const disconnected = nextEvent(X, "disconnect");
      const id = X.id;
      const del = await api(gw.url, "DELETE", `/api/v1/sites/shop/sockets/${id}`, { key: SHOP_KEY });
      assert.equal(del.status, 204);
      const [reason] = await disconnected;
      assert.equal(reason, "io server disconnect");
      assert.ok(Y.connected, "the other client stays connected");

      const again = await api(gw.url, "DELETE", `/api/v1/sites/shop/sockets/${id}`, { key: SHOP_KEY });
      assert.deepEqual(again, { status: 404, body: { error: `unknown socket '${id}'` } });
      const after = withoutNode(await api(gw.url, "GET", "/api/v1/sites/shop/sockets?room=vip", { key: SHOP_KEY }));
      assert.deepEqual(after.body, { sockets: [] });
    });
  });
});

// ---------------------------------------------------------------------------------------------------------------
// A server file gateway: a slow webhook with a short timeout, and an HS256 JWT site.

describe("server file gateway: webhook timeout and JWT", { timeout: 60_000 }, () => {
  let auth, gw;

  before(async () => {
    auth = await startAuthServer(AUTH_ROUTES);
    gw = await startGateway({
      configYaml: `
sites:
  - name: slow
    api_keys: [slow-key-0123456789]
    auth: {kind: webhook, url: "${auth.url}/slow", scheme: Bearer, timeout_ms: 300}
  - name: app
    api_keys: [${APP_KEY}]
    auth: {kind: jwt, algorithm: HS256, secret: "${JWT_SECRET}"}
  - name: rsapp
    api_keys: [${APP_KEY}]
    auth:
      kind: jwt
      algorithm: RS256
      public_key_pem: ${yamlBlock(RSA_PUBLIC, 8)}
`,
    });
  });
  after(async () => {
    clients.closeAll();
    await gw?.stop();
    await auth?.close();
  });

  it("a slow auth server beyond timeout_ms: 'authentication timed out'", { timeout: TEST_TIMEOUT_MS }, async () => {
    const started = Date.now();
    assert.equal(await refusal(client(`${gw.url}/slow?token=good`)), "authentication timed out");
    const took = Date.now() - started;
    assert.ok(took < 1_800, `refused after ${took} ms, before the auth server's 2 s answer`);
    assert.ok(auth.calls.some((c) => c.path === "/slow" && c.authorization === "Bearer good"));
  });

  it("a token from `herald token` connects and joins its rooms", { timeout: TEST_TIMEOUT_MS }, async () => {
    const token = await heraldToken([gw.flag, gw.file, "--site", "app", "--user", "42", "--room", "user_42", "--room", "news"]);
    assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/);
    const header = JSON.parse(Buffer.from(token.split(".")[0], "base64url"));
    assert.equal(header.alg, "HS256");

    const J1 = client(`${gw.url}/app`, { auth: { token }, query: { deviceId: "j1" } });
    const J2 = client(`${gw.url}/app?token=${encodeURIComponent(token)}&deviceId=j2`, { transports: ["websocket"] });
    await Promise.all([waitConnected(J1), waitConnected(J2)]);

    const { status, body } = withoutNode(await api(gw.url, "GET", "/api/v1/sites/app/sockets", { key: APP_KEY }));
    assert.equal(status, 200);
    const byId = Object.fromEntries(body.sockets.map((s) => [s.id, s]));
    assert.equal(body.sockets.length, 2);
    assert.deepEqual(byId[J1.id], { id: J1.id, user: "42", deviceId: "j1", rooms: [J1.id, "user_42", "news"] });
    assert.deepEqual(byId[J2.id], { id: J2.id, user: "42", deviceId: "j2", rooms: [J2.id, "user_42", "news"] });

    const got = recordAll({ J1, J2 }, "jwt-news");
    const pub = await api(gw.url, "POST", "/api/v1/sites/app/publish", {
      key: APP_KEY,
      body: { rooms: ["news"], except: [J2.id], event: "jwt-news", args: ["hello 42"] },
    });
    assert.deepEqual(pub, { status: 200, body: { matched: 1, queued: 0, online: 0 } });
    await expectOnly(got, ["J1"], ["hello 42"], "publish to news except J2");
  });

  it("a token crafted with the right secret also connects", { timeout: TEST_TIMEOUT_MS }, async () => {
    const now = Math.floor(Date.now() / 1000);
    const token = craftJwt("HS256", { sub: "crafted", rooms: ["r1"], iat: now, exp: now + 600 }, JWT_SECRET);
    const s = client(`${gw.url}/app`, { auth: { token } });
    await waitConnected(s);
    const { body } = withoutNode(await api(gw.url, "GET", "/api/v1/sites/app/sockets?room=r1", { key: APP_KEY }));
    assert.deepEqual(body, { sockets: [{ id: s.id, user: "crafted", deviceId: null, rooms: [s.id, "r1"] }] });
  });

  it("RS256: a token signed with the private key connects; expired and key-confusion tokens are refused", { timeout: TEST_TIMEOUT_MS }, async () => {
    const now = Math.floor(Date.now() / 1000);
    const good = craftRsJwt({ sub: "rs-user", rooms: ["rs-room"], iat: now, exp: now + 600 });
    const s = client(`${gw.url}/rsapp`, { auth: { token: good, deviceId: "rs-dev" } });
    await waitConnected(s);
    const { body } = withoutNode(await api(gw.url, "GET", "/api/v1/sites/rsapp/sockets", { key: APP_KEY }));
    assert.deepEqual(body, { sockets: [{ id: s.id, user: "rs-user", deviceId: "rs-dev", rooms: [s.id, "rs-room"] }] });

    const expired = craftRsJwt({ sub: "rs-user", rooms: [], iat: now - 7200, exp: now - 3600 });
    assert.equal(await refusal(client(`${gw.url}/rsapp`, { auth: { token: expired } })), "the token has expired");

    // The classic confusion: HS256 "signed" with the public key as the HMAC secret.
    const confused = craftJwt("HS256", { sub: "admin", rooms: ["rs-room"], exp: now + 600 }, RSA_PUBLIC);
    assert.equal(
      await refusal(client(`${gw.url}/rsapp`, { auth: { token: confused } })),
      "the token's algorithm is not the one this site accepts",
    );
  });

  it("an expired token: 'the token has expired'", { timeout: TEST_TIMEOUT_MS }, async () => {
    const now = Math.floor(Date.now() / 1000);
    const token = craftJwt("HS256", { sub: "42", rooms: ["user_42"], iat: now - 7200, exp: now - 3600 }, JWT_SECRET);
    assert.equal(await refusal(client(`${gw.url}/app`, { auth: { token } })), "the token has expired");
  });

  it("an HS512 token on the HS256 site: wrong algorithm", { timeout: TEST_TIMEOUT_MS }, async () => {
    const now = Math.floor(Date.now() / 1000);
    const token = craftJwt("HS512", { sub: "42", rooms: ["user_42"], exp: now + 600 }, JWT_SECRET);
    assert.equal(
      await refusal(client(`${gw.url}/app?token=${token}`)),
      "the token's algorithm is not the one this site accepts",
    );
  });

  it("a token signed with another secret, or garbage: 'the token is invalid'", { timeout: TEST_TIMEOUT_MS }, async () => {
    const now = Math.floor(Date.now() / 1000);
    const forged = craftJwt("HS256", { sub: "42", rooms: ["admin"], exp: now + 600 }, "not-the-secret");
    assert.equal(await refusal(client(`${gw.url}/app`, { auth: { token: forged } })), "the token is invalid");
    assert.equal(await refusal(client(`${gw.url}/app`, { auth: { token: "garbage" } })), "the token is invalid");
  });

  it("no token on a JWT site without a public channel: 'a token is required'", { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.equal(await refusal(client(`${gw.url}/app`)), "a token is required");
  });
});
