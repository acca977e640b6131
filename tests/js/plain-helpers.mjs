// Clients of herald's plain endpoints, as a device or a browser without socket.io would be: a plain WebSocket
// (the `ws` package) on `/ws/<site>` and an event stream (fetch, parsed by hand as EventSource does) on
// `/sse/<site>`. Each records what it got, so a test can wait for it or check that nothing more came.

import WebSocket from "ws";
import { STEP_TIMEOUT_MS, until } from "./util.mjs";

/** A plain WebSocket client. `frames` holds every JSON frame received; `closed` resolves { code, reason }. */
export class PlainSocket {
  constructor(url, { headers, autoAck = false, ...options } = {}) {
    this.frames = [];
    this.ws = new WebSocket(url, { headers, ...options });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", resolve);
      this.ws.once("error", reject);
    });
    this.closed = new Promise((resolve) => {
      this.ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    this.closed.then((c) => (this.closedWith = c));
    this.ws.on("message", (data) => {
      const frame = JSON.parse(data.toString());
      this.frames.push(frame);
      if (autoAck && frame.type === "event" && frame.id !== undefined) this.send({ type: "ack", id: frame.id });
    });
  }

  send(frame) {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /** Waits for the first frame (after `from`) that `pred` accepts; resolves it. */
  async next(pred, what = "a frame", ms = STEP_TIMEOUT_MS) {
    let found;
    await until(() => (found = this.frames.find(pred)) !== undefined, ms, what);
    return found;
  }

  welcome() {
    return this.next((f) => f.type === "welcome", "the welcome frame");
  }

  /** The events received named `event`, as their args. */
  events(event) {
    return this.frames.filter((f) => f.type === "event" && f.event === event);
  }

  /** Sends a client event with an id; resolves the reply or error frame answering it. */
  async request(event, args, id) {
    this.send({ type: "event", event, args, id });
    return this.next((f) => (f.type === "reply" || f.type === "error") && f.id === id, `the answer to ${id}`);
  }

  close() {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.terminate();
  }
}

/**
 * An event stream on `url`, read with fetch and parsed as EventSource does (blank-line separated blocks of
 * `id:`, `event:`, `data:` fields, `:` comments). `events` holds { id, event, data } with `data` parsed as
 * JSON; `comments` the comment lines. `status` and `body` are set when the answer is not a stream.
 */
export class EventStream {
  static async open(url, { headers = {} } = {}) {
    const stream = new EventStream();
    stream.abort = new AbortController();
    const res = await fetch(url, { headers: { accept: "text/event-stream", ...headers }, signal: stream.abort.signal });
    stream.status = res.status;
    stream.contentType = res.headers.get("content-type");
    stream.headers = res.headers;
    if (!stream.contentType?.startsWith("text/event-stream")) {
      stream.body = await res.json().catch(() => null);
      return stream;
    }
    stream.ended = stream.#read(res.body);
    return stream;
  }

  constructor() {
    this.events = [];
    this.comments = [];
    this.done = false;
  }

  async #read(body) {
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for await (const chunk of body) {
        buffer += decoder.decode(chunk, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          this.#block(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch {
      // Aborted by close().
    } finally {
      this.done = true;
    }
  }

  #block(block) {
    const event = { id: undefined, event: "message", data: "" };
    let fields = 0;
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) {
        this.comments.push(line);
        continue;
      }
      const colon = line.indexOf(":");
      const [name, value] = colon < 0 ? [line, ""] : [line.slice(0, colon), line.slice(colon + 1).replace(/^ /, "")];
      fields++;
      if (name === "id") event.id = value;
      else if (name === "event") event.event = value;
      else if (name === "data") event.data += (event.data ? "\n" : "") + value;
    }
    if (fields === 0) return;
    event.data = JSON.parse(event.data);
    this.events.push(event);
  }

  /** Waits for the first event `pred` accepts. */
  async next(pred, what = "an event", ms = STEP_TIMEOUT_MS) {
    let found;
    await until(() => (found = this.events.find(pred)) !== undefined, ms, what);
    return found;
  }

  named(event) {
    return this.events.filter((e) => e.event === event);
  }

  /** The id of the last event that had one, as EventSource keeps it. */
  lastId() {
    return this.events.filter((e) => e.id !== undefined).at(-1)?.id;
  }

  close() {
    this.abort?.abort();
  }
}

/** The ws:// URL of `/ws/<site>` on gateway `gw`, with `query` pairs. */
export const wsUrl = (gw, site, query = {}) => `${gw.url.replace(/^http/, "ws")}/ws/${site}${qs(query)}`;

/** The URL of `/sse/<site>` on gateway `gw`, with `query` pairs. */
export const sseUrl = (gw, site, query = {}) => `${gw.url}/sse/${site}${qs(query)}`;

function qs(query) {
  const pairs = Object.entries(query).filter(([, v]) => v !== undefined);
  return pairs.length ? `?${new URLSearchParams(pairs)}` : "";
}
