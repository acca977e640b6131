// Raw Engine.IO/Socket.IO frames over a plain WebSocket (package `ws`) against `--suite e2e`:
// things the official clients hide from a test (exact packets, the WebSocket closing handshake).

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { startServer } from "./server.mjs";
import { STEP_TIMEOUT_MS, TEST_TIMEOUT_MS, withTimeout } from "./util.mjs";

let server;
const open = new Set();

before(async () => {
  server = await startServer({ suite: "e2e" });
});
afterEach(() => {
  for (const ws of open) ws.terminate();
  open.clear();
});
after(async () => {
  await server?.stop();
});

/** Opens a raw websocket and returns helpers to read frames in order (pings are answered and skipped). */
async function rawSocket(eio) {
  const ws = new WebSocket(`${server.url.replace("http", "ws")}/socket.io/?EIO=${eio}&transport=websocket`);
  open.add(ws);
  ws.binaryType = "nodebuffer";
  const queue = [];
  const waiters = [];
  ws.on("message", (data, isBinary) => {
    const frame = isBinary ? data : data.toString();
    if (frame === "2") {
      ws.send("3"); // EIO4 ping from the server
      return;
    }
    if (waiters.length) waiters.shift()(frame);
    else queue.push(frame);
  });
  const closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
  await withTimeout(new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  }), STEP_TIMEOUT_MS, "websocket open");
  const next = () =>
    withTimeout(
      queue.length ? Promise.resolve(queue.shift()) : new Promise((resolve) => waiters.push(resolve)),
      STEP_TIMEOUT_MS,
      "next frame",
    );
  return { ws, next, closed };
}

for (const eio of [4, 3]) {
  describe(`raw frames, Engine.IO v${eio}`, () => {
    it("handshake, namespace connect and auth event", { timeout: TEST_TIMEOUT_MS }, async () => {
      const { ws, next } = await rawSocket(eio);
      const open = await next();
      assert.equal(open[0], "0", `open packet, got ${JSON.stringify(open)}`);
      const hs = JSON.parse(open.slice(1));
      assert.equal(typeof hs.sid, "string");
      assert.deepEqual(hs.upgrades, []);
      assert.ok(hs.pingInterval > 0 && hs.pingTimeout > 0, JSON.stringify(hs));
      if (eio === 4) {
        ws.send('40{"token":"raw"}');
        const connect = await next();
        assert.match(connect, /^40\{"sid":"[^"]+"\}$/);
        assert.equal(await next(), '42["auth",{"token":"raw"}]');
      } else {
        // Socket.IO v2 protocol: the server connects the client to "/" by itself
        assert.equal(await next(), "40");
        assert.equal(await next(), '42["auth",{}]');
      }
    });

    it("ack with a binary reply is a BINARY_ACK with its attachment", { timeout: TEST_TIMEOUT_MS }, async () => {
      const { ws, next } = await rawSocket(eio);
      await next(); // open
      if (eio === 4) {
        ws.send("40");
        await next(); // 40{"sid":...}
      } else {
        await next(); // 40
      }
      await next(); // auth
      // BINARY_EVENT with one attachment and ack id 1; in Engine.IO v3 a binary frame starts with 0x04
      ws.send('451-1["binary-echo",{"_placeholder":true,"num":0}]');
      ws.send(eio === 3 ? Buffer.from([4, 1, 2, 3]) : Buffer.from([1, 2, 3]));
      const ack = await next();
      assert.equal(ack, '461-1[{"_placeholder":true,"num":0}]');
      const attachment = await next();
      assert.ok(Buffer.isBuffer(attachment), `attachment should be a binary frame, got ${JSON.stringify(attachment)}`);
      assert.deepEqual([...attachment.subarray(eio === 3 ? 1 : 0)], [1, 2, 3]);
    });

    it("the server answers the client's WebSocket close frame", { timeout: TEST_TIMEOUT_MS }, async () => {
      const { ws, next, closed } = await rawSocket(eio);
      await next(); // open packet
      ws.close(1000, "bye");
      const { code, reason } = await withTimeout(closed, STEP_TIMEOUT_MS, "close");
      // 1006 means the TCP connection ended without the server's close frame (RFC 6455 5.5.1)
      assert.equal(code, 1000, `close code ${code} (reason ${JSON.stringify(reason)})`);
    });
  });
}
