// Spawns `herald-conformance --port <free port> --suite e2e` for a test file and stops it afterwards.
//
// Environment:
//   HERALD_URL   use an already running server (e.g. http://127.0.0.1:3000) instead of spawning one
//   HERALD_BIN   path of the binary (default: <repo>/target/debug/herald-conformance,
//                falling back to <repo>/target/release/herald-conformance)
//   HERALD_HOST  address the tests connect to (default 127.0.0.1)
//   HERALD_LOG   if set, the server's stdout/stderr are copied to this process' stderr
//                (they are always printed when the server fails to start or dies early)

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const HOST = process.env.HERALD_HOST || "127.0.0.1";
const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 3_000;

const running = new Set();
process.on("exit", () => {
  for (const child of running) {
    try {
      child.kill("SIGKILL");
    } catch {}
  }
});

export function heraldBin() {
  if (process.env.HERALD_BIN) return path.resolve(REPO_ROOT, process.env.HERALD_BIN);
  const debug = path.join(REPO_ROOT, "target", "debug", "herald-conformance");
  const release = path.join(REPO_ROOT, "target", "release", "herald-conformance");
  if (!existsSync(debug) && existsSync(release)) return release;
  return debug;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: HOST, port });
    const done = (ok) => {
      sock.removeAllListeners();
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function spawnOnce(bin, argsFor, env, fixedPort) {
  const port = fixedPort ?? (await freePort());
  const args = argsFor(port);
  const child = spawn(bin, args, { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"], env });
  running.add(child);
  let output = "";
  const collect = (chunk) => {
    const text = chunk.toString();
    output = (output + text).slice(-20_000);
    if (process.env.HERALD_LOG) process.stderr.write(`[herald] ${text}`);
  };
  child.stdout.on("data", collect);
  child.stderr.on("data", collect);
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      exited = { code, signal };
      running.delete(child);
      resolve(exited);
    });
    child.once("error", (err) => {
      exited = { code: null, signal: null, error: err };
      running.delete(child);
      resolve(exited);
    });
  });

  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (exited) break;
    if (await canConnect(port)) {
      return { child, port, exitPromise, getOutput: () => output, getExited: () => exited };
    }
    await sleep(50);
  }
  if (!exited) {
    child.kill("SIGKILL");
    await exitPromise;
    throw new Error(
      `${bin} ${args.join(" ")} did not accept connections on ${HOST}:${port} ` +
        `within ${START_TIMEOUT_MS} ms. Output:\n${output}`,
    );
  }
  const why = exited.error ? exited.error.message : `code ${exited.code}, signal ${exited.signal}`;
  const err = new Error(
    `${bin} ${args.join(" ")} exited before accepting connections (${why}). Output:\n${output}`,
  );
  err.addrInUse = /address.{0,20}in use|EADDRINUSE|os error 98/i.test(output);
  throw err;
}

/**
 * Spawns `bin` with `argsFor(port)` on a free loopback port and waits until it accepts connections, retrying a
 * lost port race. Returns { url, port, stop(), output() }; stop() fails if the process died on its own.
 */
export async function startProcess({ bin, argsFor, env = { RUST_BACKTRACE: "1", ...process.env }, port }) {
  let lastErr;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const srv = await spawnOnce(bin, argsFor, env, port);
      const url = `http://${HOST.includes(":") ? `[${HOST}]` : HOST}:${srv.port}`;
      return {
        url,
        port: srv.port,
        output: srv.getOutput,
        /** Sends `name` (e.g. "SIGHUP") to the process. */
        signal(name) {
          srv.child.kill(name);
        },
        /** SIGKILL, as a crash: nothing is flushed or closed. */
        async kill() {
          srv.child.kill("SIGKILL");
          await srv.exitPromise;
        },
        async stop() {
          if (srv.getExited()) {
            const e = srv.getExited();
            // The server dying on its own during the tests is a failure worth seeing.
            throw new Error(`${bin} died during the tests (code ${e.code}, signal ${e.signal}). Output:\n${srv.getOutput()}`);
          }
          srv.child.kill("SIGTERM");
          const timer = setTimeout(() => srv.child.kill("SIGKILL"), STOP_TIMEOUT_MS);
          await srv.exitPromise;
          clearTimeout(timer);
        },
      };
    } catch (err) {
      lastErr = err;
      if (!err.addrInUse) break; // only a port race is worth retrying
    }
  }
  throw lastErr;
}

/**
 * Starts herald-conformance (or uses HERALD_URL). Returns { url, port, stop(), output() }.
 */
export async function startServer({ suite = "e2e" } = {}) {
  if (process.env.HERALD_URL) {
    const url = process.env.HERALD_URL.replace(/\/+$/, "");
    return { url, port: Number(new URL(url).port), stop: async () => {}, output: () => "" };
  }
  const bin = heraldBin();
  if (!existsSync(bin)) {
    throw new Error(
      `herald-conformance binary not found at ${bin}. Build it with \`cargo build --workspace\` ` +
        `or set HERALD_BIN / HERALD_URL.`,
    );
  }
  return startProcess({ bin, argsFor: (port) => ["--port", String(port), "--suite", suite] });
}
