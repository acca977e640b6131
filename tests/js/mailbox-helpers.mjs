// Helpers of the mailbox tests: JWT devices of a site with user rooms, a log of everything a device receives
// (acking it, or not), and the pending-counts API.

import { io } from "socket.io-client";
import { api, craftJwt } from "./gateway-helpers.mjs";
import { STEP_TIMEOUT_MS, until } from "./util.mjs";

export const KEY = "mailbox-key-0123456789";
export const JWT_SECRET = "mailbox-jwt-secret-0123456789abcdef";

/** A site block for a herald config: HS256 JWT auth, user rooms `user_<id>`, and `extra` YAML lines. */
export function siteYaml(name, extra = "") {
  return `
  - name: ${name}
    api_keys: [${KEY}]
    auth: {kind: jwt, algorithm: HS256, secret: "${JWT_SECRET}"}
    user_room_prefix: user_
${extra}`;
}

/** A token for user `id` in `user_<id>` and the shared `rooms`. */
export function tokenFor(id, rooms = []) {
  const now = Math.floor(Date.now() / 1000);
  return craftJwt("HS256", { sub: id, rooms: [`user_${id}`, ...rooms], iat: now, exp: now + 3600 }, JWT_SECRET);
}

/**
 * A socket.io client for device `deviceId` of user `id`. Its `log` holds every event received as
 * { event, args, ack, at }; with `autoAck` (default) every ack the server asked for is sent at once and
 * `acked` holds the times. Closed by `owner.closeAll()`.
 */
export function device(owner, url, { site = "app", id, deviceId, rooms = [], autoAck = true, ...opts }) {
  const socket = io(`${url}/${site}`, {
    forceNew: true,
    reconnection: false,
    timeout: STEP_TIMEOUT_MS,
    transports: ["websocket"],
    auth: { token: tokenFor(id, rooms), deviceId },
    ...opts,
  });
  socket.log = [];
  socket.onAny((event, ...args) => {
    const ack = typeof args.at(-1) === "function" ? args.pop() : null;
    const entry = { event, args, ack, at: Date.now() };
    socket.log.push(entry);
    if (autoAck && ack) {
      ack();
      entry.ackedAt = Date.now();
    }
  });
  return owner.add(socket);
}

/** The events of `socket` named `event`, as their args. */
export const eventsOf = (socket, event) => socket.log.filter((e) => e.event === event).map((e) => e.args);

/** Waits until `socket` got its `_settings` (the device is registered): resolves the settings. */
export async function settled(socket) {
  await until(() => eventsOf(socket, "_settings").length > 0, STEP_TIMEOUT_MS, "_settings");
  return eventsOf(socket, "_settings")[0][0];
}

/** The devices of user `id` from the pending-counts API, by device id. */
export async function devicesOf(url, id, site = "app") {
  const res = await api(url, "GET", `/api/v1/sites/${site}/users/user_${id}/devices`, { key: KEY });
  if (res.status !== 200) throw new Error(`devices API: ${res.status} ${JSON.stringify(res.body)}`);
  return Object.fromEntries(res.body.devices.map((d) => [d.deviceId, d]));
}

/** Waits until the server has marked `deviceId` of `id` disconnected (its TTL runs). */
export async function awaitOffline(url, id, deviceId, site = "app") {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const d = (await devicesOf(url, id, site))[deviceId];
    if (d && !d.connected) return d;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`device ${deviceId} of user ${id} still connected after ${STEP_TIMEOUT_MS} ms`);
}

/** Publishes through `/api/v1`; resolves { status, body }. */
export function publish(url, body, site = "app") {
  return api(url, "POST", `/api/v1/sites/${site}/publish`, { key: KEY, body });
}
