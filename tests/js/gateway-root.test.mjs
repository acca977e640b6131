// The root namespace of the real `herald` gateway, which no site serves: a socket.io 4.x client that connects to
// `io(url)` is refused with the list of site namespaces, while a socket.io 2.x client (Engine.IO v3, which joins
// `/` implicitly and hands an error on `/` to every namespace socket) connects to its site with no error at all.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { io } from "socket.io-client";
import { api, startGateway } from "./gateway-helpers.mjs";
import { Clients, QUIET_MS, STEP_TIMEOUT_MS, nextEvent, sleep, waitConnected } from "./util.mjs";

const require = createRequire(import.meta.url);
const ioV2 = require("socket.io-client-v2");
const KEY = "root-key-0123456789";

const clients = new Clients();
afterEach(() => clients.closeAll());

describe("the root namespace", { timeout: 60_000 }, () => {
  let gw;
  before(async () => {
    gw = await startGateway({
      configYaml: `
sites:
  - name: news
    api_keys: [${KEY}]
    public_channel: lobby
  - name: shop
    api_keys: [${KEY}]
    public_channel: lobby
`,
    });
  });
  after(async () => {
    clients.closeAll();
    await gw?.stop();
  });

  it("refuses a 4.x client with the site namespaces", { timeout: 20_000 }, async () => {
    const root = clients.add(io(gw.url, { forceNew: true, reconnection: false, transports: ["websocket"] }));
    const [err] = await nextEvent(root, "connect_error", STEP_TIMEOUT_MS);
    assert.match(err.message, /no root namespace/);
    assert.match(err.message, /\/news/);
    assert.match(err.message, /\/shop/);
  });

  for (const transport of ["polling", "websocket"]) {
    it(`lets a 2.x client into its site with no error (${transport})`, { timeout: 20_000 }, async () => {
      const socket = clients.add(ioV2(`${gw.url}/news`, { forceNew: true, reconnection: false, transports: [transport] }));
      const errors = [];
      socket.on("error", (e) => errors.push(e));
      await waitConnected(socket);
      const news = nextEvent(socket, "headline", STEP_TIMEOUT_MS);
      const res = await api(gw.url, "POST", "/api/v1/sites/news/publish", {
        key: KEY,
        body: { rooms: ["lobby"], event: "headline", args: ["hello"] },
      });
      assert.equal(res.status, 200);
      assert.deepEqual(await news, ["hello"]);
      await sleep(QUIET_MS);
      assert.deepEqual(errors, []);
    });
  }
});
