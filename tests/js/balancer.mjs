// A tiny non-sticky round-robin load balancer for the cluster tests, with nothing but node:http and node:net.
//
// Every incoming HTTP request goes to the next backend in turn: per request, not per connection, so the
// successive polls of one keep-alive client connection land on different nodes (each request is replayed on a
// fresh upstream request through that backend's own agent and answered on the client's connection). Every
// WebSocket upgrade request goes to the next backend too; its head is written raw to a TCP connection to the
// backend, and from then on bytes are piped both ways.
//
// A backend that refuses connections (a node killed with -9) is skipped: the request is tried on the next one,
// which is safe as nothing reached the dead one. A request that fails on a reused keep-alive connection that
// the backend had closed is retried too (the case Node's docs describe for `reusedSocket`). Bodies are read
// whole before they are sent (polling bodies are small), so a retry can send them again.

import http from "node:http";
import net from "node:net";

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
]);

function forwardable(headers) {
  const out = {};
  for (const [k, v] of Object.entries(headers)) if (!HOP_BY_HOP.has(k.toLowerCase())) out[k] = v;
  return out;
}

function retryable(err, upstreamReq) {
  if (err.code === "ECONNREFUSED") return true;
  return Boolean(upstreamReq?.reusedSocket) && (err.code === "ECONNRESET" || err.code === "EPIPE");
}

/**
 * Starts the balancer in front of `backends` (base URLs such as http://127.0.0.1:3001) on 127.0.0.1:0.
 * Returns { url, port, backends, hits, upgrades, log, refused, close() }:
 *   hits[i]      HTTP requests (not upgrades) answered by backend i
 *   upgrades[i]  WebSocket upgrades piped to backend i
 *   refused[i]   times backend i refused a connection (and was skipped)
 *   log          every request that reached a backend: { backend, kind: "http"|"upgrade", method, url, sid,
 *                opened } (`opened`: the sid an Engine.IO handshake answered with)
 *   setNext(i)   send the next request and the next upgrade to backend i (round robin goes on from there;
 *                requests and upgrades count separately); setNextUpgrade(i) the next upgrade only
 *   routeUpgrades(fn)  fn(sid) → backend index (or undefined for round robin) decides where upgrades go;
 *                null restores round robin; routeRequests(fn) the same for requests, fn({method, url, sid})
 *   ownerOf(sid) the backend that answered the handshake of Engine.IO session `sid`
 */
export async function startBalancer(backends) {
  const targets = backends.map((b) => {
    const u = new URL(b);
    return { host: u.hostname, port: Number(u.port), agent: new http.Agent({ keepAlive: true, maxSockets: 256 }) };
  });
  const hits = targets.map(() => 0);
  const upgrades = targets.map(() => 0);
  const refused = targets.map(() => 0);
  const log = [];
  const tunnels = new Set();
  // Plain requests and upgrades each go round robin on their own counter, so a test can tell where an upgrade
  // lands whatever number of polls came before it.
  let nextHttp = 0;
  let nextUpgrade = 0;
  /** The backend the next request and the next upgrade go to (then round robin from there). */
  const setNext = (i) => {
    nextHttp = nextUpgrade = i % targets.length;
  };
  /** The backend the next upgrade goes to. */
  const setNextUpgrade = (i) => {
    nextUpgrade = i % targets.length;
  };
  const takeHttp = () => {
    const i = nextHttp;
    nextHttp = (nextHttp + 1) % targets.length;
    return i;
  };
  /** When set, `upgradeRoute(sid)` may name the backend an upgrade goes to (else round robin). */
  let upgradeRoute = null;
  /** When set, `httpRoute({method, url, sid})` may name the backend a request goes to (else round robin). */
  let httpRoute = null;
  const takeUpgrade = () => {
    const i = nextUpgrade;
    nextUpgrade = (nextUpgrade + 1) % targets.length;
    return i;
  };
  const sidOf = (url) => new URL(url, "http://x").searchParams.get("sid");

  /** Sends the buffered request to backend `i`, moving on to the next backend on a refusal. */
  function relay(req, res, body, i, tried) {
    const t = targets[i];
    const upstream = http.request({
      host: t.host,
      port: t.port,
      agent: t.agent,
      method: req.method,
      path: req.url,
      headers: { ...forwardable(req.headers), "content-length": String(body.length) },
    });
    let answered = false;
    upstream.on("response", (up) => {
      answered = true;
      hits[i]++;
      const entry = { backend: i, kind: "http", method: req.method, url: req.url, sid: sidOf(req.url), status: up.statusCode, at: Date.now() };
      if (req.method === "POST") entry.body = body.toString("latin1").slice(0, 200);
      log.push(entry);
      if (!entry.sid && req.method === "GET") {
        // an Engine.IO handshake: note the session it opened, so tests can tell which node owns it
        up.once("data", (chunk) => {
          const m = /"sid":"([^"]+)"/.exec(chunk.toString("latin1"));
          if (m) entry.opened = m[1];
        });
      }
      res.writeHead(up.statusCode, forwardable(up.headers));
      up.pipe(res);
      up.on("error", () => res.destroy());
    });
    upstream.on("error", (err) => {
      if (answered) {
        res.destroy();
        return;
      }
      if (retryable(err, upstream) && tried + 1 < targets.length * 2) {
        if (err.code === "ECONNREFUSED") refused[i]++;
        relay(req, res, body, (i + 1) % targets.length, tried + 1);
        return;
      }
      if (!res.headersSent) res.writeHead(502, { "Content-Type": "text/plain" });
      res.end(`balancer: backend ${i} failed: ${err.code || err.message}`);
    });
    // The client going away (a long poll it gave up on) ends the upstream request too.
    res.on("close", () => {
      if (!res.writableFinished) upstream.destroy();
    });
    upstream.end(body);
  }

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const routed = httpRoute?.({ method: req.method, url: req.url, sid: sidOf(req.url) });
      relay(req, res, Buffer.concat(chunks), Number.isInteger(routed) ? routed % targets.length : takeHttp(), 0);
    });
    req.on("error", () => res.destroy());
  });

  server.on("upgrade", (req, client, head) => {
    const headLines = [`${req.method} ${req.url} HTTP/${req.httpVersion}`];
    for (let k = 0; k < req.rawHeaders.length; k += 2) headLines.push(`${req.rawHeaders[k]}: ${req.rawHeaders[k + 1]}`);
    const requestHead = headLines.join("\r\n") + "\r\n\r\n";
    tunnels.add(client);
    client.on("close", () => tunnels.delete(client));
    client.on("error", () => client.destroy());

    const attempt = (i, tried) => {
      const t = targets[i];
      const upstream = net.connect({ host: t.host, port: t.port });
      tunnels.add(upstream);
      upstream.on("close", () => tunnels.delete(upstream));
      let connected = false;
      upstream.once("connect", () => {
        connected = true;
        upgrades[i]++;
        log.push({ backend: i, kind: "upgrade", method: req.method, url: req.url, sid: sidOf(req.url), at: Date.now() });
        upstream.write(requestHead);
        if (head?.length) upstream.write(head);
        upstream.pipe(client);
        client.pipe(upstream);
        upstream.on("error", () => client.destroy());
        upstream.on("close", () => client.destroy());
        client.on("close", () => upstream.destroy());
      });
      upstream.once("error", (err) => {
        if (connected) return; // the close handlers end the client's side
        if (err.code === "ECONNREFUSED" && tried + 1 < targets.length) {
          refused[i]++;
          attempt((i + 1) % targets.length, tried + 1);
          return;
        }
        client.end(`HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      });
    };
    const routed = upgradeRoute?.(sidOf(req.url));
    attempt(Number.isInteger(routed) ? routed % targets.length : takeUpgrade(), 0);
  });

  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    backends: [...backends],
    hits,
    upgrades,
    refused,
    log,
    setNext,
    setNextUpgrade,
    routeUpgrades(fn) {
      upgradeRoute = fn;
    },
    routeRequests(fn) {
      httpRoute = fn;
    },
    /** The backend whose handshake opened Engine.IO session `sid` (undefined if it was not seen). */
    ownerOf: (sid) => log.find((e) => e.opened === sid)?.backend,
    async close() {
      for (const s of tunnels) s.destroy();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      for (const t of targets) t.agent.destroy();
    },
  };
}
