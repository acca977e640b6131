// herald's plain endpoints across three `herald` nodes on the real Redis (the cluster tests' database,
// HERALD_TEST_REDIS_DB, default 14, flushed at the start), with no sticky sessions: an event stream on one node
// gets what is published through another and resumes by Last-Event-ID on a third; a plain WebSocket's relay on
// one node reaches an event stream on another; a mailbox entry published on one node reaches a plain client
// of the same device on another, and its Last-Event-ID acks it wherever it comes back.
//
// NEEDS REDIS on 127.0.0.1:6379. Without it these tests FAIL (they never skip), saying how to start it:
//   redis-server --daemonize yes --save '' --appendonly no     (or: bash scripts/services.sh)

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { api } from "./gateway-helpers.mjs";
import { runId, startCluster } from "./cluster-helpers.mjs";
import { KEY as MAILBOX_KEY, siteYaml, tokenFor } from "./mailbox-helpers.mjs";
import { EventStream, PlainSocket, sseUrl, wsUrl } from "./plain-helpers.mjs";
import { Clients, QUIET_MS, isOffset, sleep, until } from "./util.mjs";

const KEY = "plain-cluster-key-0123456789";
const SITE = `pl${runId()}`;
const MAILBOXES = `pm${runId()}`;
const plain = new Clients();
afterEach(() => plain.closeAll());

async function publish(node, site, body, key = KEY) {
  const res = await api(node.url, "POST", `/api/v1/sites/${site}/publish`, { key, body });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body;
}

const stream = async (node, site, query, headers) => plain.add(await EventStream.open(sseUrl(node, site, query), { headers }));

describe("plain clients on three nodes sharing Redis", { timeout: 120_000 }, () => {
  let cluster;
  before(async () => {
    cluster = await startCluster({
      n: 3,
      server: `
  mailbox: {store: redis}`,
      sites: `
  - name: ${SITE}
    api_keys: [${KEY}]
    public_channel: lobby
    recovery_window_ms: 60000
    events:
      chat: {relay: true}
${siteYaml(MAILBOXES)}`,
    });
  });
  after(async () => {
    await cluster?.stop();
  });

  it("an event stream gets publishes made through another node, and resumes on a third by Last-Event-ID", async () => {
    const [one, two, three] = cluster.nodes;
    const first = await stream(two, SITE);
    await first.next((e) => e.event === "welcome");
    await publish(one, SITE, { rooms: ["lobby"], event: "seq", args: [1] });
    const got = await first.next((e) => e.event === "seq", "the publish from node 0");
    assert.ok(isOffset(got.id), got.id);
    first.close();
    for (const n of [2, 3]) await publish(one, SITE, { rooms: ["lobby"], event: "seq", args: [n] });

    const back = await stream(three, SITE, {}, { "last-event-id": got.id });
    await until(() => back.named("seq").length === 2, undefined, "the missed events on node 2");
    await sleep(QUIET_MS);
    assert.deepEqual(back.named("seq").map((e) => e.data[0]), [2, 3]);

    // A plain WebSocket's relay on node 0 reaches the stream on node 2.
    const sender = plain.add(new PlainSocket(wsUrl(one, SITE)));
    await sender.welcome();
    assert.deepEqual(await sender.request("chat", ["lobby", "hi"], 1), { type: "reply", id: 1, args: [{ ok: true }] });
    const chat = await back.next((e) => e.event === "chat", "the relay from node 0");
    assert.deepEqual(chat.data, ["lobby", "hi"]);
  });

  it("mailbox entries reach a plain device on any node, and Last-Event-ID acks them wherever it comes back", async () => {
    const [one, two, three] = cluster.nodes;
    const query = { token: tokenFor("dev"), deviceId: "sensor" };
    const device = plain.add(new PlainSocket(wsUrl(two, MAILBOXES, query), { autoAck: true }));
    await device.welcome();
    await publish(one, MAILBOXES, { rooms: ["user_dev"], event: "job", args: [1] }, MAILBOX_KEY);
    const job = await device.next((f) => f.event === "job", "the entry published on node 0");
    assert.deepEqual(job.args, [1]);
    assert.ok(Number.isInteger(job.id));
    device.close();
    await device.closed;

    await publish(one, MAILBOXES, { rooms: ["user_dev"], event: "job", args: [2] }, MAILBOX_KEY);
    await publish(one, MAILBOXES, { rooms: ["user_dev"], event: "job", args: [3] }, MAILBOX_KEY);
    const viewer = await stream(three, MAILBOXES, query);
    await until(() => viewer.named("job").length === 2, undefined, "the entries that waited");
    assert.deepEqual(viewer.named("job").map((e) => e.data[0]), [2, 3]);
    const through = viewer.named("job")[0].id;
    viewer.close();

    const again = await stream(one, MAILBOXES, query, { "last-event-id": through });
    const rest = await again.next((e) => e.event === "job", "the entry after the id");
    assert.deepEqual(rest.data, [3]);
    await sleep(QUIET_MS);
    assert.equal(again.named("job").length, 1);
  });
});
