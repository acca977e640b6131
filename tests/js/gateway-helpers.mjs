// Helpers shared by the tests that run the real `herald` gateway binary: starting it with a config, a real HTTP
// server for webhooks, calls to its HTTP API, and hand-crafted JWTs.

import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { heraldBin, startProcess } from "./server.mjs";
import { STEP_TIMEOUT_MS } from "./util.mjs";

export const HOST = "127.0.0.1";

export function gatewayBin() {
  if (process.env.HERALD_GATEWAY_BIN) return path.resolve(process.env.HERALD_GATEWAY_BIN);
  return path.join(path.dirname(heraldBin()), "herald");
}

/**
 * Spawns `herald --sites FILE` (sitesYaml) or `herald --config FILE` (configYaml) on a free port (or `port`)
 * with its own data directory (or `dir`, to restart on another's data). Returns
 * { url, port, dir, file, flag, stop(), kill(), output() }; stop() removes the directory unless `keep` is set.
 */
export async function startGateway({ sitesYaml, configYaml, dir, port, keep = false }) {
  const bin = gatewayBin();
  if (!existsSync(bin)) {
    throw new Error(`herald binary not found at ${bin}; build it with \`cargo build -p herald\` or set HERALD_GATEWAY_BIN`);
  }
  dir ??= mkdtempSync(path.join(os.tmpdir(), "herald-gw-"));
  const file = path.join(dir, sitesYaml ? "sites.yml" : "herald.yml");
  writeFileSync(file, sitesYaml ?? configYaml);
  const flag = sitesYaml ? "--sites" : "--config";
  const env = { ...process.env, RUST_BACKTRACE: "1" };
  for (const k of Object.keys(env)) if (k.startsWith("HERALD_")) delete env[k]; // no stray config
  const argsFor = (p) => [flag, file, "--port", String(p), "--data-dir", path.join(dir, "data")];
  const srv = await startProcess({ bin, argsFor, env, port });
  return {
    ...srv,
    dir,
    file,
    flag,
    async stop() {
      try {
        await srv.stop();
      } finally {
        if (!keep) rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** A real HTTP auth webhook. `routes[path](req, res)` answers; returns { url, port, calls, close() }. */
export async function startAuthServer(routes) {
  const calls = [];
  const timers = new Set();
  const server = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, "http://x");
    calls.push({ path: pathname, method: req.method, authorization: req.headers.authorization });
    const route = routes[pathname];
    if (!route) {
      res.writeHead(404).end("not found");
      return;
    }
    route(req, res, { later: (ms, fn) => timers.add(setTimeout(fn, ms)) });
  });
  await new Promise((resolve) => server.listen(0, HOST, resolve));
  const { port } = server.address();
  return {
    url: `http://${HOST}:${port}`,
    port,
    calls,
    async close() {
      for (const t of timers) clearTimeout(t);
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

export function json(res, status, body) {
  res.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(body));
}

/** A call to the gateway's HTTP API; resolves { status, body } (body parsed as JSON when it is JSON). */
export async function api(base, method, urlPath, { key, body, form, headers = {}, timeoutMs = STEP_TIMEOUT_MS } = {}) {
  const h = { ...headers };
  if (key) h.Authorization = `Bearer ${key}`;
  let payload;
  if (form !== undefined) {
    h["Content-Type"] = "application/x-www-form-urlencoded";
    payload = form;
  } else if (body !== undefined) {
    h["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const res = await fetch(base + urlPath, {
    method,
    headers: h,
    body: payload,
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {}
  return { status: res.status, body: parsed };
}

/**
 * A socket listing's answer with each socket's `node` (the cluster node that holds it, always present) checked
 * and removed, for tests that compare sockets exactly.
 */
export function withoutNode(res) {
  for (const socket of res.body?.sockets ?? []) {
    if (typeof socket.node !== "string") throw new Error(`socket ${socket.id} has no node: ${JSON.stringify(socket)}`);
    delete socket.node;
  }
  return res;
}

/** An HMAC-signed JWT, crafted by hand. */
export function craftJwt(alg, claims, secret) {
  const hash = { HS256: "sha256", HS384: "sha384", HS512: "sha512" }[alg];
  const signingInput = `${b64url({ alg, typ: "JWT" })}.${b64url(claims)}`;
  const sig = createHmac(hash, secret).update(signingInput).digest("base64url");
  return `${signingInput}.${sig}`;
}

export const b64url = (x) => Buffer.from(typeof x === "string" ? x : JSON.stringify(x)).toString("base64url");
