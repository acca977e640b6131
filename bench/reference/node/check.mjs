// Checks that both reference servers keep the behaviour contract in ../README.md, with the official
// socket.io client. Run after scripts/bench-setup.sh: `node bench/reference/node/check.mjs [node|socketioxide]`.

import { spawn } from "node:child_process";
import http from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import jwt from "jsonwebtoken";
import { io } from "socket.io-client";

const here = dirname(fileURLToPath(import.meta.url));
const SECRET = "check-secret";
const API_KEY = "check-key";
const SERVERS = {
  node: [process.execPath, [join(here, "server.mjs")]],
  socketioxide: [join(here, "../socketioxide/target/release/herald-ref-socketioxide"), []],
};

function start(name) {
  const [cmd, args] = SERVERS[name];
  const child = spawn(cmd, args, {
    env: { ...process.env, PORT: "0", BENCH_JWT_SECRET: SECRET, BENCH_API_KEY: API_KEY },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    let out = "";
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`${name} exited with ${code}`)));
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/^listening on 127\.0\.0\.1:(\d+)$/m);
      if (m) resolve({ child, port: Number(m[1]) });
    });
  });
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(port, method, path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path, agent }, (res) => {
      let text = "";
      res.on("data", (c) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode, text, reused: req.reusedSocket }));
    });
    req.on("error", reject);
    if (body !== undefined) req.setHeader("content-type", "application/json");
    req.end(body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body));
  });
}

const token = (claims, opts = {}) => jwt.sign(claims, SECRET, { algorithm: "HS256", expiresIn: 3600, ...opts });

function connect(port, opts) {
  const socket = io(`http://127.0.0.1:${port}/bench`, { reconnection: false, forceNew: true, timeout: 5000, ...opts });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => {
      socket.close();
      reject(err);
    });
  });
}

function next(socket, event, ms = 2000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${event}' within ${ms} ms`)), ms);
    socket.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function check(name) {
  const { child, port } = await start(name);
  const results = [];
  const step = async (label, fn) => {
    try {
      const detail = await fn();
      results.push(["ok", detail ? `${label} (${detail})` : label]);
    } catch (err) {
      results.push(["FAIL", `${label}: ${err.message}`]);
    }
  };
  const send = (body, key = API_KEY, site = "bench") =>
    request(port, "POST", `/send?site=${site}&apiKey=${key}`, body);

  try {
    await step("GET /healthcheck is 200", async () => {
      const r = await request(port, "GET", "/healthcheck");
      if (r.status !== 200) throw new Error(`status ${r.status}`);
    });
    for (const transport of ["websocket", "polling"]) {
      await step(`${transport}: rooms joined before the ack; /send reaches r1 and not r2`, async () => {
        const s1 = await connect(port, { transports: [transport], auth: { token: token({ sub: "u1", rooms: ["r1"] }) } });
        const s2 = await connect(port, { transports: [transport], auth: { token: token({ sub: "u2", rooms: ["r2"] }) } });
        let leaked = false;
        s2.on("m", () => (leaked = true));
        const got = next(s1, "m");
        const r = await send({ rooms: ["r1"], event: "m", args: [{ x: 1 }] });
        if (r.status !== 200 || r.text !== "OK") throw new Error(`status ${r.status} ${r.text}`);
        const args = await got;
        if (!same(args, [{ x: 1 }])) throw new Error(`args ${JSON.stringify(args)}`);
        await new Promise((r) => setTimeout(r, 200));
        s1.close();
        s2.close();
        if (leaked) throw new Error("r2 got an r1 event");
      });
    }
    await step("token in the handshake query; rooms as a string; args as one value and as many", async () => {
      const s = await connect(port, { transports: ["websocket"], query: { token: token({ rooms: ["a", "b"] }) } });
      let got = next(s, "one");
      await send({ rooms: "b", event: "one", args: [1, 2] });
      if (!same(await got, [1, 2])) throw new Error("array args not spread");
      got = next(s, "one");
      await send({ rooms: ["zz", "a"], event: "one", args: "solo" });
      if (!same(await got, ["solo"])) throw new Error("scalar args not one argument");
      s.close();
    });
    await step("a socket in two listed rooms gets one copy", async () => {
      const s = await connect(port, { transports: ["websocket"], auth: { token: token({ rooms: ["a", "b"] }) } });
      let count = 0;
      s.on("dup", () => count++);
      await send({ rooms: ["a", "b"], event: "dup", args: [0] });
      await new Promise((r) => setTimeout(r, 300));
      s.close();
      if (count !== 1) throw new Error(`got ${count} copies`);
    });
    for (const [label, auth] of [
      ["bad signature", { token: jwt.sign({ rooms: ["r1"] }, "other", { algorithm: "HS256" }) }],
      ["expired", { token: jwt.sign({ rooms: ["r1"], exp: Math.floor(Date.now() / 1000) - 3600 }, SECRET) }],
      ["not a JWT", { token: "nope" }],
      ["missing", {}],
    ]) {
      await step(`${label} token gets connect_error`, async () => {
        try {
          const s = await connect(port, { transports: ["websocket"], auth });
          s.close();
        } catch (err) {
          if (!err.message) throw new Error("connect_error without a message");
          return `message "${err.message}"`;
        }
        throw new Error("connected");
      });
    }
    await step("wrong apiKey is 403, wrong site is 403, bad body is 400", async () => {
      const statuses = [
        (await send({ rooms: ["r1"], event: "m", args: [] }, "wrong")).status,
        (await send({ rooms: ["r1"], event: "m", args: [] }, API_KEY, "other")).status,
        (await send("{not json")).status,
        (await send({ rooms: ["r1"] })).status,
        (await send({ rooms: [1], event: "m" })).status,
      ];
      if (!same(statuses, [403, 403, 400, 400, 400])) throw new Error(`statuses ${statuses}`);
    });
    await step("HTTP keep-alive: requests reuse one connection", async () => {
      await send({ rooms: ["nobody"], event: "m", args: [1] });
      const r = await send({ rooms: ["nobody"], event: "m", args: [1] });
      if (!r.reused) throw new Error("connection was not reused");
    });
  } finally {
    child.removeAllListeners("exit");
    child.kill("SIGTERM");
  }
  return results;
}

const names = process.argv.length > 2 ? process.argv.slice(2) : Object.keys(SERVERS);
let failed = 0;
let passed = 0;
for (const name of names) {
  for (const [status, label] of await check(name)) {
    console.log(`${name}: ${status} ${label}`);
    if (status === "ok") passed++;
    else failed++;
  }
}
agent.destroy();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
