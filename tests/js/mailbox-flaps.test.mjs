// A device behind a TCP proxy that cuts every connection every 2 s for 60 s while 50 msg/s are published to it:
// with mailboxes, 100 % arrive, first receipts in order, and nothing comes back after its ack reached herald.
// (Under the same drops, default socket.io delivers about 85 %.)
//
// Environment: FLAP_SECONDS (default 60) shortens the run for local iterations.

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { startGateway } from "./gateway-helpers.mjs";
import { device, publish, settled, siteYaml } from "./mailbox-helpers.mjs";
import { Clients, sleep, until, waitConnected } from "./util.mjs";

const SECONDS = Number(process.env.FLAP_SECONDS ?? 60);
const RATE = 50;
const CUT_EVERY_MS = 2_000;
/** On loopback an ack lands in well under this; one sent this long before its connection was cut arrived. */
const ACK_LANDED_MS = 200;

/** A TCP proxy to `port` on 127.0.0.1; `cut()` destroys every connection through it. */
async function startProxy(port) {
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: "127.0.0.1", port });
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      const n = pairs.size;
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      pairs.clear();
      return n;
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

describe("flapping connection", { timeout: (SECONDS + 60) * 1000 }, () => {
  let gw, proxy;
  const clients = new Clients();
  before(async () => {
    gw = await startGateway({ configYaml: `sites:${siteYaml("app")}\n` });
    proxy = await startProxy(gw.port);
  });
  after(async () => {
    clients.closeAll();
    await proxy?.close();
    await gw?.stop();
  });

  it(`cut every 2 s for ${SECONDS} s at ${RATE} msg/s: all delivered, in order, none after its ack`, { timeout: (SECONDS + 50) * 1000 }, async (t) => {
    const phone = device(clients, proxy.url, {
      id: "1",
      deviceId: "phone",
      reconnection: true,
      reconnectionDelay: 50,
      reconnectionDelayMax: 200,
      randomizationFactor: 0,
    });
    await waitConnected(phone);
    await settled(phone);

    let connection = 0;
    const cutAt = []; // per connection: when it ended
    phone.on("disconnect", () => (cutAt[connection++] = Date.now()));
    const firstSeen = []; // numbers in order of first receipt
    const seen = new Set();
    const ackedOn = new Map(); // n -> { connection, at } of its first ack
    const late = []; // receipts of numbers whose ack had landed
    let receipts = 0;
    phone.onAny((event, ...args) => {
      const numbers = event === "n" ? [args[0]] : event === "_batch" ? args[0].map(([, n]) => n) : [];
      for (const n of numbers) {
        receipts++;
        const ack = ackedOn.get(n);
        if (ack) {
          const ended = cutAt[ack.connection];
          if (ended === undefined || ended - ack.at > ACK_LANDED_MS) late.push(n);
          else ackedOn.set(n, { connection, at: Date.now() }); // the cut lost that ack; this one counts
        } else {
          ackedOn.set(n, { connection, at: Date.now() }); // device() acks at once
        }
        if (!seen.has(n)) {
          seen.add(n);
          firstSeen.push(n);
        }
      }
    });

    const total = SECONDS * RATE;
    const cutter = setInterval(() => proxy.cut(), CUT_EVERY_MS);
    const started = Date.now();
    let answered = 0;
    try {
      for (let n = 0; n < total; n++) {
        const res = await publish(gw.url, { rooms: ["user_1"], event: "n", args: [n] });
        assert.equal(res.status, 200, JSON.stringify(res.body));
        answered++;
        const due = started + ((n + 1) * 1000) / RATE;
        if (due > Date.now()) await sleep(due - Date.now());
      }
    } finally {
      clearInterval(cutter);
    }
    await until(() => seen.size === total, 30_000, `all ${total} delivered (have ${seen.size})`);
    t.diagnostic(`${answered} published, ${seen.size} delivered, ${receipts - seen.size} redeliveries of unacked entries, ${connection} cuts`);
    assert.equal(seen.size, total, "100 % delivered");
    assert.deepEqual(firstSeen, [...firstSeen].sort((a, b) => a - b), "first receipts are in publish order");
    assert.deepEqual(late, [], "entries delivered again after their ack had reached herald");
    assert.ok(connection >= SECONDS / 2 - 2, `the proxy cut the connection (${connection} times)`);
  });
});
