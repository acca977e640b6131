// The cluster tests' balancer (balancer.mjs) on its own, against plain Node backends (no herald, no Redis):
// round robin per request even on one keep-alive connection, WebSocket upgrades piped both ways on their own
// round robin, and a backend that refuses connections skipped.

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import WebSocket, { WebSocketServer } from "ws";
import { startBalancer } from "./balancer.mjs";
import { freePort } from "./server.mjs";
import { STEP_TIMEOUT_MS, withTimeout } from "./util.mjs";

/** A backend answering `<name> <method> <url> <body>`, and echoing WebSocket messages as `<name>:<msg>`. */
async function backend(name) {
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => res.end(`${name} ${req.method} ${req.url} ${body}`));
  });
  const wss = new WebSocketServer({ server });
  wss.on("connection", (ws, req) => ws.on("message", (m) => ws.send(`${name}:${req.url}:${m}`)));
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: async () => {
      for (const c of wss.clients) c.terminate();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** `count` requests one after the other on one keep-alive connection; resolves the answers. */
async function onOneConnection(url, count) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const answers = [];
  const sockets = new Set();
  try {
    for (let i = 0; i < count; i++) {
      answers.push(
        await withTimeout(
          new Promise((resolve, reject) => {
            const req = http.request(`${url}/p?i=${i}`, { method: "POST", agent }, (res) => {
              sockets.add(req.socket);
              let text = "";
              res.on("data", (c) => (text += c));
              res.on("end", () => resolve(text));
            });
            req.on("error", reject);
            req.end(`b${i}`);
          }),
          STEP_TIMEOUT_MS,
          `request ${i}`,
        ),
      );
    }
  } finally {
    agent.destroy();
  }
  return { answers, connections: sockets.size };
}

function wsRoundTrip(url, msg) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.on("open", () => ws.send(msg));
      ws.on("message", (m) => {
        resolve(m.toString());
        ws.close();
      });
      ws.on("error", reject);
    }),
    STEP_TIMEOUT_MS,
    `websocket round trip to ${url}`,
  );
}

describe("the round-robin balancer", () => {
  let backends, balancer;
  before(async () => {
    backends = await Promise.all(["A", "B", "C"].map(backend));
  });
  after(async () => {
    await balancer?.close();
    await Promise.all(backends.map((b) => b.close()));
  });

  it("sends each request of one keep-alive connection to the next backend", async () => {
    balancer = await startBalancer(backends.map((b) => b.url));
    const { answers, connections } = await onOneConnection(balancer.url, 6);
    assert.equal(connections, 1, "the client used one connection");
    assert.deepEqual(answers, ["A", "B", "C", "A", "B", "C"].map((n, i) => `${n} POST /p?i=${i} b${i}`));
    assert.deepEqual(balancer.hits, [2, 2, 2]);
    await balancer.close();
    balancer = null;
  });

  it("pipes WebSocket upgrades both ways, round robin on their own", async () => {
    balancer = await startBalancer(backends.map((b) => b.url));
    const ws = balancer.url.replace("http", "ws");
    assert.equal(await wsRoundTrip(`${ws}/x?sid=1`, "hi"), "A:/x?sid=1:hi");
    await onOneConnection(balancer.url, 1);
    assert.equal(await wsRoundTrip(`${ws}/y`, "yo"), "B:/y:yo");
    balancer.setNext(2);
    assert.equal(await wsRoundTrip(`${ws}/z`, "zz"), "C:/z:zz");
    assert.deepEqual(balancer.upgrades, [1, 1, 1]);
    assert.deepEqual(balancer.log.map((e) => [e.kind, e.backend, e.sid]), [
      ["upgrade", 0, "1"],
      ["http", 0, null],
      ["upgrade", 1, null],
      ["upgrade", 2, null],
    ]);
    await balancer.close();
    balancer = null;
  });

  it("skips a backend that refuses connections, for requests and upgrades", async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    balancer = await startBalancer([backends[0].url, dead, backends[2].url]);
    const { answers } = await onOneConnection(balancer.url, 4);
    assert.deepEqual(answers.map((a) => a[0]), ["A", "C", "C", "A"]);
    balancer.setNext(1);
    assert.equal(await wsRoundTrip(`${balancer.url.replace("http", "ws")}/w`, "x"), "C:/w:x");
    assert.deepEqual(balancer.refused, [0, 2, 0]);
  });

  it("routes requests and upgrades by a test's rule when one is set", async () => {
    await balancer?.close();
    balancer = await startBalancer(backends.map((b) => b.url));
    balancer.routeRequests(({ sid }) => (sid ? Number(sid) : undefined));
    balancer.routeUpgrades((sid) => (sid ? Number(sid) + 1 : undefined));
    const ask = (q) => fetch(`${balancer.url}/r?${q}`).then((r) => r.text());
    assert.equal((await ask("sid=2"))[0], "C");
    assert.equal((await ask("sid=2"))[0], "C");
    assert.equal((await ask("x=1"))[0], "A", "no rule for it: round robin");
    assert.equal(await wsRoundTrip(`${balancer.url.replace("http", "ws")}/u?sid=0`, "m"), "B:/u?sid=0:m");
    balancer.routeRequests(null);
    assert.equal((await ask("sid=2"))[0], "B");
  });
});
