// Broker bridges with the real socket.io-client 4.x: messages published to Mosquitto (mosquitto_pub), Redis
// (redis-cli) and PostgreSQL (psql NOTIFY) reach the site's clients through one `herald` gateway; a bad message
// is counted as rejected and the next one still arrives; `/api/v1/status` shows each bridge up. The AMQP and NATS
// bridges, acks, retries, restarts and clusters are covered in crates/herald/tests/bridges_*.rs.
//
// NEEDS Mosquitto (127.0.0.1:1883), Redis (6379) and PostgreSQL (5432, user postgres, trust) with their CLIs
// (mosquitto_pub, redis-cli, psql): `bash scripts/services.sh` starts the services. Without them these FAIL.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { io } from "socket.io-client";
import { api, startGateway } from "./gateway-helpers.mjs";
import { runId } from "./cluster-helpers.mjs";
import { Clients, STEP_TIMEOUT_MS, record, until, waitConnected } from "./util.mjs";

const run = promisify(execFile);
const KEY = "bridges-key-0123456789";
const ID = runId();
const clients = new Clients();
afterEach(() => clients.closeAll());

const mqttPub = (topic, message) => run("mosquitto_pub", ["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", topic, "-m", message]);
const redisPub = (channel, message) => run("redis-cli", ["-h", "127.0.0.1", "-p", "6379", "PUBLISH", channel, message]);
const pgNotify = (channel, message) =>
  run("psql", ["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
    `SELECT pg_notify('${channel}', '${message.replaceAll("'", "''")}')`]);

describe("broker bridges to socket.io clients", { timeout: 120_000 }, () => {
  let gw;
  before(async () => {
    gw = await startGateway({
      configYaml: `
sites:
  - name: iot
    api_keys: [${KEY}]
    public_channel: lobby
    recovery_window_ms: 0
bridges:
  - {kind: mqtt, url: "mqtt://127.0.0.1:1883", topic: "pomodoro_${ID}/+/state", site: iot, room: "lobby", event: "state_{1}", retain: true}
  - {kind: mqtt, url: "mqtt://127.0.0.1:1883", topic: "herald_${ID}/iot", site: iot}
  - {kind: redis, url: "redis://127.0.0.1:6379/", channel: "herald_${ID}:iot", site: iot}
  - {kind: postgres, url: "postgres://postgres@127.0.0.1:5432/postgres", channel: "herald_${ID}", site: iot}
`,
    });
    await until(async () => {
      const res = await api(gw.url, "GET", "/api/v1/status", { key: KEY });
      return res.status === 200 && res.body.bridges.length === 4 && res.body.bridges.every((b) => b.state === "up");
    }, 20_000, "every bridge to be up");
  });
  after(async () => {
    await gw?.stop();
  });

  function connect() {
    return clients.add(io(`${gw.url}/iot`, { forceNew: true, reconnection: false, transports: ["websocket"] }));
  }

  it("publishes a v1 message from MQTT, Redis and Postgres to the room", async () => {
    const client = connect();
    await waitConnected(client);
    const news = record(client, "news");
    const body = (from) => JSON.stringify({ rooms: ["lobby"], event: "news", args: [{ from }] });
    await mqttPub(`herald_${ID}/iot`, body("mqtt"));
    await redisPub(`herald_${ID}:iot`, body("redis"));
    await pgNotify(`herald_${ID}`, body("postgres"));
    await until(() => news.length === 3, STEP_TIMEOUT_MS, "three bridged messages");
    assert.deepEqual(news.map(([m]) => m.from).sort(), ["mqtt", "postgres", "redis"]);
  });

  it("makes a raw MQTT body the one argument, its event from the topic, and retains it", async () => {
    await mqttPub(`pomodoro_${ID}/desk/state`, JSON.stringify({ running: true, left: 1500 }));
    await until(async () => {
      const res = await api(gw.url, "GET", "/api/v1/sites/iot/rooms/lobby/retained", { key: KEY });
      return res.body.retained?.some((r) => r.event === "state_desk");
    }, STEP_TIMEOUT_MS, "the retained state");
    const late = connect();
    const states = record(late, "state_desk");
    await waitConnected(late);
    await until(() => states.length === 1, STEP_TIMEOUT_MS, "the retained state on connect");
    assert.deepEqual(states[0], [{ running: true, left: 1500 }]);
    await mqttPub(`pomodoro_${ID}/desk/state`, "paused");
    await until(() => states.length === 2);
    assert.deepEqual(states[1], ["paused"]);
  });

  it("rejects a bad message, counts it, and delivers the next", async () => {
    const client = connect();
    await waitConnected(client);
    const news = record(client, "news");
    await redisPub(`herald_${ID}:iot`, "this is not a publish");
    await redisPub(`herald_${ID}:iot`, JSON.stringify({ rooms: ["lobby"], event: "news", args: ["after"] }));
    await until(() => news.length === 1, STEP_TIMEOUT_MS, "the good message");
    assert.deepEqual(news[0], ["after"]);
    const status = await api(gw.url, "GET", "/api/v1/status", { key: KEY });
    const redis = status.body.bridges.find((b) => b.bridge.startsWith("redis"));
    assert.ok(redis.rejected >= 1, JSON.stringify(redis));
    assert.ok(!JSON.stringify(status.body).includes("127.0.0.1"), "no URL in the status");
  });
});
