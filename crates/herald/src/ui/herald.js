/**
 * herald.js: herald's browser client, an ES module with no dependencies, over herald's plain WebSocket
 * (`/ws/<site>`, one JSON object per frame). herald serves it at `/herald.js`.
 *
 *   import { connect } from "https://herald.example/herald.js";
 *   const client = connect("news", { token, deviceId: "laptop", shared: true });
 *   client.on("connect", ({ socket, rooms }) => console.log("in", rooms));
 *   client.on("headline", (title, meta) => console.log(title, meta));
 *   const answer = await client.emit("bid", 42); // the route's reply; rejects with its error
 *
 * connect(site, options) returns a Client at once and connects in the background. Options:
 *   url       herald's base URL (`https://herald.example`, or a path prefix behind a proxy); by default the
 *             place this module was loaded from.
 *   token     a string, or a function returning one (or a Promise of one), called before every connect. It
 *             goes in `?token=`: a browser cannot set headers on a WebSocket. Leave it out where the site
 *             reads a cookie.
 *   deviceId  this device's mailbox, on sites that keep mailboxes.
 *   query     more query parameters, e.g. `{ meta: "…" }`.
 *   shared    true (or a name): one connection per browser, held by a SharedWorker and shared by every tab
 *             that connects with the same url, site, deviceId and token (or the same name). Falls back to a
 *             connection of its own where SharedWorker is missing or refused (a module from another origin:
 *             set `worker`).
 *   worker    for `shared` when this module comes from another origin: the URL of a same-origin module that
 *             imports it, e.g. a file holding `import "https://herald.example/herald.js";`.
 *   backoff   { min: 500, max: 10000 }: ms before reconnect attempt n, min·2ⁿ up to max, then a random
 *             50–100 % of that (jitter), so a restart is not a thundering herd.
 *   timeout   ms an emit waits for its reply; default 20000.
 *
 * Client:
 *   on(event, fn), off(event, fn)  herald's events (fn gets the args), and the connection's own:
 *     "connect"       ({ socket, rooms }) on each welcome, after every reconnect too;
 *     "disconnect"    (reason) when the connection is lost; it comes back by itself;
 *     "reconnecting"  ({ attempt, delay }) before each wait;
 *     "error"         (Error) a refused connect (it still retries: a token function may mend it) or a frame
 *                     herald refused.
 *   emit(event, ...args)  Promise of the first argument of the reply. Rejects with the route's error, after
 *                         `timeout`, or when the connection drops before the reply. Emits made while
 *                         disconnected wait for the next connection.
 *   send(event, ...args)  the same without asking for a reply.
 *   close()               ends it for good (in shared mode: this tab leaves; the last tab closes the socket).
 *   state                 "connecting", "connected", "reconnecting" or "closed"; `socket` and `rooms` are those
 *                         of the last welcome; `tabs` counts the tabs sharing the connection (shared mode).
 *
 * Delivery: a mailbox entry is acked as soon as its handlers ran (in shared mode, once handed to the tabs);
 * a reconnect brings back the entries not acked (at least once). On a site
 * with `recovery_window_ms`, the client keeps the offset of the last event and reconnects with
 * `?lastEventId=`: what was published while it was away comes once each, in order, instead of the retained
 * values.
 */

const DEFAULTS = { backoff: { min: 500, max: 10_000 }, timeout: 20_000 };

/** Opens a client of `site`; see the module's documentation. */
export function connect(site, options = {}) {
  const o = { ...DEFAULTS, ...options, site, url: baseUrl(options.url).href };
  const client = new Client();
  if (o.shared && typeof SharedWorker === "function") {
    try {
      client.link = viaWorker(client, o);
      return client;
    } catch {
      // A worker script from another origin is refused: a connection of its own instead.
    }
  }
  client.link = new Link(o, client);
  return client;
}

/** herald's WebSocket base (ends with `/`): `url`, or the directory this module was loaded from. */
function baseUrl(url) {
  const base = url ? new URL(url, globalThis.location?.href) : new URL(".", import.meta.url);
  if (!base.pathname.endsWith("/")) base.pathname += "/";
  base.protocol = base.protocol.replace(/^http/, "ws");
  return base;
}

/** What an application holds: handlers, state, and the way to the connection (a Link, or a worker's port). */
class Client {
  constructor() {
    this.handlers = new Map();
    this.state = "connecting";
    this.socket = null;
    this.rooms = [];
  }

  on(event, fn) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    this.handlers.get(event)?.delete(fn);
    return this;
  }

  emit(event, ...args) {
    return this.link.request(event, args).then((reply) => reply[0]);
  }

  send(event, ...args) {
    this.link.send(event, args);
  }

  close() {
    this.state = "closed";
    this.link.close();
  }

  /** Runs the handlers of `event`; one that throws is reported and does not stop the others. */
  deliver(event, args) {
    for (const fn of [...(this.handlers.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (error) {
        (globalThis.reportError ?? console.error)(error);
      }
    }
  }

  /** A change of the connection: "connect", "disconnect", "reconnecting" or "error". */
  status(name, detail) {
    if (this.state === "closed") return;
    if (name === "connect") {
      this.state = "connected";
      ({ socket: this.socket, rooms: this.rooms } = detail);
    } else if (name === "disconnect" || name === "reconnecting") {
      this.state = "reconnecting";
    }
    this.deliver(name, [name === "error" ? new Error(detail) : detail]);
  }
}

/**
 * One WebSocket to `/ws/<site>`, opened again after every drop with a growing, jittered delay. It resumes
 * from the last offset, acks mailbox entries, matches replies to emits, and tells `out` (a Client, or the
 * worker's fan-out) what arrives.
 */
class Link {
  constructor(options, out) {
    this.o = options;
    this.out = out;
    this.state = "connecting";
    this.attempt = 0;
    this.lastOffset = null;
    this.nextId = 1;
    this.pending = new Map(); // emit id → { resolve, reject, timer }, on this connection
    this.queue = []; // frames waiting for a connection
    this.open();
  }

  async open() {
    let token = this.o.token;
    try {
      if (typeof token === "function") token = await token();
    } catch (error) {
      this.out.status("error", `the token function failed: ${error?.message ?? error}`);
      return this.retry();
    }
    if (this.state === "closed") return;
    const url = new URL(`ws/${encodeURIComponent(this.o.site)}`, this.o.url);
    const params = { ...this.o.query, token, deviceId: this.o.deviceId, lastEventId: this.lastOffset };
    for (const [key, value] of Object.entries(params)) if (value != null) url.searchParams.set(key, value);
    let ws;
    try {
      ws = this.ws = new WebSocket(url);
    } catch (error) {
      // A ws:// URL from an https:// page, say.
      this.out.status("error", error.message);
      return this.retry();
    }
    this.refusal = null;
    ws.onmessage = (message) => this.ws === ws && this.frame(JSON.parse(message.data));
    ws.onclose = (event) => this.ws === ws && this.dropped(event);
  }

  frame(f) {
    if (f.type === "welcome") {
      this.state = "connected";
      this.attempt = 0;
      this.welcome = { socket: f.socket, rooms: f.rooms };
      this.out.status("connect", this.welcome);
      for (const entry of this.queue.splice(0)) this.transmit(entry);
    } else if (f.type === "event") {
      if (f.offset) this.lastOffset = f.offset;
      this.out.deliver(f.event, f.args);
      // Acks are cumulative: this one also covers any entry before it.
      if (f.id != null) this.ws?.send(JSON.stringify({ type: "ack", id: f.id }));
    } else if (f.type === "reply" || (f.type === "error" && f.id != null)) {
      const call = this.pending.get(f.id);
      if (call) this.settle(call, f.type === "error" ? new Error(f.error) : null, f.args);
    } else if (f.type === "error") {
      if (!this.welcome) this.refusal = f.error;
      this.out.status("error", f.error);
    }
  }

  request(event, args) {
    return new Promise((resolve, reject) => {
      const entry = { event, args, resolve, reject };
      const late = () => this.settle(entry, new Error(`no reply to "${event}" within ${this.o.timeout} ms`));
      entry.timer = setTimeout(late, this.o.timeout);
      this.state === "connected" ? this.transmit(entry) : this.queue.push(entry);
    });
  }

  send(event, args) {
    const entry = { event, args };
    this.state === "connected" ? this.transmit(entry) : this.queue.push(entry);
  }

  transmit(entry) {
    const frame = { type: "event", event: entry.event, args: entry.args };
    if (entry.resolve) {
      entry.id = frame.id = this.nextId++;
      this.pending.set(entry.id, entry);
    }
    this.ws.send(JSON.stringify(frame));
  }

  /** Ends a request once: with `error`, else with the reply's `args`. */
  settle(entry, error, args) {
    clearTimeout(entry.timer);
    this.pending.delete(entry.id);
    const queued = this.queue.indexOf(entry);
    if (queued >= 0) this.queue.splice(queued, 1);
    error ? entry.reject(error) : entry.resolve(args);
  }

  dropped(event) {
    this.ws = null;
    this.welcome = null;
    for (const entry of [...this.pending.values()]) this.settle(entry, new Error("the connection dropped before the reply"));
    if (this.state === "closed") return;
    if (this.state === "connected") this.out.status("disconnect", this.refusal ?? (event.reason || `closed (${event.code})`));
    this.retry();
  }

  retry() {
    if (this.state === "closed") return;
    const { min, max } = { ...DEFAULTS.backoff, ...this.o.backoff };
    const ceiling = Math.min(max, min * 2 ** this.attempt++);
    const delay = Math.round(ceiling * (0.5 + Math.random() / 2));
    this.state = "reconnecting";
    this.out.status("reconnecting", { attempt: this.attempt, delay });
    this.timer = setTimeout(() => this.open(), delay);
  }

  close() {
    this.state = "closed";
    clearTimeout(this.timer);
    this.ws?.close(1000);
    this.ws = null;
    for (const entry of [...this.pending.values(), ...this.queue]) if (entry.reject) this.settle(entry, new Error("closed"));
    this.queue = [];
  }
}

/** A tab's side of shared mode: the Link lives in the SharedWorker; this posts to it and hears from it. */
function viaWorker(client, o) {
  const tokenFn = typeof o.token === "function";
  const key = tokenFn ? "fn" : fnv(String(o.token ?? ""));
  const name = typeof o.shared === "string" ? o.shared : ["herald", o.url, o.site, o.deviceId ?? "", key].join(" ");
  const worker = new SharedWorker(o.worker ?? new URL(import.meta.url), { type: "module", name });
  const port = worker.port;
  const tab = crypto.randomUUID?.() ?? `${Date.now()}-${Math.random()}`; // randomUUID: secure contexts only
  const calls = new Map();
  let next = 1;
  let release;
  port.onmessage = ({ data: m }) => {
    if (m.t === "event") client.deliver(m.event, m.args);
    else if (m.t === "status") client.status(m.name, m.detail);
    else if (m.t === "tabs") client.tabs = m.n;
    else if (m.t === "answer") {
      const call = calls.get(m.n);
      calls.delete(m.n);
      m.error === undefined ? call?.resolve(m.args) : call?.reject(new Error(m.error));
    } else if (m.t === "token?") {
      Promise.resolve()
        .then(o.token)
        .then((token) => port.postMessage({ t: "token", n: m.n, token }), () => port.postMessage({ t: "token", n: m.n }));
    }
  };
  // What the worker's Link needs, all of it cloneable (a token function stays here, asked through "token?").
  const { site, url, deviceId, query, backoff, timeout } = o;
  const options = { site, url, deviceId, query, backoff, timeout, token: tokenFn ? undefined : o.token, tokenFn };
  const hello = () => port.postMessage({ t: "hello", tab, options });
  const bye = () => port.postMessage({ t: "bye" });
  hello();
  // A tab that closes says nothing on its port: the worker learns it when the lock this tab holds is freed.
  navigator.locks?.request(`herald-tab-${tab}`, () => {
    port.postMessage({ t: "held" });
    return new Promise((resolve) => (release = resolve));
  });
  const hidden = () => bye();
  const shown = (event) => event.persisted && hello();
  addEventListener("pagehide", hidden);
  addEventListener("pageshow", shown);
  return {
    request(event, args) {
      return new Promise((resolve, reject) => {
        calls.set(next, { resolve, reject });
        port.postMessage({ t: "emit", n: next++, event, args });
      });
    },
    send: (event, args) => port.postMessage({ t: "send", event, args }),
    close() {
      bye();
      release?.();
      removeEventListener("pagehide", hidden);
      removeEventListener("pageshow", shown);
      for (const call of calls.values()) call.reject(new Error("closed"));
      port.close();
    },
  };
}

/** FNV-1a of a token: it names the shared worker without showing the token. */
function fnv(text) {
  let hash = 0x811c9dc5;
  for (const c of text) hash = Math.imul(hash ^ c.codePointAt(0), 0x01000193) >>> 0;
  return hash.toString(16);
}

/** The SharedWorker's side: one Link for every tab, its events fanned out, each reply sent to its tab only. */
function serveTabs() {
  const tabs = new Map(); // tab id → { port, tokenFn }
  const asks = new Map();
  let link = null;
  let nextAsk = 1;
  const all = (m) => tabs.forEach(({ port }) => port.postMessage(m));
  const fanOut = {
    deliver: (event, args) => all({ t: "event", event, args }),
    status: (name, detail) => all({ t: "status", name, detail }),
  };
  // The newest tab with a token function is asked for a token before each connect.
  const askToken = () =>
    new Promise((resolve) => {
      const asked = [...tabs.values()].reverse().find((t) => t.tokenFn);
      if (!asked) return resolve(undefined);
      const n = nextAsk++;
      asks.set(n, resolve);
      asked.port.postMessage({ t: "token?", n });
      setTimeout(() => asks.delete(n) && resolve(undefined), 5_000);
    });
  const forget = (id) => {
    if (!tabs.delete(id)) return;
    all({ t: "tabs", n: tabs.size });
    if (tabs.size === 0) {
      link?.close();
      link = null;
    }
  };
  globalThis.onconnect = ({ ports: [port] }) => {
    let id;
    port.onmessage = ({ data: m }) => {
      if (m.t === "hello") {
        id = m.tab;
        tabs.set(id, { port, tokenFn: m.options.tokenFn });
        if (!link) link = new Link({ ...m.options, token: m.options.tokenFn ? askToken : m.options.token }, fanOut);
        else if (link.state === "connected") port.postMessage({ t: "status", name: "connect", detail: link.welcome });
        all({ t: "tabs", n: tabs.size });
      } else if (m.t === "held") {
        navigator.locks?.request(`herald-tab-${id}`, () => forget(id));
      } else if (m.t === "emit") {
        const reply = link ? link.request(m.event, m.args) : Promise.reject(new Error("closed"));
        reply.then(
          (args) => port.postMessage({ t: "answer", n: m.n, args }),
          (error) => port.postMessage({ t: "answer", n: m.n, error: error.message }),
        );
      } else if (m.t === "send") {
        link?.send(m.event, m.args);
      } else if (m.t === "token") {
        asks.get(m.n)?.(m.token);
        asks.delete(m.n);
      } else if (m.t === "bye") {
        forget(id);
      }
    };
  };
}

if (typeof SharedWorkerGlobalScope === "function" && globalThis instanceof SharedWorkerGlobalScope) serveTabs();
