// Cluster mode with real clients: three `herald` processes on the real Redis (a database of their own,
// HERALD_TEST_REDIS_DB, default 14, flushed at the start) behind a non-sticky round-robin balancer started by the
// test (balancer.mjs: per request, WebSocket upgrades too).
//
// NEEDS REDIS on 127.0.0.1:6379. Without it these tests FAIL (they never skip), saying how to start it:
//   redis-server --daemonize yes --save '' --appendonly no     (or: bash scripts/services.sh)
//
// - a publish on one node reaches the clients of every node once: shared room, `all`, a socket id on another
//   node, `except` a room and a socket id on another node, `volatile`;
// - the sockets API on any node sees every node: listing (with `?room=`), a room join/leave and a disconnect
//   sent to a node that does not hold the socket;
// - polling-only clients through the balancer (their requests spread over the nodes) connect, receive and emit
//   (mailbox acks); an upgrading client ends on WebSocket, also when the upgrade lands on another node;
// - connection-state recovery (socket.io-client 4.x) on another node after a transport cut, and after
//   `kill -9` of the client's node (reconnecting through the balancer, which skips the dead node), also with the
//   client's own reconnection while publishes race it;
// - a socket recovered from a killed node recovers again later (after the dead node was reaped and the
//   site's window passed);
// - a mailbox device of a node killed with -9 gets everything on another node; after `node_ttl_ms` the dead
//   node's sockets leave every listing and a survivor tells `updateUserUrl` that its users left;
// - forming: every node forwards to every other (startCluster waits for it), and a node that just started is
//   reachable through its peers at once.
//
// Each top-level `describe` starts its own cluster (all but the first kill a node). Site and user names are unique
// per run.
// Environment: HERALD_GATEWAY_BIN (gateway-helpers.mjs), HERALD_LOG=1 to see the nodes' output, which is also
// appended to every failure.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { io } from "socket.io-client";
import { api, craftJwt } from "./gateway-helpers.mjs";
import { openPolling, postPolling, redisCommands, runId, startCluster, withLogs } from "./cluster-helpers.mjs";
import { JWT_SECRET, KEY, device, devicesOf, eventsOf, settled, siteYaml } from "./mailbox-helpers.mjs";
import { Clients, QUIET_MS, STEP_TIMEOUT_MS, nextEvent, record, sleep, until, waitConnected } from "./util.mjs";

const NODE_TTL_MS = 2000;
const run = runId();
const clients = new Clients();
afterEach(() => clients.closeAll());

/**
 * A socket.io 4.x client of `site` at `base` (a node or the balancer); websocket only unless told. Closed after
 * the test, or by `owner.closeAll()` (for clients a describe shares between its tests).
 */
function client(base, site, opts = {}, owner = clients) {
  return owner.add(
    io(`${base}/${site}`, {
      forceNew: true,
      reconnection: false,
      timeout: STEP_TIMEOUT_MS,
      transports: ["websocket"],
      ...opts,
    }),
  );
}

/** A token of the JWT site naming `rooms`. */
function token(sub, rooms) {
  const now = Math.floor(Date.now() / 1000);
  return craftJwt("HS256", { sub, rooms, iat: now, exp: now + 3600 }, JWT_SECRET);
}

/** Every `event` the socket gets, with its raw arguments (a logged packet's recovery offset last). */
function rawRecord(socket, event) {
  const got = [];
  socket.on(event, (...args) => got.push(args));
  return got;
}

async function publish(base, site, body) {
  const res = await api(base, "POST", `/api/v1/sites/${site}/publish`, { key: KEY, body });
  assert.equal(res.status, 200, `publish ${JSON.stringify(body)} on ${base}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

async function listIds(base, site, room) {
  const q = room === undefined ? "" : `?room=${encodeURIComponent(room)}`;
  const res = await api(base, "GET", `/api/v1/sites/${site}/sockets${q}`, { key: KEY });
  assert.equal(res.status, 200, `GET /sockets${q} on ${base}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.sockets.map((s) => s.id).sort();
}

async function listing(base, site) {
  const res = await api(base, "GET", `/api/v1/sites/${site}/sockets`, { key: KEY });
  assert.equal(res.status, 200, `GET /sockets on ${base}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.sockets;
}

/**
 * Waits until the listing of `site` on `base` (optionally `?room=`) is exactly `ids`, from every node (an answer
 * marked `partial`, a peer that did not answer, does not count).
 */
async function awaitListing(base, site, ids, what, { room, ms = STEP_TIMEOUT_MS } = {}) {
  const want = JSON.stringify([...ids].sort());
  const q = room === undefined ? "" : `?room=${encodeURIComponent(room)}`;
  let last;
  try {
    await until(async () => {
      last = await api(base, "GET", `/api/v1/sites/${site}/sockets${q}`, { key: KEY });
      return last.status === 200 && !last.body.partial && JSON.stringify(last.body.sockets.map((s) => s.id).sort()) === want;
    }, ms, what);
  } catch {
    assert.fail(`${what}: GET /sockets${q} on ${base} answered ${last?.status} ${JSON.stringify(last?.body)}, ` +
      `expected the ids ${want} (within ${ms} ms)`);
  }
}

/**
 * Waits until every client named in `expected` got as many values as expected, then listens QUIET_MS more, and
 * checks each client's values exactly (so a duplicate or a stray delivery fails). `got`: name → recorded args.
 */
async function expectExactly(got, expected, what) {
  const names = Object.keys(got);
  const values = () => Object.fromEntries(names.map((n) => [n, got[n].map((a) => a[0])]));
  try {
    await until(() => names.every((n) => got[n].length >= (expected[n]?.length ?? 0)), STEP_TIMEOUT_MS, what);
  } catch {
    assert.fail(`${what}: expected ${JSON.stringify(expected)} within ${STEP_TIMEOUT_MS} ms, got ${JSON.stringify(values())}`);
  }
  await sleep(QUIET_MS);
  const want = Object.fromEntries(names.map((n) => [n, expected[n] ?? []]));
  assert.deepEqual(values(), want, `${what}: each client gets its deliveries once, and no one else`);
}

// ---------------------------------------------------------------------------------------------------------------

describe("three nodes behind a round-robin balancer", { timeout: 300_000 }, () => {
  let cluster;
  const PUB = `pub_${run}`; // public site, public channel "lobby"
  const JWT = `jwt_${run}`; // JWT site, rooms from the token
  const MB = `mb_${run}`; // mailbox site (user rooms user_<id>)
  const user = (n) => `${run}u${n}`;

  before(async () => {
    cluster = await startCluster({
      nodeTtlMs: NODE_TTL_MS,
      sites: `
  - name: ${PUB}
    api_keys: [${KEY}]
    public_channel: lobby
  - name: ${JWT}
    api_keys: [${KEY}]
    auth: {kind: jwt, algorithm: HS256, secret: "${JWT_SECRET}"}
${siteYaml(MB)}`,
    });
  });
  after(async () => {
    clients.closeAll();
    await cluster?.stop();
  });
  const node = (i) => cluster.node(i).url;

  describe("forming", () => {
    it("every node forwards polling requests for the sessions of every other", { timeout: 30_000 }, () =>
      withLogs(cluster, async () => {
        assert.notEqual(cluster.formedInMs, null,
          `within ${NODE_TTL_MS + 2000} ms of the start, some node still answered a noop POST for another node's session with an error`);
      }));

    it("a node that just started is reachable through its peers at once", { timeout: 30_000 }, () =>
      withLogs(cluster, async () => {
        // The registry's start is one beat "so peers see it before it serves"; a peer that only learns of it at
        // its own next beat (every node_ttl_ms / 3) answers its sessions' requests 400 "Session ID unknown"
        // meanwhile: polling clients whose requests land elsewhere fail, and retry.
        const fresh = await cluster.addNode();
        const sid = await openPolling(fresh.url);
        const statuses = [];
        for (const i of [0, 1, 2]) statuses.push(await postPolling(node(i), sid, "6"));
        await postPolling(fresh.url, sid, "1");
        assert.deepEqual(statuses, [200, 200, 200],
          "a noop POST for the new node's first session, sent through each older node right after the new one started");
      }));
  });

  describe("a publish on one node reaches the clients of every node, once", () => {
    // c0, c1, c2: one client connected directly to each node, all in "news", each in its own g<i>.
    let c;
    const shared = new Clients();
    before(async () => {
      c = [0, 1, 2].map((i) => client(node(i), JWT, { auth: { token: token(`c${i}`, ["news", `g${i}`]) } }, shared));
      await Promise.all(c.map((s) => waitConnected(s)));
    });
    after(() => shared.closeAll());
    const recordAll = (event) => ({ c0: record(c[0], event), c1: record(c[1], event), c2: record(c[2], event) });

    it("a shared room (several rooms: once per client)", { timeout: 30_000 }, () => withLogs(cluster, async () => {
      const got = recordAll("room");
      const res = await publish(node(0), JWT, { rooms: ["news"], event: "room", args: [1] });
      assert.deepEqual(res, { matched: 1, queued: 0, online: 0 }, "matched counts the sockets of the node that took it");
      await expectExactly(got, { c0: [1], c1: [1], c2: [1] }, "rooms [news] published on node 0");
      await publish(node(1), JWT, { rooms: ["news", "g1", "g2"], event: "room", args: [2] });
      await expectExactly(got, { c0: [1, 2], c1: [1, 2], c2: [1, 2] }, "rooms [news, g1, g2] published on node 1");
      await publish(node(2), JWT, { rooms: ["g0"], event: "room", args: [3] });
      await expectExactly(got, { c0: [1, 2, 3], c1: [1, 2], c2: [1, 2] }, "rooms [g0] published on node 2");
    }));

    it("all", { timeout: 30_000 }, () => withLogs(cluster, async () => {
      const got = recordAll("everyone");
      const res = await publish(node(1), JWT, { all: true, event: "everyone", args: [{ n: 1 }] });
      assert.equal(res.matched, 1, `matched on node 1: ${JSON.stringify(res)}`);
      await expectExactly(got, { c0: [{ n: 1 }], c1: [{ n: 1 }], c2: [{ n: 1 }] }, "all, published on node 1");
    }));

    it("a socket id held by another node", { timeout: 30_000 }, () => withLogs(cluster, async () => {
      const got = recordAll("direct");
      const res = await publish(node(0), JWT, { sockets: [c[2].id], event: "direct", args: [7] });
      assert.equal(res.matched, 0, `no socket of node 0 matched: ${JSON.stringify(res)}`);
      await expectExactly(got, { c2: [7] }, "sockets [c2] published on node 0");
      await publish(node(2), JWT, { sockets: [c[0].id, c[1].id], event: "direct", args: [8] });
      await expectExactly(got, { c0: [8], c1: [8], c2: [7] }, "sockets [c0, c1] published on node 2");
    }));

    it("except a room", { timeout: 30_000 }, () => withLogs(cluster, async () => {
      const got = recordAll("but");
      await publish(node(0), JWT, { rooms: ["news"], except: ["g1"], event: "but", args: [1] });
      await expectExactly(got, { c0: [1], c2: [1] }, "news except g1 (node 1's client), published on node 0");
      await publish(node(1), JWT, { all: true, except: ["g0", "g2"], event: "but", args: [2] });
      await expectExactly(got, { c0: [1], c1: [2], c2: [1] }, "all except g0 and g2, published on node 1");
    }));

    it("except a socket id held by another node", { timeout: 30_000 }, () => withLogs(cluster, async () => {
      const got = recordAll("notyou");
      await publish(node(0), JWT, { all: true, except: [c[2].id], event: "notyou", args: [1] });
      await expectExactly(got, { c0: [1], c1: [1] }, "all except c2 (on node 2), published on node 0");
      await publish(node(2), JWT, { rooms: ["news"], except: [c[1].id, c[0].id], event: "notyou", args: [2] });
      await expectExactly(got, { c0: [1], c1: [1], c2: [2] }, "news except c0 and c1, published on node 2");
    }));

    it("volatile", { timeout: 30_000 }, () => withLogs(cluster, async () => {
      // non-string args: socket.io-client takes a trailing string for a recovery offset, and a volatile packet
      // carries none
      const got = recordAll("vol");
      const raw = rawRecord(c[1], "vol");
      await publish(node(2), JWT, { rooms: ["news"], event: "vol", args: [{ v: 1 }], volatile: true });
      await expectExactly(got, { c0: [{ v: 1 }], c1: [{ v: 1 }], c2: [{ v: 1 }] }, "volatile to news, published on node 2");
      assert.deepEqual(raw, [[{ v: 1 }]], "a volatile packet carries no recovery offset");
    }));
  });

  describe("the sockets API on any node sees every node", () => {
    let p;
    const shared = new Clients();
    before(async () => {
      p = [0, 1, 2].map((i) => client(node(i), PUB, {}, shared));
      await Promise.all(p.map((s) => waitConnected(s)));
    });
    after(() => shared.closeAll());

    it("GET /sockets on each node lists the sockets of all nodes, with their rooms; ?room= too", { timeout: 30_000 }, () =>
      withLogs(cluster, async () => {
        const ids = p.map((s) => s.id);
        for (const i of [0, 1, 2]) {
          await awaitListing(node(i), PUB, ids, `node ${i} lists the sockets of the three nodes`);
          const byId = Object.fromEntries((await listing(node(i), PUB)).map((s) => [s.id, s]));
          for (const s of p) {
            assert.deepEqual(byId[s.id].rooms, [s.id, "lobby"], `rooms of ${s.id} as node ${i} lists them`);
          }
          assert.deepEqual(await listIds(node(i), PUB, "lobby"), [...ids].sort(), `?room=lobby on node ${i}`);
          assert.deepEqual(await listIds(node(i), PUB, p[1].id), [p[1].id], `?room=<node 1's socket id> on node ${i}`);
          assert.deepEqual(await listIds(node(i), PUB, "nobody-here"), [], `?room=nobody-here on node ${i}`);
        }
      }));

    it("joins and leaves rooms through a node that does not hold the socket", { timeout: 30_000 }, () =>
      withLogs(cluster, async () => {
        const got = { p0: record(p[0], "vip"), p1: record(p[1], "vip"), p2: record(p[2], "vip") };
        const join = await api(node(0), "POST", `/api/v1/sites/${PUB}/sockets/${p[2].id}/rooms`, {
          key: KEY,
          body: { join: ["vip"] },
        });
        assert.deepEqual(join, { status: 200, body: { rooms: [p[2].id, "lobby", "vip"] } }, "join on node 0, socket on node 2");
        await awaitListing(node(1), PUB, [p[2].id], "node 1 lists vip's member", { room: "vip" });
        await publish(node(1), PUB, { rooms: ["vip"], event: "vip", args: [1] });
        await expectExactly(got, { p2: [1] }, "vip published on node 1");

        const leave = await api(node(1), "POST", `/api/v1/sites/${PUB}/sockets/${p[2].id}/rooms`, {
          key: KEY,
          body: { leave: ["vip"] },
        });
        assert.deepEqual(leave, { status: 200, body: { rooms: [p[2].id, "lobby"] } }, "leave on node 1, socket on node 2");
        await awaitListing(node(0), PUB, [], "vip is empty, seen from node 0", { room: "vip" });
        await publish(node(0), PUB, { rooms: ["vip"], event: "vip", args: [2] });
        await expectExactly(got, { p2: [1] }, "vip published after the leave");
      }));

    it("disconnects a socket through a node that does not hold it", { timeout: 30_000 }, () =>
      withLogs(cluster, async () => {
        const id = p[1].id;
        const gone = nextEvent(p[1], "disconnect");
        gone.catch(() => {}); // awaited below; a failure before that must not become an unhandled rejection
        const del = await api(node(2), "DELETE", `/api/v1/sites/${PUB}/sockets/${id}`, { key: KEY });
        assert.equal(del.status, 204, `DELETE on node 2 of node 1's socket: ${JSON.stringify(del)}`);
        const [reason] = await gone;
        assert.equal(reason, "io server disconnect");
        assert.ok(p[0].connected && p[2].connected, "the others stay connected");
        for (const i of [0, 1, 2]) {
          await awaitListing(node(i), PUB, [p[0].id, p[2].id], `node ${i} no longer lists the disconnected socket`);
        }
        const again = await api(node(0), "DELETE", `/api/v1/sites/${PUB}/sockets/${id}`, { key: KEY });
        assert.deepEqual(again, { status: 404, body: { error: `unknown socket '${id}'` } }, "a socket no node holds");
        const join = await api(node(0), "POST", `/api/v1/sites/${PUB}/sockets/${id}/rooms`, { key: KEY, body: { join: ["x"] } });
        assert.equal(join.status, 404, `joining a socket no node holds: ${JSON.stringify(join)}`);
      }));
  });

  describe("clients through the balancer", () => {
    afterEach(() => cluster.balancer.routeUpgrades(null));
    it("a polling-only client connects, receives and stays up while its requests spread over the nodes", { timeout: 30_000 }, () =>
      withLogs(cluster, async () => {
        const { balancer } = cluster;
        const s = client(balancer.url, PUB, { transports: ["polling"] });
        const got = record(s, "m");
        await waitConnected(s);
        const sid = s.io.engine.id;
        assert.equal(s.io.engine.transport.name, "polling");
        for (let i = 0; i < 6; i++) {
          const body = i % 2 ? { sockets: [s.id], event: "m", args: [i] } : { rooms: ["lobby"], event: "m", args: [i] };
          await publish(node(i % 3), PUB, body);
          await until(() => got.length === i + 1, STEP_TIMEOUT_MS, `message ${i}, published on node ${i % 3}`)
            .catch(() => assert.fail(`polling client through the balancer: expected message ${i}, got ${JSON.stringify(got)}`));
        }
        assert.deepEqual(got.map((a) => a[0]), [0, 1, 2, 3, 4, 5]);
        const backends = new Set(balancer.log.filter((e) => e.sid === sid).map((e) => e.backend));
        assert.ok(
          backends.size >= 2,
          `the session's requests should reach several nodes: ${JSON.stringify(balancer.log.filter((e) => e.sid === sid))}`,
        );
        assert.ok(s.connected, "still connected");
        assert.equal(s.io.engine.transport.name, "polling");
      }));

    it("a polling-only mailbox device emits through the balancer: its acks reach the owner node", { timeout: 30_000 }, () =>
      withLogs(cluster, async () => {
        const { balancer } = cluster;
        const id = user(1);
        const phone = device(clients, balancer.url, { site: MB, id, deviceId: "phone", transports: ["polling"] });
        await waitConnected(phone);
        await settled(phone);
        for (let i = 0; i < 5; i++) {
          const res = await api(node(i % 3), "POST", `/api/v1/sites/${MB}/publish`, {
            key: KEY,
            body: { rooms: [`user_${id}`], event: "n", args: [i] },
          });
          assert.equal(res.status, 200, JSON.stringify(res.body));
          assert.equal(res.body.queued, 1, `queued for the one device: ${JSON.stringify(res.body)}`);
        }
        await until(() => eventsOf(phone, "n").length === 5, STEP_TIMEOUT_MS, "5 live entries")
          .catch(() => assert.fail(`expected 5 live entries, got ${JSON.stringify(phone.log.map((e) => [e.event, e.args]))}`));
        assert.deepEqual(eventsOf(phone, "n"), [[0], [1], [2], [3], [4]], "in order");
        assert.ok(phone.log.filter((e) => e.event === "n").every((e) => e.ackedAt), "each asked for an ack, acked at once");
        let pending;
        await until(async () => {
          pending = (await devicesOf(node(2), id, MB)).phone?.pending;
          return pending === 0;
        }, STEP_TIMEOUT_MS, "acks").catch(() => assert.fail(`the acks (client emits over polling) should clear the mailbox; pending ${pending}`));
        const sid = phone.io.engine.id;
        const posts = balancer.log.filter((e) => e.sid === sid && e.method === "POST");
        assert.ok(new Set(posts.map((e) => e.backend)).size >= 2, `POSTs spread: ${JSON.stringify(posts)}`);
      }));

    for (const [shift, where] of [[1, "another node than the session's owner"], [0, "the owner"]]) {
      it(`an upgrading client ends on WebSocket and receives (upgrade on ${where})`, { timeout: 30_000 }, () =>
        withLogs(cluster, async () => {
          const { balancer } = cluster;
          // the upgrade goes to the node after the session's owner (shift 1), or to the owner (shift 0)
          balancer.routeUpgrades((sid) => {
            const owner = balancer.ownerOf(sid);
            return owner === undefined ? undefined : owner + shift;
          });
          const s = client(balancer.url, PUB, { transports: ["polling", "websocket"] });
          const got = record(s, "m");
          await waitConnected(s);
          const sid = s.io.engine.id;
          const trail = () => JSON.stringify(balancer.log.filter((e) => e.sid === sid || e.opened === sid));
          await until(() => s.io.engine.transport.name === "websocket", STEP_TIMEOUT_MS, "the upgrade to websocket")
            .catch(() => assert.fail(`still on ${s.io.engine.transport.name}; balancer log of the session ${trail()}`));
          const owner = balancer.ownerOf(sid);
          const upgrade = balancer.log.find((e) => e.kind === "upgrade" && e.sid === sid)?.backend;
          assert.ok(owner !== undefined, `the balancer saw the handshake: ${trail()}`);
          assert.equal(upgrade, (owner + shift) % 3, `the upgrade went to node ${(owner + shift) % 3}: ${trail()}`);
          await publish(node(0), PUB, { sockets: [s.id], event: "m", args: [1] });
          await publish(node(2), PUB, { rooms: ["lobby"], event: "m", args: [2] });
          await until(() => got.length === 2, STEP_TIMEOUT_MS, "2 messages over websocket")
            .catch(() => assert.fail(`expected 2 messages, got ${JSON.stringify(got)}; session ${trail()}`));
          assert.deepEqual(got.map((a) => a[0]), [1, 2]);
          assert.equal(s.io.engine.transport.name, "websocket");
        }));
    }
  });

  describe("connection-state recovery on another node after a transport cut", () => {
    for (const [transport, via] of [["websocket", "node 2"], ["polling", "the balancer"]]) {
      it(`a ${transport} client of node 0 comes back on ${via} with its id, rooms and every missed packet once, in order`, { timeout: 30_000 }, () =>
        withLogs(cluster, async () => {
          const s = client(node(0), PUB, { transports: [transport] });
          const got = rawRecord(s, "m");
          await waitConnected(s);
          assert.equal(s.recovered, false);
          assert.ok(s._pid, "the CONNECT answer carries a pid");
          const id = s.id;
          const joined = await api(node(2), "POST", `/api/v1/sites/${PUB}/sockets/${id}/rooms`, { key: KEY, body: { join: ["vip"] } });
          assert.equal(joined.status, 200, JSON.stringify(joined));
          await publish(node(1), PUB, { rooms: ["lobby"], event: "m", args: [1] });
          await until(() => got.length === 1, STEP_TIMEOUT_MS, "the first message");
          assert.equal(typeof got[0][1], "string", "a logged packet carries its offset last");

          s.io.engine.close();
          for (const i of [0, 1]) {
            await until(async () => !(await listIds(node(i), PUB)).includes(id), STEP_TIMEOUT_MS, `node ${i} to see the cut`);
          }
          await publish(node(1), PUB, { rooms: ["lobby"], event: "m", args: [2] });
          await publish(node(2), PUB, { rooms: ["vip"], event: "m", args: [3] });
          await publish(node(0), PUB, { sockets: [id], event: "m", args: [4] });
          await publish(node(1), PUB, { all: true, except: [id], event: "m", args: ["not for you"] });
          await publish(node(1), PUB, { rooms: ["lobby"], event: "m", args: [{ volatile: true }], volatile: true });
          await publish(node(2), PUB, { rooms: ["lobby"], event: "m", args: [5] });

          s.io.uri = transport === "websocket" ? node(2) : cluster.balancer.url;
          s.connect();
          await waitConnected(s);
          assert.equal(s.recovered, true, "recovered on another node");
          assert.equal(s.id, id, "the socket keeps its id");
          await until(() => got.length >= 5, STEP_TIMEOUT_MS, "the missed packets")
            .catch(() => assert.fail(`expected the 4 missed packets, got ${JSON.stringify(got)}`));
          await publish(node(1), PUB, { rooms: ["vip"], event: "m", args: [6] });
          await until(() => got.length >= 6, STEP_TIMEOUT_MS, "a live packet after the recovery")
            .catch(() => assert.fail(`expected a live vip packet after the recovery, got ${JSON.stringify(got)}`));
          await sleep(QUIET_MS);
          assert.deepEqual(got.map((a) => a[0]), [1, 2, 3, 4, 5, 6], "every missed packet once, in order, then live ones");
          const offsets = got.map((a) => a.at(-1));
          assert.ok(offsets.every((o) => typeof o === "string"), `offsets: ${JSON.stringify(offsets)}`);
          assert.equal(new Set(offsets).size, offsets.length, "each packet once");
          const me = (await listing(node(0), PUB)).find((x) => x.id === id);
          assert.deepEqual(me?.rooms, [id, "lobby", "vip"], "the rooms come back, API joins included");
        }));
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("recovery after kill -9 of the client's node", { timeout: 120_000 }, () => {
  let cluster;
  const PUB = `kpub_${run}`;
  before(async () => {
    cluster = await startCluster({
      nodeTtlMs: NODE_TTL_MS,
      sites: `
  - name: ${PUB}
    api_keys: [${KEY}]
    public_channel: lobby`,
    });
  });
  after(async () => {
    clients.closeAll();
    await cluster?.stop();
  });
  const node = (i) => cluster.node(i).url;

  it("websocket and polling clients of the killed node recover through the balancer, which skips the dead node", { timeout: 60_000 }, () =>
    withLogs(cluster, async () => {
      const transports = ["websocket", "polling"];
      const socks = transports.map((t) => client(node(0), PUB, { transports: [t] }));
      const got = socks.map((s) => rawRecord(s, "m"));
      await Promise.all(socks.map((s) => waitConnected(s)));
      const ids = socks.map((s) => s.id);
      for (const id of ids) {
        const res = await api(node(1), "POST", `/api/v1/sites/${PUB}/sockets/${id}/rooms`, { key: KEY, body: { join: ["vip"] } });
        assert.equal(res.status, 200, JSON.stringify(res));
      }
      await publish(node(1), PUB, { rooms: ["lobby"], event: "m", args: [1] });
      await until(() => got.every((g) => g.length === 1), STEP_TIMEOUT_MS, "the first message on both");

      const gone = socks.map((s) => nextEvent(s, "disconnect"));
      for (const g of gone) g.catch(() => {}); // awaited below
      await cluster.kill(0);
      // the websocket client sees its connection close at once; the polling one when its pending GET fails
      const reasons = (await Promise.all(gone)).map(([r]) => r);
      for (const r of reasons) assert.ok(["transport close", "transport error", "ping timeout"].includes(r), `reason ${r}`);

      await publish(node(1), PUB, { rooms: ["lobby"], event: "m", args: [2] });
      await publish(node(2), PUB, { rooms: ["vip"], event: "m", args: [3] });
      for (const id of ids) await publish(node(1), PUB, { sockets: [id], event: "m", args: [4] });
      await publish(node(2), PUB, { all: true, except: ids, event: "m", args: ["not for you"] });
      await publish(node(2), PUB, { rooms: ["lobby"], event: "m", args: [5] });

      for (const [k, s] of socks.entries()) {
        s.io.uri = cluster.balancer.url;
        cluster.balancer.setNext(0); // the dead node first: the balancer must skip it
        s.connect();
        await waitConnected(s).catch((err) => assert.fail(`${transports[k]} client reconnecting through the balancer: ${err.message}`));
        assert.equal(s.recovered, true, `${transports[k]} client recovered after its node died`);
        assert.equal(s.id, ids[k], `${transports[k]} client keeps its id`);
      }
      assert.ok(cluster.balancer.refused[0] >= 1, `the balancer met the dead node: refused ${JSON.stringify(cluster.balancer.refused)}`);
      await publish(node(2), PUB, { rooms: ["vip"], event: "m", args: [6] });
      for (const [k, g] of got.entries()) {
        await until(() => g.length >= 6, STEP_TIMEOUT_MS, "missed and live packets")
          .catch(() => assert.fail(`${transports[k]} client: expected 6 packets, got ${JSON.stringify(g)}`));
      }
      await sleep(QUIET_MS);
      for (const [k, g] of got.entries()) {
        assert.deepEqual(g.map((a) => a[0]), [1, 2, 3, 4, 5, 6], `${transports[k]} client: missed packets once, in order`);
      }
      for (const i of [1, 2]) {
        const listed = await listing(node(i), PUB);
        for (const id of ids) {
          assert.deepEqual(listed.find((x) => x.id === id)?.rooms, [id, "lobby", "vip"], `node ${i} lists ${id} with its rooms`);
        }
      }
    }));
});

// ---------------------------------------------------------------------------------------------------------------

describe("clients of the balancer whose node is killed with -9 reconnect by themselves", { timeout: 120_000 }, () => {
  let cluster;
  const PUB = `rpub_${run}`;
  before(async () => {
    cluster = await startCluster({
      nodeTtlMs: NODE_TTL_MS,
      sites: `
  - name: ${PUB}
    api_keys: [${KEY}]
    public_channel: lobby`,
    });
  });
  after(async () => {
    clients.closeAll();
    await cluster?.stop();
  });
  const node = (i) => cluster.node(i).url;

  it("an upgrading and a polling-only client recover, publishes racing their reconnection", { timeout: 60_000 }, () =>
    withLogs(cluster, async () => {
      const { balancer } = cluster;
      const kinds = [["polling", "websocket"], ["polling"]];
      // both sessions open on node 0 (their handshakes are routed there); everything else goes round robin
      balancer.routeRequests(({ method, sid }) => (method === "GET" && !sid ? 0 : undefined));
      const socks = kinds.map((transports) =>
        client(balancer.url, PUB, {
          transports,
          reconnection: true,
          reconnectionDelay: 100,
          reconnectionDelayMax: 400,
          randomizationFactor: 0,
        }),
      );
      const got = socks.map((s) => rawRecord(s, "m"));
      await Promise.all(socks.map((s) => waitConnected(s)));
      await until(() => socks[0].io.engine.transport.name === "websocket", STEP_TIMEOUT_MS, "the upgrade");
      balancer.routeRequests(null);
      const ids = socks.map((s) => s.id);
      for (const s of socks) {
        assert.equal(balancer.ownerOf(s.io.engine.id), 0, `session of ${s.id} opened on node 0`);
        const res = await api(node(2), "POST", `/api/v1/sites/${PUB}/sockets/${s.id}/rooms`, { key: KEY, body: { join: ["vip"] } });
        assert.equal(res.status, 200, JSON.stringify(res));
      }
      await publish(node(1), PUB, { rooms: ["lobby"], event: "m", args: [1] });
      await until(() => got.every((g) => g.length === 1), STEP_TIMEOUT_MS, "the first message on both");

      const back = socks.map((s) => nextEvent(s, "connect", STEP_TIMEOUT_MS * 2));
      for (const b of back) b.catch(() => {}); // awaited below
      await cluster.kill(0);
      await publish(node(1), PUB, { rooms: ["lobby"], event: "m", args: [2] });
      await publish(node(2), PUB, { rooms: ["vip"], event: "m", args: [3] });
      for (const id of ids) await publish(node(1), PUB, { sockets: [id], event: "m", args: [4] });
      await publish(node(2), PUB, { all: true, except: ids, event: "m", args: ["not for you"] });
      for (const [k, b] of back.entries()) {
        await b.catch((err) => assert.fail(`${kinds[k].join("+")} client did not reconnect: ${err.message}`));
        assert.equal(socks[k].recovered, true, `${kinds[k].join("+")} client recovered`);
        assert.equal(socks[k].id, ids[k], `${kinds[k].join("+")} client keeps its id`);
      }
      await publish(node(1), PUB, { rooms: ["vip"], event: "m", args: [5] });
      for (const [k, g] of got.entries()) {
        await until(() => g.length >= 5, STEP_TIMEOUT_MS, "missed and live packets")
          .catch(() => assert.fail(`${kinds[k].join("+")} client: expected 5 packets, got ${JSON.stringify(g)}`));
      }
      await sleep(QUIET_MS);
      for (const [k, g] of got.entries()) {
        assert.deepEqual(g.map((a) => a[0]), [1, 2, 3, 4, 5], `${kinds[k].join("+")} client: each packet once, in order`);
      }
    }));
});

// ---------------------------------------------------------------------------------------------------------------

describe("a socket recovered from a node killed with -9 can recover again", { timeout: 120_000 }, () => {
  let cluster;
  const SHORT = `kshort_${run}`;
  const WINDOW_MS = 3000;
  before(async () => {
    cluster = await startCluster({
      nodeTtlMs: NODE_TTL_MS,
      sites: `
  - name: ${SHORT}
    api_keys: [${KEY}]
    public_channel: lobby
    recovery_window_ms: ${WINDOW_MS}`,
    });
  });
  after(async () => {
    clients.closeAll();
    await cluster?.stop();
  });
  const node = (i) => cluster.node(i).url;

  it("after the dead node is reaped and its window has passed, a cut still recovers", { timeout: 60_000 }, () =>
    withLogs(cluster, async () => {
      const s = client(node(0), SHORT);
      const got = rawRecord(s, "m");
      await waitConnected(s);
      const id = s.id;
      await publish(node(1), SHORT, { rooms: ["lobby"], event: "m", args: [1] });
      await until(() => got.length === 1, STEP_TIMEOUT_MS, "the first message");
      const gone = nextEvent(s, "disconnect");
      gone.catch(() => {});
      await cluster.kill(0);
      await gone;
      s.io.uri = cluster.balancer.url;
      s.connect();
      await waitConnected(s);
      assert.equal(s.recovered, true, "recovered after its node died");
      assert.equal(s.id, id);

      // A survivor reaps the dead node (its entry leaves the registry's `herald:{nodes}:all`), then the site's
      // window passes: the recovered socket is live, so its recovery record must not expire with the dead
      // node's sessions.
      await until(async () => (await redisCommands([["HLEN", "herald:{nodes}:all"]])).at(-1) === ":2",
        NODE_TTL_MS + STEP_TIMEOUT_MS, "the dead node reaped")
        .catch(() => assert.fail("the dead node should leave herald:{nodes}:all once a survivor reaped it"));
      await sleep(WINDOW_MS + 1000);
      assert.ok(s.connected, "still connected");
      await publish(node(1), SHORT, { rooms: ["lobby"], event: "m", args: [2] });
      await until(() => got.length === 2, STEP_TIMEOUT_MS, "a live message");

      s.io.engine.close();
      for (const i of [1, 2]) {
        await until(async () => !(await listIds(node(i), SHORT)).includes(id), STEP_TIMEOUT_MS, `node ${i} to see the cut`);
      }
      await publish(node(2), SHORT, { rooms: ["lobby"], event: "m", args: [3] });
      s.connect();
      await waitConnected(s);
      assert.equal(s.recovered, true, `recovered a second time, ${WINDOW_MS + 1000} ms after the dead node was reaped`);
      assert.equal(s.id, id, "keeps its id the second time too");
      await until(() => got.length >= 3, STEP_TIMEOUT_MS, "the packet missed during the second cut")
        .catch(() => assert.fail(`expected the packet missed during the second cut, got ${JSON.stringify(got)}`));
      await sleep(QUIET_MS);
      assert.deepEqual(got.map((a) => a[0]), [1, 2, 3]);
    }));
});

// ---------------------------------------------------------------------------------------------------------------

describe("a mailbox device of a node killed with -9", { timeout: 120_000 }, () => {
  let cluster, presence;
  const MB = `kmb_${run}`;
  const user = (n) => `${run}k${n}`;
  const puts = []; // every updateUserUrl call: { id, user: {last_connected|last_disconnected}, at }

  before(async () => {
    presence = http.createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        try {
          puts.push({ method: req.method, path: req.url, ...JSON.parse(body), at: Date.now() });
        } catch {
          puts.push({ method: req.method, path: req.url, raw: body, at: Date.now() });
        }
        res.writeHead(200, { "Content-Type": "application/json" }).end("{}");
      });
    });
    await new Promise((resolve) => presence.listen(0, "127.0.0.1", resolve));
    cluster = await startCluster({
      nodeTtlMs: NODE_TTL_MS,
      server: `  mailbox: {presence_debounce_ms: 300}`,
      sites: siteYaml(MB, `    update_user_url: "http://127.0.0.1:${presence.address().port}/users/:id"`),
    });
  });
  after(async () => {
    clients.closeAll();
    await cluster?.stop();
    presence?.closeAllConnections();
    await new Promise((resolve) => presence?.close(resolve));
  });
  const node = (i) => cluster.node(i).url;
  const presenceOf = (id, kind) => puts.filter((p) => p.id === id && p.user && kind in p.user);

  it("gets everything on another node; the dead node's sockets leave the listings; a survivor reports its users gone", { timeout: 60_000 }, () =>
    withLogs(cluster, async () => {
      const [u1, u2, u3, u4] = [user(1), user(2), user(3), user(4)];
      const online = async (i, id, opts = {}) => {
        const s = device(clients, node(i), { site: MB, id, deviceId: "phone", ...opts });
        await waitConnected(s);
        await settled(s);
        return s;
      };
      const d1 = await online(0, u1); // moves to another node after the kill
      const d3 = await online(0, u3); // never comes back
      const d2 = await online(1, u2); // on a survivor all along
      const d4 = await online(0, u4, { autoAck: false }); // gets an entry live, never acks it, comes back
      for (const id of [u1, u2, u3, u4]) {
        await until(() => presenceOf(id, "last_connected").length >= 1, STEP_TIMEOUT_MS, `last_connected of ${id}`);
      }
      const pub = (i, id, arg) => api(node(i), "POST", `/api/v1/sites/${MB}/publish`, {
        key: KEY,
        body: { rooms: [`user_${id}`], event: "n", args: [arg] },
      });
      const first = await pub(1, u1, "a");
      assert.deepEqual(first.body, { matched: 0, queued: 1, online: 0 }, "queued for u1's one device (on node 0)");
      await until(() => eventsOf(d1, "n").length === 1, STEP_TIMEOUT_MS, "a live entry on node 0");
      await until(async () => (await devicesOf(node(2), u1, MB)).phone?.pending === 0, STEP_TIMEOUT_MS, "its ack");
      await pub(2, u4, "x");
      await until(() => eventsOf(d4, "n").length === 1, STEP_TIMEOUT_MS, "a live entry for u4, left unacked");
      const [oldId1, oldId3] = [d1.id, d3.id];
      await awaitListing(node(2), MB, [d1.id, d2.id, d3.id, d4.id], "node 2 lists the four devices' sockets");

      const killedAt = Date.now();
      await cluster.kill(0);
      for (const arg of ["b", "c", "d"]) {
        const res = await pub(arg === "c" ? 2 : 1, u1, arg);
        assert.equal(res.status, 200, JSON.stringify(res.body));
        assert.equal(res.body.queued, 1, `entry ${arg} is queued for u1's device: ${JSON.stringify(res.body)}`);
      }

      // the same devices come back: u1's through the balancer (which skips the dead node), u4's on node 2
      cluster.balancer.setNext(0);
      const back = device(clients, cluster.balancer.url, { site: MB, id: u1, deviceId: "phone" });
      const back4 = device(clients, node(2), { site: MB, id: u4, deviceId: "phone" });
      await Promise.all([back, back4].map((s) => waitConnected(s).then(() => settled(s))));
      // The dead node's alive key expires node_ttl_ms after its last beat (every node_ttl_ms / 3): no survivor
      // reaps it before 2/3 of node_ttl_ms after the kill. Back before that, u1 and u4 are never reported gone.
      const backBeforeReap = Date.now() - killedAt < (NODE_TTL_MS * 2) / 3 - 100;
      const delivered = () => [...eventsOf(back, "_batch").flatMap(([page]) => page), ...eventsOf(back, "n").map((a) => ["n", ...a])];
      await until(() => delivered().length >= 3, STEP_TIMEOUT_MS, "the entries published while the device was away")
        .catch(() => assert.fail(`expected n b, c, d on the new node, got ${JSON.stringify(back.log.map((e) => [e.event, e.args]))}`));
      await sleep(QUIET_MS);
      assert.deepEqual(delivered(), [["n", "b"], ["n", "c"], ["n", "d"]], "everything once, in order, nothing acked again");
      await until(async () => (await devicesOf(node(1), u1, MB)).phone?.pending === 0, STEP_TIMEOUT_MS, "the replay's ack");
      const live = await pub(2, u1, "e");
      assert.equal(live.status, 200);
      await until(() => eventsOf(back, "n").some((a) => a[0] === "e"), STEP_TIMEOUT_MS, "a live entry after the move");
      // an entry delivered on the dead node but never acked comes again, on the node the device moves to
      await until(() => eventsOf(back4, "_batch").length === 1, STEP_TIMEOUT_MS, "u4's _batch")
        .catch(() => assert.fail(`expected u4's unacked entry again, got ${JSON.stringify(back4.log.map((e) => [e.event, e.args]))}`));
      assert.deepEqual(eventsOf(back4, "_batch")[0], [[["n", "x"]]]);

      // node_ttl_ms after the kill the dead node's sockets are gone from every survivor's listing
      for (const i of [1, 2]) {
        await awaitListing(node(i), MB, [back.id, d2.id, back4.id], `node ${i} drops the dead node's sockets (${oldId1}, ${oldId3})`, {
          ms: NODE_TTL_MS + STEP_TIMEOUT_MS,
        });
      }
      // u3 had its only socket on the dead node: a survivor reports it gone, once; its device counts as away
      await until(() => presenceOf(u3, "last_disconnected").length >= 1, NODE_TTL_MS + STEP_TIMEOUT_MS, "last_disconnected of u3")
        .catch(() => assert.fail(`expected a PUT last_disconnected for ${u3} after the kill; got ${JSON.stringify(puts)}`));
      const gone = presenceOf(u3, "last_disconnected")[0];
      assert.equal(gone.method, "PUT");
      assert.equal(gone.path, `/users/${u3}`);
      assert.match(gone.user.last_disconnected, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      assert.ok(gone.at >= killedAt, "reported after the kill");
      await until(async () => (await devicesOf(node(1), u3, MB)).phone?.connected === false, STEP_TIMEOUT_MS, "u3's device marked away");
      await sleep(1000);
      assert.equal(presenceOf(u3, "last_disconnected").length, 1, `one survivor reports u3: ${JSON.stringify(presenceOf(u3, "last_disconnected"))}`);
      // u2 never left, and u1 and u4 came back on survivors before the dead node could be reaped: none is
      // reported gone
      assert.deepEqual(presenceOf(u2, "last_disconnected"), [], "u2's node is alive");
      if (backBeforeReap) {
        assert.deepEqual(presenceOf(u1, "last_disconnected"), [], "u1 came back on another node");
        assert.deepEqual(presenceOf(u4, "last_disconnected"), [], "u4 came back on another node");
      }
      assert.ok(d2.connected, "u2's device stays connected");
    }));
});
