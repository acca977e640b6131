// Shared helpers for the e2e tests: bounded waits, client bookkeeping, binary normalisation.

export const STEP_TIMEOUT_MS = 5_000; // any single wait (connect, event, ack)
export const TEST_TIMEOUT_MS = 20_000; // whole test (node:test `timeout` option)
export const QUIET_MS = 300; // how long we listen to make sure something did NOT arrive

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Rejects with a descriptive error if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with the args array of the next `event` on `emitter` (socket.io socket or engine). */
export function nextEvent(emitter, event, ms = STEP_TIMEOUT_MS) {
  let handler;
  const p = new Promise((resolve) => {
    handler = (...args) => resolve(args);
    emitter.once(event, handler);
  });
  return withTimeout(p, ms, `event "${event}"`).finally(() => emitter.off?.(event, handler));
}

/** Whether `x` looks like a recovery offset, `<ms>-<seq>`. */
export const isOffset = (x) => typeof x === "string" && /^\d+-\d+$/.test(x);

/**
 * Collects every `event` received by `socket` (args arrays), so a test can assert later what did
 * or did not arrive.
 */
export function record(socket, event) {
  const got = [];
  socket.on(event, (...args) => {
    // drop a trailing ack callback if the server asked for one
    if (typeof args[args.length - 1] === "function") args.pop();
    // drop the connection-state-recovery offset (`<ms>-<seq>`), which herald appends to logged packets for
    // clients that may recover (the client keeps the last as `_lastOffset`); recovery.test.mjs checks offsets
    if (socket._pid && isOffset(args[args.length - 1])) args.pop();
    got.push(args);
  });
  return got;
}

/** Waits until `cond()` (which may be async) is true, polling, or throws after `ms`. */
export async function until(cond, ms = STEP_TIMEOUT_MS, what = "condition") {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/**
 * Emits `event` with `args` plus an ack callback; resolves with the array of ack arguments.
 * Works for both the v4 and the v2 client (no use of socket.timeout()).
 */
export function emitAck(socket, event, ...args) {
  const p = new Promise((resolve) => {
    socket.emit(event, ...args, (...reply) => resolve(reply));
  });
  return withTimeout(p, STEP_TIMEOUT_MS, `ack of "${event}"`);
}

/** Waits for "connect"; rejects on "connect_error"/"error" or timeout. */
export function waitConnected(socket, ms = STEP_TIMEOUT_MS) {
  if (socket.connected) return Promise.resolve(socket);
  let onConnect, onError;
  const p = new Promise((resolve, reject) => {
    onConnect = () => resolve(socket);
    onError = (err) =>
      reject(new Error(`connect_error on ${socket.nsp}: ${err && (err.message || err.description || err)}`));
    socket.once("connect", onConnect);
    socket.once("connect_error", onError);
    socket.once("error", onError); // v2 client emits "error" for a refused namespace
  });
  return withTimeout(p, ms, `connect on ${socket.nsp}`).finally(() => {
    socket.off("connect", onConnect);
    socket.off("connect_error", onError);
    socket.off("error", onError);
  });
}

/** Normalises whatever a client hands us for a binary value into a Buffer (or null if not binary). */
export function asBuffer(x) {
  if (Buffer.isBuffer(x)) return x;
  if (x instanceof ArrayBuffer) return Buffer.from(x);
  if (ArrayBuffer.isView(x)) return Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  return null;
}

/** Keeps track of every client created in a test file so they can all be closed: socket.io sockets, and the
 * plain clients of plain-helpers.mjs (which close rather than disconnect). */
export class Clients {
  constructor() {
    this.sockets = new Set();
  }
  add(socket) {
    this.sockets.add(socket);
    return socket;
  }
  closeAll() {
    for (const s of this.sockets) {
      try {
        s.removeAllListeners?.();
        if (s.disconnect) s.disconnect();
        else s.close();
      } catch {}
      try {
        // v4 Manager and v2 Manager both expose .engine; closing it makes sure no socket lingers
        s.io?.engine?.close();
      } catch {}
    }
    this.sockets.clear();
  }
}

/** Distinct names per test so the state left by one test never matches another's. */
let counter = 0;
export const unique = (prefix) => `${prefix}-${process.pid}-${++counter}`;
