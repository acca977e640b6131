// Reference server for herald-bench: the official socket.io server on node's http server.
//
// Behaves like herald's benchmark site (see ../README.md): namespace /bench admits a client whose HS256 JWT
// verifies with BENCH_JWT_SECRET and joins it to the token's `rooms` before the CONNECT ack;
// POST /send?site=bench&apiKey=KEY emits {event, args} to the union of `rooms`; GET /healthcheck answers 200.
// Nothing is logged per connection or message, so logging does not weigh on the CPU figures.
//
// With REDIS_URL set it is one node of a cluster (scripts/bench-cluster.sh): the official
// `@socket.io/redis-adapter` on two `redis` clients (publish and subscribe), so a POST /send on any node reaches
// the clients of every node through Redis pub/sub. Engine.IO sessions stay on the node that opened them: a
// polling request for another node's session is answered 400 "Session ID unknown" (socket.io needs sticky
// sessions for polling).
//
// With EVENTS_URL set, the client event `bid` is routed as herald routes it with bench/herald-events.yml (the
// `events` benchmark): each emit is POSTed to EVENTS_URL as {"site", "event", "args", "socket": {"id", "user",
// "deviceId", "rooms"}} with the client's token as `Authorization: Bearer`, on a keep-alive agent, and the ack
// gets the answer's `reply` spread, or {"error": reason} as herald acks a failed route.

import { Agent, createServer, request as httpRequest } from "node:http";
import jwt from "jsonwebtoken";
import { Server } from "socket.io";

const NAMESPACE = "/bench";
const SITE = "bench";
// Clock skew allowed on `exp`, the same as herald's JWT check.
const LEEWAY_SECS = 60;
// axum's default body limit, so both reference servers refuse the same bodies.
const MAX_BODY_BYTES = 2 * 1024 * 1024;

function env(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} must be set`);
    process.exit(64);
  }
  return value;
}

const port = Number(env("PORT"));
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error("PORT must be a port number");
  process.exit(64);
}
const secret = env("BENCH_JWT_SECRET");
const apiKey = env("BENCH_API_KEY");
const eventsUrl = process.env.EVENTS_URL ? new URL(process.env.EVENTS_URL) : null;
// herald's default timeout_ms of an event route.
const EVENT_TIMEOUT_MS = 5000;

// The cluster adapter, when there is a Redis; connected before the namespace exists, so it is the namespace's.
let adapter;
if (process.env.REDIS_URL) {
  const { createClient } = await import("redis");
  const { createAdapter } = await import("@socket.io/redis-adapter");
  const pubClient = createClient({ url: process.env.REDIS_URL });
  const subClient = pubClient.duplicate();
  for (const client of [pubClient, subClient]) {
    client.on("error", (e) => console.error(`redis: ${e.message}`));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);
  adapter = createAdapter(pubClient, subClient);
}

const httpServer = createServer(handle);
// The load generator keeps its HTTP connections open between publishes; never close them for idleness.
httpServer.keepAliveTimeout = 0;

// Defaults spelled out where the benchmark depends on them.
const io = new Server(httpServer, {
  path: "/socket.io/",
  pingInterval: 25000,
  pingTimeout: 20000,
  transports: ["polling", "websocket"],
  perMessageDeflate: false,
  ...(adapter ? { adapter } : {}),
});
const bench = io.of(NAMESPACE);

// Runs before the socket enters the namespace, so a publish that follows the client's CONNECT ack always finds
// it in its rooms.
bench.use((socket, next) => {
  const token = socket.handshake.auth?.token ?? socket.handshake.query?.token;
  if (typeof token !== "string" || token === "") {
    return next(new Error("missing token"));
  }
  let claims;
  try {
    claims = jwt.verify(token, secret, { algorithms: ["HS256"], clockTolerance: LEEWAY_SECS });
  } catch {
    return next(new Error("invalid token"));
  }
  const rooms = claims.rooms ?? [];
  if (!Array.isArray(rooms) || !rooms.every((r) => typeof r === "string")) {
    return next(new Error("invalid token"));
  }
  socket.join(rooms);
  // What an event route sends along, as herald does.
  socket.data.user = typeof claims.sub === "string" ? claims.sub : null;
  socket.data.token = token;
  next();
});

if (eventsUrl) {
  // Connections to the backend are kept open and reused, as herald's pool does; no limit on how many.
  const agent = new Agent({ keepAlive: true });
  bench.on("connection", (socket) => {
    socket.on("bid", (...args) => {
      const ack = typeof args.at(-1) === "function" ? args.pop() : () => {};
      route(agent, socket, "bid", args).then(
        (reply) => ack(...reply),
        (e) => ack({ error: e.message }),
      );
    });
  });
}

// POSTs one client event to EVENTS_URL; resolves to the answer's `reply` (the ack's arguments).
function route(agent, socket, event, args) {
  const body = JSON.stringify({
    site: SITE,
    event,
    args,
    socket: { id: socket.id, user: socket.data.user, deviceId: null, rooms: [...socket.rooms] },
  });
  const headers = {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    authorization: `Bearer ${socket.data.token}`,
  };
  return new Promise((resolve, reject) => {
    const req = httpRequest(eventsUrl, { method: "POST", agent, headers, timeout: EVENT_TIMEOUT_MS }, (res) => {
      const chunks = [];
      res.on("data", (chunk) => chunks.push(chunk));
      res.on("error", reject);
      res.on("end", () => {
        if (res.statusCode < 200 || res.statusCode > 299) {
          return reject(new Error(`the backend answered ${res.statusCode}`));
        }
        try {
          const answer = JSON.parse(Buffer.concat(chunks).toString("utf8"));
          resolve(Array.isArray(answer?.reply) ? answer.reply : []);
        } catch {
          reject(new Error("the backend's answer is not valid"));
        }
      });
    });
    req.on("timeout", () => req.destroy(new Error(`the backend did not answer within ${EVENT_TIMEOUT_MS} ms`)));
    req.on("error", (e) => reject(e.message.startsWith("the backend") ? e : new Error("the backend is unreachable")));
    req.end(body);
  });
}

function reply(res, status, text) {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function handle(req, res) {
  const url = new URL(req.url, "http://localhost");
  if (url.pathname === "/healthcheck" && req.method === "GET") {
    return reply(res, 200, "OK");
  }
  if (url.pathname === "/send" && req.method === "POST") {
    return send(req, res, url.searchParams);
  }
  reply(res, 404, "Not Found");
}

function send(req, res, query) {
  if (query.get("site") !== SITE || query.get("apiKey") !== apiKey) {
    req.resume();
    return reply(res, 403, "Forbidden");
  }
  const chunks = [];
  let size = 0;
  let tooLarge = false;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) tooLarge = true;
    else chunks.push(chunk);
  });
  req.on("end", () => {
    if (tooLarge) return reply(res, 413, "Payload Too Large");
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      return reply(res, 400, "Bad Request");
    }
    const rooms = typeof body?.rooms === "string" ? [body.rooms] : body?.rooms;
    if (!Array.isArray(rooms) || !rooms.every((r) => typeof r === "string") || typeof body.event !== "string") {
      return reply(res, 400, "Bad Request");
    }
    const args = body.args === undefined || body.args === null ? [] : Array.isArray(body.args) ? body.args : [body.args];
    // No rooms means nobody: socket.io would read an empty room list as the whole namespace.
    if (rooms.length > 0) {
      try {
        bench.to(rooms).emit(body.event, ...args);
      } catch {
        // socket.io refuses its reserved event names ("connect", "disconnect", ...).
        return reply(res, 400, "Bad Request");
      }
    }
    reply(res, 200, "OK");
  });
}

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${httpServer.address().port}`);
});
