// Helpers of the two-way tests: a real HTTP backend that records every call whole (headers and raw body), and
// answers each path with a function or a fixed JSON answer.

import { createHmac } from "node:crypto";
import http from "node:http";
import { HOST } from "./gateway-helpers.mjs";
import { until, STEP_TIMEOUT_MS } from "./util.mjs";

export const SIGNING_SECRET = "two-way-signing-secret-0123456789";

/** `sha256=<hex HMAC-SHA256>` of `body` under `secret`, as herald signs its calls. */
export const sign = (body, secret = SIGNING_SECRET) => `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;

/**
 * A backend on a free port. `routes[path]` is `(call, res) => void` (answer with `reply(res, status, body)`,
 * maybe later) or a JSON body answered 200. Each call is recorded as { path, headers, raw, body }.
 */
export async function startBackend(routes) {
  const calls = [];
  const timers = new Set();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const raw = Buffer.concat(chunks).toString("utf8");
      let body;
      try {
        body = JSON.parse(raw);
      } catch {}
      const call = { path: new URL(req.url, "http://x").pathname, headers: req.headers, raw, body };
      calls.push(call);
      const route = routes[call.path];
      if (route === undefined) return reply(res, 404, { error: "no route" });
      if (typeof route !== "function") return reply(res, 200, route);
      route(call, res, { later: (ms, fn) => timers.add(setTimeout(fn, ms)) });
    });
  });
  await new Promise((resolve) => server.listen(0, HOST, resolve));
  const url = `http://${HOST}:${server.address().port}`;
  return {
    url,
    calls,
    /** The calls to `path`. */
    to: (path) => calls.filter((c) => c.path === path),
    /** Waits until `n` calls reached `path`; resolves with them. */
    async awaitCalls(path, n = 1, ms = STEP_TIMEOUT_MS) {
      await until(() => calls.filter((c) => c.path === path).length >= n, ms, `${n} call(s) to ${path}`);
      return calls.filter((c) => c.path === path);
    },
    async close() {
      for (const t of timers) clearTimeout(t);
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

export function reply(res, status, body) {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json" }).end(text);
}
