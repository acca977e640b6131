// Connection-state recovery with the real socket.io-client 4.x against one `herald` gateway (no Redis): a client
// whose connection drops comes back with its id, its rooms (API joins included) and every logged packet it
// missed, once and in order (`socket.recovered`); a client that left by itself, a site with a window of 0 and a
// client back after the window start afresh. The cluster tests cover recovery on another node.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { api, startGateway } from "./gateway-helpers.mjs";
import { KEY as MAILBOX_KEY, awaitOffline, device, eventsOf, settled, siteYaml } from "./mailbox-helpers.mjs";
import { Clients, STEP_TIMEOUT_MS, sleep, until, waitConnected } from "./util.mjs";

const KEY = "recovery-key-0123456789";

const clients = new Clients();
afterEach(() => clients.closeAll());

/** Every `event` the socket gets, with its raw arguments (the offset last). */
function rawRecord(socket, event) {
  const got = [];
  socket.on(event, (...args) => got.push(args));
  return got;
}

function client(gw, site, transport) {
  return clients.add(
    io(`${gw.url}/${site}`, { forceNew: true, reconnection: false, transports: [transport] }),
  );
}

/** Cuts the client's connection the way a network drop does: no namespace DISCONNECT, just the transport. */
async function cut(gw, site, socket) {
  const id = socket.id;
  socket.io.engine.close();
  await until(async () => {
    const res = await api(gw.url, "GET", `/api/v1/sites/${site}/sockets`, { key: KEY });
    return !res.body.sockets.some((s) => s.id === id);
  }, STEP_TIMEOUT_MS, "the server to see the connection go");
}

async function publish(gw, site, body) {
  const res = await api(gw.url, "POST", `/api/v1/sites/${site}/publish`, { key: KEY, body });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body;
}

describe("connection-state recovery on one node", { timeout: 120_000 }, () => {
  let gw;
  before(async () => {
    gw = await startGateway({
      configYaml: `
sites:
  - name: live
    api_keys: [${KEY}]
    public_channel: lobby
  - name: brief
    api_keys: [${KEY}]
    public_channel: lobby
    recovery_window_ms: 1000
  - name: off
    api_keys: [${KEY}]
    public_channel: lobby
    recovery_window_ms: 0
${siteYaml("app", "    public_channel: lobby")}
`,
    });
  });
  after(async () => {
    clients.closeAll();
    await gw?.stop();
  });

  for (const transport of ["websocket", "polling"]) {
    it(`gives back the id, rooms and missed packets once, in order (${transport})`, { timeout: 30_000 }, async () => {
      const socket = client(gw, "live", transport);
      const got = rawRecord(socket, "m");
      await waitConnected(socket);
      assert.equal(socket.recovered, false);
      assert.ok(socket._pid, "the CONNECT answer carries a pid");
      const id = socket.id;
      const joined = await api(gw.url, "POST", `/api/v1/sites/live/sockets/${id}/rooms`, {
        key: KEY,
        body: { join: ["vip"] },
      });
      assert.equal(joined.status, 200);
      await publish(gw, "live", { rooms: ["lobby"], event: "m", args: [1] });
      await until(() => got.length === 1);
      const [first, firstOffset] = got[0];
      assert.equal(first, 1);
      assert.equal(typeof firstOffset, "string", "a logged packet carries its offset last");

      await cut(gw, "live", socket);
      await publish(gw, "live", { rooms: ["lobby"], event: "m", args: [2] });
      await publish(gw, "live", { rooms: ["vip"], event: "m", args: [3] });
      await publish(gw, "live", { sockets: [id], event: "m", args: [4] });
      await publish(gw, "live", { all: true, except: [id], event: "m", args: ["not for you"] });
      await publish(gw, "live", { rooms: ["lobby"], event: "m", args: ["volatile"], volatile: true });
      await publish(gw, "live", { rooms: ["lobby"], event: "m", args: [5] });

      socket.connect();
      await waitConnected(socket);
      assert.equal(socket.recovered, true);
      assert.equal(socket.id, id, "the socket keeps its id");
      await until(() => got.length >= 5);
      await publish(gw, "live", { rooms: ["vip"], event: "m", args: [6] });
      await until(() => got.length >= 6);
      await sleep(200);
      assert.deepEqual(got.map((a) => a[0]), [1, 2, 3, 4, 5, 6]);
      const offsets = got.map((a) => a[a.length - 1]);
      assert.equal(new Set(offsets).size, offsets.length, "each packet once");
      const listed = await api(gw.url, "GET", `/api/v1/sites/live/sockets`, { key: KEY });
      const me = listed.body.sockets.find((s) => s.id === id);
      assert.deepEqual(me?.rooms, [id, "lobby", "vip"], "the rooms come back, API joins included");
    });
  }

  it("starts afresh after the client left by itself", { timeout: 20_000 }, async () => {
    const socket = client(gw, "live", "websocket");
    const got = rawRecord(socket, "m");
    await waitConnected(socket);
    await publish(gw, "live", { rooms: ["lobby"], event: "m", args: ["seen"] });
    await until(() => got.length === 1);
    const id = socket.id;
    socket.disconnect();
    await publish(gw, "live", { rooms: ["lobby"], event: "m", args: ["missed"] });
    socket.connect();
    await waitConnected(socket);
    assert.equal(socket.recovered, false);
    assert.notEqual(socket.id, id);
    await sleep(300);
    assert.deepEqual(got.map((a) => a[0]), ["seen"]);
  });

  it("starts afresh once the site's window has passed", { timeout: 20_000 }, async () => {
    const socket = client(gw, "brief", "websocket");
    const got = rawRecord(socket, "m");
    await waitConnected(socket);
    await publish(gw, "brief", { rooms: ["lobby"], event: "m", args: ["seen"] });
    await until(() => got.length === 1);
    await cut(gw, "brief", socket);
    await sleep(1500);
    socket.connect();
    await waitConnected(socket);
    assert.equal(socket.recovered, false);
  });

  it("offers nothing on a site whose window is 0", { timeout: 20_000 }, async () => {
    const socket = client(gw, "off", "websocket");
    const got = rawRecord(socket, "m");
    await waitConnected(socket);
    assert.equal(socket._pid, undefined, "no pid");
    await publish(gw, "off", { rooms: ["lobby"], event: "m", args: ["plain"] });
    await until(() => got.length === 1);
    assert.deepEqual(got[0], ["plain"], "no offset");
  });

  it("a client that shows a pid it never had starts afresh", { timeout: 20_000 }, async () => {
    const socket = clients.add(
      io(`${gw.url}/live`, {
        forceNew: true,
        reconnection: false,
        transports: ["websocket"],
        auth: { pid: "made-up", offset: "1-0" },
      }),
    );
    await waitConnected(socket);
    assert.equal(socket.recovered, false);
  });

  it("on a mailbox site, recovers the live packets and leaves the user's entries to the mailbox", { timeout: 30_000 }, async () => {
    const phone = device(clients, gw.url, { id: "r1", deviceId: "phone" });
    await waitConnected(phone);
    await settled(phone);
    const id = phone.id;
    const post = (body) =>
      api(gw.url, "POST", "/api/v1/sites/app/publish", { key: MAILBOX_KEY, body }).then((r) => {
        assert.equal(r.status, 200, JSON.stringify(r.body));
      });
    await post({ rooms: ["lobby"], event: "pub", args: ["p1"] });
    await until(() => eventsOf(phone, "pub").length === 1);

    phone.io.engine.close();
    await awaitOffline(gw.url, "r1", "phone", "app");
    await post({ rooms: ["lobby"], event: "pub", args: ["p2"] });
    await post({ rooms: ["user_r1"], event: "mine", args: ["m1"] });

    phone.connect();
    await waitConnected(phone);
    assert.equal(phone.recovered, true);
    assert.equal(phone.id, id);
    const batched = () => eventsOf(phone, "_batch").flatMap(([entries]) => entries);
    await until(() => eventsOf(phone, "pub").length === 2 && batched().length === 1);
    await sleep(300);
    assert.deepEqual(eventsOf(phone, "pub").map((a) => a[0]), ["p1", "p2"], "the public channel, recovered once");
    assert.deepEqual(batched().map(([event, arg]) => [event, arg]), [["mine", "m1"]], "the user's entry, from the mailbox");
    assert.equal(eventsOf(phone, "mine").length, 0, "the entry is not also replayed as a live packet");
  });
});
