// Helpers of the cluster tests: N real `herald` nodes on one Redis database behind the round-robin balancer
// (balancer.mjs), Redis checks and commands over a bare socket (no client library), and node logs on failure.
//
// Environment:
//   HERALD_TEST_REDIS_DB  the Redis database the cluster tests own and flush (default 14)
//   HERALD_LOG            copy every node's output to stderr (server.mjs)

import net from "node:net";
import { startBalancer } from "./balancer.mjs";
import { startGateway } from "./gateway-helpers.mjs";
import { freePort } from "./server.mjs";

export const REDIS = { host: "127.0.0.1", port: 6379 };
export const REDIS_DB = Number(process.env.HERALD_TEST_REDIS_DB ?? 14);
export const REDIS_URL = `redis://${REDIS.host}:${REDIS.port}/${REDIS_DB}`;
const START_REDIS = "redis-server --daemonize yes --save '' --appendonly no";

/** A name no earlier run used (site names: [A-Za-z0-9_-]). */
export const runId = () => `${Date.now().toString(36)}${Math.floor(Math.random() * 36 ** 4).toString(36)}`;

const encode = (args) =>
  `*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join("");

/**
 * Sends `commands` (arrays of strings) on one connection after `SELECT db`, and resolves with the raw reply text
 * once every command answered with a one-line reply (+OK, :1, -ERR…). Enough for PING, SELECT, FLUSHDB, DEL.
 */
export function redisCommands(commands, db = REDIS_DB, ms = 3000) {
  return new Promise((resolve, reject) => {
    const all = [["SELECT", String(db)], ...commands];
    const sock = net.connect(REDIS);
    let text = "";
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`Redis did not answer ${JSON.stringify(commands)} within ${ms} ms (got ${JSON.stringify(text)})`));
    }, ms);
    sock.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    sock.once("connect", () => sock.write(all.map(encode).join("")));
    sock.on("data", (d) => {
      text += d.toString();
      const lines = text.split("\r\n").filter(Boolean);
      if (lines.length >= all.length) {
        clearTimeout(timer);
        sock.destroy();
        const err = lines.find((l) => l.startsWith("-"));
        if (err) reject(new Error(`Redis: ${err}`));
        else resolve(lines);
      }
    });
  });
}

/** Fails (never skips) when Redis does not answer, naming the command that starts it. */
export async function requireRedis() {
  let ok = false;
  try {
    const lines = await redisCommands([["PING"]], REDIS_DB, 1000);
    ok = lines.at(-1) === "+PONG";
  } catch {}
  if (!ok) {
    throw new Error(
      `the cluster tests need Redis on ${REDIS.host}:${REDIS.port} (database ${REDIS_DB}); start it with ` +
        `\`${START_REDIS}\` (or \`bash scripts/services.sh\`)`,
    );
  }
}

/** Distinct free ports (freePort may hand the same one out twice in a row). */
async function freePorts(n) {
  const ports = new Set();
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}

/**
 * Starts `n` herald nodes on REDIS_URL (flushed first) with the `sites` YAML (list items under `sites:`), each
 * with `cluster.node_url` set to its own address and `node_ttl_ms` of `nodeTtlMs`, and the balancer in front.
 * `server` adds YAML lines under `server:` (indented by 2). Before it returns, it waits until every node forwards
 * polling requests to every other (`formedInMs`; a peer learns of a new node at its own next beat). Returns
 * { nodes, balancer, formedInMs, node(i), addNode(), kill(i), alive(i), live(), logs(), stop() }.
 */
export async function startCluster({ n = 3, sites, server = "", nodeTtlMs = 2000, flush = true }) {
  await requireRedis();
  if (flush) await redisCommands([["FLUSHDB"]]);
  const ports = await freePorts(n);
  const configFor = (port) => `
server:
  redis_url: ${REDIS_URL}
  cluster:
    node_url: http://127.0.0.1:${port}
    node_ttl_ms: ${nodeTtlMs}
${server}
sites:${sites}
`;
  const killed = new Set();
  const nodes = [];
  const extra = [];
  let balancer;
  let formedInMs;
  try {
    for (const port of ports) nodes.push(await startGateway({ configYaml: configFor(port), port }));
    balancer = await startBalancer(nodes.map((g) => g.url));
    formedInMs = await awaitFormed(nodes, nodeTtlMs + 2000);
  } catch (err) {
    await Promise.allSettled(nodes.map((g) => g.stop()));
    throw err;
  }
  const cluster = {
    nodes,
    balancer,
    /** How long until every node could forward to every other (null: never within the bound). */
    formedInMs,
    /** Starts one more node on the same database (not behind the balancer); stopped with the others. */
    async addNode() {
      const [port] = await freePorts(1);
      const g = await startGateway({ configYaml: configFor(port), port });
      extra.push(g);
      return g;
    },
    node: (i) => nodes[i],
    alive: (i) => !killed.has(i),
    live: () => nodes.filter((_, i) => !killed.has(i)),
    /** SIGKILL node i: no goodbye to Redis, its peers or its clients. */
    async kill(i) {
      killed.add(i);
      await nodes[i].kill();
    },
    /** The tail of every node's output and of the balancer's log, for failure messages. */
    logs(chars = 4000) {
      const trail = balancer.log.slice(-40).map((e) => JSON.stringify(e)).join("\n");
      return nodes
        .map((g, i) => `--- node ${i} (${g.url})${killed.has(i) ? " [killed]" : ""} ---\n${g.output().slice(-chars)}`)
        .concat(`--- balancer: hits ${JSON.stringify(balancer.hits)}, upgrades ${JSON.stringify(balancer.upgrades)}, ` +
          `refused ${JSON.stringify(balancer.refused)}; its last requests ---\n${trail}`)
        .join("\n");
    },
    async stop() {
      await balancer?.close();
      const results = await Promise.allSettled([
        ...nodes.map((g, i) => (killed.has(i) ? g.stop().catch(() => {}) : g.stop())),
        ...extra.map((g) => g.stop()),
      ]);
      const failed = results.find((r) => r.status === "rejected");
      if (failed) throw failed.reason;
    },
  };
  return cluster;
}

/** Opens an Engine.IO v4 polling session on `base`; resolves its sid. */
export async function openPolling(base) {
  const res = await fetch(`${base}/socket.io/?EIO=4&transport=polling`, { signal: AbortSignal.timeout(3000) });
  const text = await res.text();
  const m = /"sid":"([^"]+)"/.exec(text);
  if (res.status !== 200 || !m) throw new Error(`handshake on ${base}: ${res.status} ${text}`);
  return m[1];
}

/** POSTs Engine.IO packets `body` for session `sid` to `base`; resolves the status. */
export async function postPolling(base, sid, body) {
  const res = await fetch(`${base}/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`, {
    method: "POST",
    headers: { "Content-Type": "text/plain;charset=UTF-8" },
    body,
    signal: AbortSignal.timeout(3000),
  });
  await res.text();
  return res.status;
}

/**
 * Waits until every node forwards a polling request for a session of every other node (a peer learns of a node
 * from the registry at its own beat), probing with a noop packet on a session opened for the purpose. Never
 * throws: resolves the time it took, or null after `ms` (a build without forwarding: the tests then say what
 * fails).
 */
async function awaitFormed(nodes, ms) {
  const started = Date.now();
  const sids = [];
  try {
    for (const g of nodes) sids.push(await openPolling(g.url));
    const pending = new Set();
    nodes.forEach((_, j) => nodes.forEach((_, i) => i !== j && pending.add(`${i}>${j}`)));
    while (pending.size && Date.now() - started < ms) {
      for (const pair of [...pending]) {
        const [i, j] = pair.split(">").map(Number);
        if ((await postPolling(nodes[i].url, sids[j], "6").catch(() => 0)) === 200) pending.delete(pair);
      }
      if (pending.size) await new Promise((r) => setTimeout(r, 50));
    }
    return pending.size ? null : Date.now() - started;
  } catch {
    return null;
  } finally {
    await Promise.allSettled(sids.map((sid, j) => postPolling(nodes[j].url, sid, "1")));
  }
}

/**
 * Runs `fn`; when it throws, the error's message gets the nodes' logs appended, so a failure shows what herald
 * said. Use inside each test: `it("…", () => withLogs(cluster, async () => { … }))`.
 */
export async function withLogs(cluster, fn) {
  try {
    return await fn();
  } catch (err) {
    if (cluster && err && typeof err === "object" && !err.withLogs) {
      err.withLogs = true;
      try {
        const logs = `\n\nherald logs:\n${cluster.logs()}`;
        err.message += logs;
        if (typeof err.stack === "string") err.stack += logs;
      } catch {}
    }
    throw err;
  }
}
