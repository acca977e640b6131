// Two herald processes sharing the real Redis at 127.0.0.1:6379 (scripts/services.sh starts it): a device that
// moves between them gets its whole mailbox, a publish on one node reaches a device live on the other, and
// shared rooms expand to users registered on either.
//
// Needs: Redis on 127.0.0.1:6379.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { startGateway } from "./gateway-helpers.mjs";
import { awaitOffline, device, devicesOf, eventsOf, publish, settled, siteYaml } from "./mailbox-helpers.mjs";
import { Clients, STEP_TIMEOUT_MS, TEST_TIMEOUT_MS, until, waitConnected } from "./util.mjs";

const REDIS = { host: "127.0.0.1", port: 6379 };

function redisAnswers() {
  return new Promise((resolve) => {
    const sock = net.connect(REDIS);
    sock.setTimeout(1000, () => resolve(false) || sock.destroy());
    sock.once("error", () => resolve(false));
    sock.once("connect", () => sock.write("PING\r\n"));
    sock.once("data", (d) => {
      resolve(d.toString().startsWith("+PONG"));
      sock.destroy();
    });
  });
}

const clients = new Clients();
afterEach(() => clients.closeAll());

describe("two nodes sharing Redis", { timeout: 120_000 }, () => {
  let a, b;
  // Users unique to this run, so data left in Redis by other runs is never seen.
  const run = `${Date.now()}${Math.floor(Math.random() * 1e6)}`;
  const user = (n) => `${run}x${n}`;

  before(async () => {
    if (!(await redisAnswers())) {
      throw new Error(
        `these tests need Redis on ${REDIS.host}:${REDIS.port}; start it with \`bash scripts/services.sh\``,
      );
    }
    const configYaml = `
server:
  redis_url: redis://${REDIS.host}:${REDIS.port}/
sites:${siteYaml("app")}
`;
    [a, b] = await Promise.all([startGateway({ configYaml }), startGateway({ configYaml })]);
  });
  after(async () => {
    clients.closeAll();
    await Promise.all([a?.stop(), b?.stop()]);
  });

  async function online(url, spec) {
    const socket = device(clients, url, spec);
    await waitConnected(socket);
    await settled(socket);
    return socket;
  }

  it("a device that leaves node A and comes back on node B gets everything published meanwhile", { timeout: TEST_TIMEOUT_MS }, async () => {
    const id = user(1);
    const onA = await online(a.url, { id, deviceId: "phone" });
    onA.disconnect();
    await awaitOffline(b.url, id, "phone");
    for (let i = 0; i < 3; i++) {
      const via = i % 2 ? a : b;
      const res = await publish(via.url, { rooms: [`user_${id}`], event: "n", args: [i] });
      assert.deepEqual(res.body, { matched: 0, queued: 1, online: 0 });
    }
    const onB = await online(b.url, { id, deviceId: "phone" });
    await until(() => eventsOf(onB, "_batch").length === 1, STEP_TIMEOUT_MS, "_batch on node B");
    assert.deepEqual(eventsOf(onB, "_batch")[0], [[["n", 0], ["n", 1], ["n", 2]]]);
    await until(async () => (await devicesOf(a.url, id)).phone?.pending === 0, STEP_TIMEOUT_MS, "acked, seen from A");
    assert.equal((await devicesOf(a.url, id)).phone.connected, true, "node A sees the device connected to B");
  });

  it("a publish on node A reaches a device live on node B", { timeout: TEST_TIMEOUT_MS }, async () => {
    const id = user(2);
    const onB = await online(b.url, { id, deviceId: "phone" });
    const res = await publish(a.url, { rooms: [`user_${id}`], event: "hello", args: ["from A"] });
    assert.deepEqual(res.body, { matched: 0, queued: 1, online: 0 }, "not online on A itself");
    await until(() => eventsOf(onB, "hello").length === 1, STEP_TIMEOUT_MS, "live delivery on B");
    assert.deepEqual(eventsOf(onB, "hello")[0], ["from A"]);
    await until(async () => (await devicesOf(a.url, id)).phone.pending === 0, STEP_TIMEOUT_MS, "its ack");
  });

  it("a shared room expands to users registered on either node", { timeout: TEST_TIMEOUT_MS }, async () => {
    const [u, v] = [user(3), user(4)];
    const room = `team_${run}`;
    const first = await online(a.url, { id: u, deviceId: "phone", rooms: [room] });
    first.disconnect();
    await awaitOffline(a.url, u, "phone");
    const second = await online(b.url, { id: v, deviceId: "tablet", rooms: [room] });
    const res = await publish(a.url, { rooms: [room], event: "team", args: ["hi"] });
    assert.deepEqual(res.body, { matched: 0, queued: 2, online: 0 });
    await until(() => eventsOf(second, "team").length === 1, STEP_TIMEOUT_MS, "live on B");
    const back = await online(b.url, { id: u, deviceId: "phone" });
    await until(() => eventsOf(back, "_batch").length === 1, STEP_TIMEOUT_MS, "_batch for the offline user");
    assert.deepEqual(eventsOf(back, "_batch")[0], [[["team", "hi"]]]);
  });
});
