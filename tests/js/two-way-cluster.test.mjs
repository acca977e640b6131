// Two-way across two `herald` nodes on the real Redis (the cluster tests' database, HERALD_TEST_REDIS_DB,
// default 14, flushed at the start), with the real socket.io-client 4.x and an HTTP backend started here:
// retained values kept through one node reach a socket that connects to the other and answer its `get`, a relay
// and a webhook answer's publish on one node reach the other's sockets, and `if_changed` compares with what any
// node retained.
//
// NEEDS REDIS on 127.0.0.1:6379. Without it these tests FAIL (they never skip), saying how to start it:
//   redis-server --daemonize yes --save '' --appendonly no     (or: bash scripts/services.sh)

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { api } from "./gateway-helpers.mjs";
import { runId, startCluster } from "./cluster-helpers.mjs";
import { reply, startBackend } from "./two-way-helpers.mjs";
import { Clients, STEP_TIMEOUT_MS, emitAck, record, until, waitConnected } from "./util.mjs";

const KEY = "two-way-cluster-key-0123456789";
const SITE = `tw${runId()}`;
const clients = new Clients();
afterEach(() => clients.closeAll());

function connect(node) {
  return clients.add(io(`${node.url}/${SITE}`, { forceNew: true, reconnection: false, transports: ["websocket"] }));
}

async function publish(node, body) {
  const res = await api(node.url, "POST", `/api/v1/sites/${SITE}/publish`, { key: KEY, body });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body;
}

describe("two-way on two nodes sharing Redis", { timeout: 120_000 }, () => {
  let cluster, backend;
  before(async () => {
    backend = await startBackend({
      "/events/bid": (call, res) =>
        reply(res, 200, { reply: ["taken"], publish: [{ rooms: ["lobby"], event: "bid", args: call.body.args, except_sender: true }] }),
    });
    cluster = await startCluster({
      n: 2,
      sites: `
  - name: ${SITE}
    api_keys: [${KEY}]
    public_channel: lobby
    events:
      bid: {url: "${backend.url}/events/bid"}
      chat: {relay: true}
      get: {retained: true}`,
    });
  });
  after(async () => {
    await cluster?.stop();
    await backend?.close();
  });

  it("gives a socket on one node what was retained through the other, and answers its get", async () => {
    const [one, two] = cluster.nodes;
    await publish(one, { rooms: ["lobby"], event: "level", args: [{ v: 42 }], retain: true });
    const late = connect(two);
    const levels = record(late, "level");
    await waitConnected(late);
    await until(() => levels.length === 1, STEP_TIMEOUT_MS, "the value retained on the other node");
    assert.deepEqual(levels[0], [{ v: 42 }]);
    assert.deepEqual(await emitAck(late, "get", "lobby", "level"), [{ v: 42 }]);
    const listed = await api(two.url, "GET", `/api/v1/sites/${SITE}/rooms/lobby/retained`, { key: KEY });
    assert.deepEqual(listed.body.retained.map((r) => [r.event, r.args]), [["level", [{ v: 42 }]]]);
  });

  it("compares if_changed with what any node retained", async () => {
    const [one, two] = cluster.nodes;
    assert.equal((await publish(one, { rooms: ["lobby"], event: "temp", args: [20], retain: true, if_changed: true })).changed, true);
    assert.equal((await publish(two, { rooms: ["lobby"], event: "temp", args: [20], retain: true, if_changed: true })).changed, false);
    assert.equal((await publish(two, { rooms: ["lobby"], event: "temp", args: [21], retain: true, if_changed: true })).changed, true);
  });

  it("relays chat and a webhook answer's publish to the sockets of the other node", async () => {
    const [one, two] = cluster.nodes;
    const alice = connect(one);
    const bob = connect(two);
    await Promise.all([waitConnected(alice), waitConnected(bob)]);
    const [chatAlice, chatBob] = [alice, bob].map((s) => record(s, "chat"));
    const [bidAlice, bidBob] = [alice, bob].map((s) => record(s, "bid"));
    assert.deepEqual(await emitAck(alice, "chat", "lobby", "hi bob"), [{ ok: true }]);
    assert.deepEqual(await emitAck(alice, "bid", 99), ["taken"]);
    await until(() => chatBob.length === 1 && bidBob.length === 1, STEP_TIMEOUT_MS, "bob to get both");
    assert.deepEqual(chatBob[0], ["lobby", "hi bob"]);
    assert.deepEqual(bidBob[0], [99]);
    assert.equal(chatAlice.length + bidAlice.length, 0, "the sender is left out");
  });
});
