// Event routes to brokers with the real socket.io-client 4.x against one `herald` gateway: an event routed to
// MQTT reaches a `mosquitto_sub` subscriber with the webhook's JSON body and its topic's placeholders filled,
// one routed to NATS reaches a subscriber on a plain NATS connection made here, each ack is {queued: true}; a
// user id that would add a topic level and a broker that is down give error acks, and the socket stays.
// AMQP routes, reconnection, JetStream and the PUBACK correlation are covered in
// crates/herald/tests/events_brokers.rs.
//
// NEEDS Mosquitto (127.0.0.1:1883) with mosquitto_sub (and coreutils' stdbuf), and NATS (127.0.0.1:4222):
// `bash scripts/services.sh mosquitto nats` starts them. Without them these FAIL.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import { io } from "socket.io-client";
import { craftJwt, startGateway } from "./gateway-helpers.mjs";
import { runId } from "./cluster-helpers.mjs";
import { Clients, STEP_TIMEOUT_MS, emitAck, waitConnected, withTimeout } from "./util.mjs";

const KEY = "events-brokers-key-0123456789";
const SECRET = "events-brokers-jwt-secret-0123456789";
const ID = runId();
const clients = new Clients();
afterEach(() => clients.closeAll());

/** A port nothing listens on: bound, noted, closed. */
async function closedPort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * `mosquitto_sub` on `filter` at QoS 1 for one message, started once the broker acknowledged the subscription;
 * `message` resolves with { topic, payload }.
 */
async function mqttSubscriber(filter) {
  // Line-buffered: piped, mosquitto_sub would hold its SUBACK line until it exits.
  const args = ["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", "1883", "-q", "1", "-C", "1", "-v", "-d", "-t", filter];
  const child = spawn("stdbuf", args);
  let output = "";
  let onData;
  const seen = (pattern) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const match = output.match(pattern);
        if (match) resolve(match);
      };
      onData = check;
      child.on("error", reject);
      child.on("exit", (code) => code !== 0 && reject(new Error(`mosquitto_sub exited ${code}: ${output}`)));
      check();
    });
  child.stdout.on("data", (chunk) => {
    output += chunk;
    onData?.();
  });
  child.stderr.on("data", (chunk) => (output += chunk));
  await withTimeout(seen(/received SUBACK/), STEP_TIMEOUT_MS, `the SUBACK of ${filter}`);
  const prefix = filter.replace(/#$/, "");
  const escaped = prefix.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return {
    message: withTimeout(seen(new RegExp(`^(${escaped}\\S*) (.*)$`, "m")), STEP_TIMEOUT_MS, `a message on ${filter}`).then(
      ([, topic, payload]) => ({ topic, payload }),
    ),
    stop: () => child.kill(),
  };
}

/** A plain NATS connection subscribed to `subject`, once the server confirmed (PONG); `messages` fills up. */
async function natsSubscriber(subject) {
  const socket = net.connect(4222, "127.0.0.1");
  const messages = [];
  let buffer = Buffer.alloc(0);
  let ponged;
  const pong = new Promise((resolve) => (ponged = resolve));
  socket.on("data", (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    for (;;) {
      const end = buffer.indexOf("\r\n");
      if (end < 0) return;
      const line = buffer.subarray(0, end).toString();
      if (line.startsWith("MSG ")) {
        const parts = line.split(" ");
        const size = Number(parts[parts.length - 1]);
        if (buffer.length < end + 2 + size + 2) return;
        messages.push({ subject: parts[1], payload: buffer.subarray(end + 2, end + 2 + size).toString() });
        buffer = buffer.subarray(end + 2 + size + 2);
        continue;
      }
      if (line === "PING") socket.write("PONG\r\n");
      if (line === "PONG") ponged();
      buffer = buffer.subarray(end + 2);
    }
  });
  await withTimeout(new Promise((resolve, reject) => socket.once("connect", resolve).once("error", reject)), STEP_TIMEOUT_MS, "NATS");
  socket.write(`CONNECT {"verbose":false,"pedantic":false}\r\nSUB ${subject} 1\r\nPING\r\n`);
  await withTimeout(pong, STEP_TIMEOUT_MS, "NATS to confirm the subscription");
  return { messages, close: () => socket.destroy() };
}

describe("event routes to brokers with socket.io-client", { timeout: 120_000 }, () => {
  let gw;
  before(async () => {
    const down = await closedPort();
    gw = await startGateway({
      configYaml: `
sites:
  - name: iot
    api_keys: [${KEY}]
    auth: {kind: jwt, algorithm: HS256, secret: "${SECRET}"}
    recovery_window_ms: 0
    events:
      state: {mqtt: {url: "mqtt://127.0.0.1:1883", topic: "herald_${ID}/{user}/{event}"}}
      ping: {nats: {url: "nats://127.0.0.1:4222", subject: "herald_${ID}.{site}.{event}"}}
      lost: {mqtt: {url: "mqtt://herald:hunter2@127.0.0.1:${down}", topic: "lost/{event}"}, timeout_ms: 1500}
`,
    });
  });
  after(async () => {
    await gw?.stop();
  });

  function connect(user, room) {
    const token = craftJwt("HS256", { sub: user, rooms: [room], exp: Math.floor(Date.now() / 1000) + 600 }, SECRET);
    return clients.add(
      io(`${gw.url}/iot`, { forceNew: true, reconnection: false, transports: ["websocket"], auth: { token }, query: { deviceId: `d-${user}` } }),
    );
  }

  const body = (client, user, room, event, args) => ({
    site: "iot",
    event,
    args,
    socket: { id: client.id, user, deviceId: `d-${user}`, rooms: [client.id, room] },
  });

  it("publishes an event to MQTT once the broker has it, its topic filled", async () => {
    const subscriber = await mqttSubscriber(`herald_${ID}/#`);
    try {
      const client = connect("alice", "desk_1");
      await waitConnected(client);
      const args = [{ running: true, left: 1500 }];
      assert.deepEqual(await emitAck(client, "state", ...args), [{ queued: true }]);
      const { topic, payload } = await subscriber.message;
      assert.equal(topic, `herald_${ID}/alice/state`);
      assert.deepEqual(JSON.parse(payload), body(client, "alice", "desk_1", "state", args));
    } finally {
      subscriber.stop();
    }
  });

  it("publishes an event to NATS, its subject filled", async () => {
    const subscriber = await natsSubscriber(`herald_${ID}.>`);
    try {
      const client = connect("bob", "lobby");
      await waitConnected(client);
      assert.deepEqual(await emitAck(client, "ping", "hello", 42), [{ queued: true }]);
      await withTimeout(
        (async () => {
          while (subscriber.messages.length === 0) await new Promise((r) => setTimeout(r, 10));
        })(),
        STEP_TIMEOUT_MS,
        "the NATS message",
      );
      const [message] = subscriber.messages;
      assert.equal(message.subject, `herald_${ID}.iot.ping`);
      assert.deepEqual(JSON.parse(message.payload), body(client, "bob", "lobby", "ping", ["hello", 42]));
    } finally {
      subscriber.close();
    }
  });

  it("refuses a user id that would add a topic level, and a broker that is down, keeping the socket", async () => {
    const client = connect("eve/../admin", "lobby");
    await waitConnected(client);
    const [refused] = await emitAck(client, "state", 1);
    assert.deepEqual(refused, { error: "{user} holds '/', which cannot be in one mqtt topic level" });

    const started = Date.now();
    const [down] = await emitAck(client, "lost", 2);
    assert.deepEqual(down, { error: "the broker is unavailable" });
    assert.ok(Date.now() - started < 2500, `answered after ${Date.now() - started} ms, timeout_ms is 1500`);
    assert.ok(!JSON.stringify(down).includes("hunter2"));

    assert.ok(client.connected, "the socket stays");
    assert.deepEqual(await emitAck(client, "ping", "still here"), [{ queued: true }]);
  });
});
