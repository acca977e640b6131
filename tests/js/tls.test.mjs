// socket.io-client 4.x over HTTPS and WSS against the real `herald` binary with `server.tls`: a private CA and a
// server certificate for 127.0.0.1 are made here with the `openssl` command, the client trusts the CA through its
// `ca` option, and a publish over HTTPS reaches it on each transport (polling, websocket, and polling upgraded to
// websocket). A client that does not trust the CA does not connect.
//
// Environment:
//   HERALD_GATEWAY_BIN  the gateway binary (default: <repo>/target/debug/herald)
//   HERALD_LOG          if set, the gateway's output is copied to stderr

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { io } from "socket.io-client";
import { HOST, startGateway } from "./gateway-helpers.mjs";
import { Clients, STEP_TIMEOUT_MS, TEST_TIMEOUT_MS, nextEvent, waitConnected, withTimeout } from "./util.mjs";

const KEY = "shop-key-0123456789";

/** A CA and a server certificate it signs for 127.0.0.1 and localhost, as PEM files in `dir`. */
function makeCertificates(dir) {
  const openssl = (...args) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=herald js test CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  openssl("req", ...ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=herald-js");
  writeFileSync(path.join(dir, "server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
    "-out", "server.pem", "-days", "1", "-extfile", "server.ext");
  return {
    ca: readFileSync(path.join(dir, "ca.pem"), "utf8"),
    cert: path.join(dir, "server.pem"),
    key: path.join(dir, "server.key"),
  };
}

/** `POST url` with a JSON body over HTTPS, trusting `ca`; resolves { status, body }. */
function postJson(url, body, { key, ca }) {
  const request = new Promise((resolve, reject) => {
    const req = https.request(url, {
      method: "POST",
      ca,
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
    }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => (text += chunk));
      res.on("end", () => resolve({ status: res.statusCode, body: text }));
    });
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
  return withTimeout(request, STEP_TIMEOUT_MS, `POST ${url}`);
}

describe("herald over TLS (socket.io-client 4 over https and wss)", { timeout: TEST_TIMEOUT_MS * 3 }, () => {
  let dir;
  let gw;
  let certs;
  let url;
  const clients = new Clients();

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "herald-tls-js-"));
    certs = makeCertificates(dir);
    gw = await startGateway({
      configYaml: [
        "server:",
        "  tls:",
        `    cert: ${certs.cert}`,
        `    key: ${certs.key}`,
        "sites:",
        "  - name: shop",
        `    api_keys: [${KEY}]`,
        "    recovery_window_ms: 0",
        "",
      ].join("\n"),
    });
    url = `https://${HOST}:${gw.port}`;
  });

  afterEach(() => clients.closeAll());

  after(async () => {
    await gw?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const cases = [
    { name: "polling", transports: ["polling"], upgrade: false, expected: "polling" },
    { name: "websocket", transports: ["websocket"], upgrade: false, expected: "websocket" },
    { name: "polling upgraded to websocket", transports: ["polling", "websocket"], upgrade: true, expected: "websocket" },
  ];
  for (const { name, transports, upgrade, expected } of cases) {
    it(`receives a publish over ${name}`, async () => {
      const socket = clients.add(io(`${url}/shop`, { transports, upgrade, ca: certs.ca, forceNew: true, reconnection: false }));
      await waitConnected(socket);
      if (upgrade && socket.io.engine.transport.name !== "websocket") {
        await nextEvent(socket.io.engine, "upgrade");
      }
      assert.equal(socket.io.engine.transport.name, expected);
      const got = nextEvent(socket, "news");
      const answer = await postJson(`${url}/api/v1/sites/shop/publish`, { all: true, event: "news", args: ["over tls", name] }, { key: KEY, ca: certs.ca });
      assert.equal(answer.status, 200, answer.body);
      assert.deepEqual(await got, ["over tls", name]);
    });
  }

  it("does not connect when the client does not trust the CA", async () => {
    const socket = clients.add(io(`${url}/shop`, { transports: ["websocket"], forceNew: true, reconnection: false }));
    const [error] = await nextEvent(socket, "connect_error");
    assert.equal(socket.connected, false);
    assert.match(String(error?.description?.message ?? error?.description ?? error), /certificate/i);
  });
});
