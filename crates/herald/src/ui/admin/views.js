// DOM building for the console. Everything a client or publisher chose (room names, users, arguments) goes in
// as text, never as HTML.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) node.dataset[dk] = dv;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

/** "12 s", "4 min", "3 h 5 min", "2 d" */
export function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  return `${Math.floor(h / 24)} d`;
}

export const ago = (at) => `${duration(Date.now() - at)} ago`;
export const fullTime = (at) => new Date(at).toLocaleString();
export const plural = (n, one, many = one + "s") => `${n} ${n === 1 ? one : many}`;

/** `json` as one line, cut at `max` characters. */
export function preview(json, max = 240) {
  const text = typeof json === "string" ? json : JSON.stringify(json);
  return text.length > max ? text.slice(0, max) + "…" : text;
}

export function transport(name) {
  return el("span", { class: `transport ${name}` }, el("span", {}, name));
}

export function state(name) {
  return el("span", { class: `state ${name}` }, name);
}

export function roomPills(rooms, own) {
  const shown = rooms.filter((r) => r !== own);
  if (!shown.length) return el("span", { class: "muted" }, "—");
  return el("span", {}, shown.map((r) => el("span", { class: "room-pill", title: r }, preview(r, 28))));
}

/** Fills `tbody` with `rows` and shows `empty` when there are none. */
export function fill(tbody, rows, empty) {
  tbody.replaceChildren(...rows);
  empty?.classList.toggle("hidden", rows.length > 0);
}

export function socketRow(socket, { selected, fresh, onSelect }) {
  const classes = ["clickable", selected ? "selected" : "", fresh ? "fresh" : ""].join(" ").trim();
  return el(
    "tr",
    { class: classes, data: { id: socket.id }, onclick: () => onSelect(socket.id) },
    el("td", {}, el("code", { title: socket.id }, preview(socket.id, 22))),
    el("td", {}, socket.user ?? el("span", { class: "muted" }, "anonymous")),
    el("td", {}, socket.deviceId ?? el("span", { class: "muted" }, "—")),
    el("td", {}, transport(socket.transport ?? "unknown")),
    el("td", {}, roomPills(socket.rooms ?? [], socket.id)),
    el("td", { title: fullTime(socket.connectedAt) }, ago(socket.connectedAt)),
    el("td", {}, el("code", {}, socket.node ?? "")),
  );
}

export function roomRow(room, onPick) {
  return el(
    "tr",
    { class: "clickable", data: { room: room.room }, onclick: () => onPick(room.room), title: "Show its sockets" },
    el("td", {}, el("code", {}, room.room)),
    el("td", { class: "num" }, room.members),
  );
}

export function details(socket) {
  const item = (label, value) => el("div", {}, el("dt", {}, label), el("dd", {}, value ?? el("span", { class: "muted" }, "—")));
  return [
    item("User", socket.user),
    item("Device", socket.deviceId),
    item("User room", socket.userRoom && el("code", {}, socket.userRoom)),
    item("Transport", transport(socket.transport)),
    item("Connected since", `${new Date(socket.connectedAt).toLocaleTimeString()} (${ago(socket.connectedAt)})`),
    item("Node", el("code", {}, socket.node)),
    item("Protocol", `Engine.IO v${socket.eio}${socket.recovers ? " · recovers missed packets" : ""}`),
    item("Rooms", roomPills(socket.rooms, socket.id)),
  ];
}

export function tailItem(record) {
  const reach = record.all ? "every socket" : [...(record.rooms ?? []), ...(record.sockets ?? [])].join(", ");
  const outcome = record.error
    ? el("span", { class: "failed" }, `refused: ${record.error}`)
    : record.outcome
      ? `${plural(record.outcome.matched ?? 0, "socket")}${record.outcome.queued ? `, ${plural(record.outcome.queued, "mailbox entry", "mailbox entries")}` : ""}`
      : "";
  const args = record.args !== undefined ? preview(record.args, 400) : `${record.argsPreview}… (${record.argsBytes} bytes)`;
  return el(
    "li",
    { class: "new", data: { event: record.event ?? "" } },
    el(
      "div",
      { class: "meta" },
      el("span", {}, new Date(record.at).toLocaleTimeString()),
      el("span", { class: `src ${record.source}` }, record.source),
      el("span", { class: "event" }, record.event ?? "?"),
      el("span", {}, "→ ", reach || "—"),
      record.retain ? el("span", { class: "src" }, "retained") : null,
      el("span", {}, outcome),
    ),
    el("div", { class: "args" }, args),
  );
}

export function device(d) {
  const status = d.connected
    ? state("connected")
    : el("span", { class: "state idle", title: d.expiresAtMs ? fullTime(d.expiresAtMs) : "" }, d.expiresAtMs ? `offline, expires in ${duration(d.expiresAtMs - Date.now())}` : "offline");
  const entries = d.entries.map((e) =>
    el("li", {}, el("code", {}, `#${e.offset} `), el("b", {}, e.event), " ", preview(e.args, 160)),
  );
  const more = d.pending > d.entries.length ? el("li", { class: "muted" }, `and ${d.pending - d.entries.length} more`) : null;
  return el(
    "div",
    { class: "device", data: { device: d.deviceId } },
    el("h3", {}, el("code", {}, d.deviceId), status),
    el("div", { class: "muted small" }, `${plural(d.pending, "pending entry", "pending entries")} · ${d.bytes} bytes${d.overflowed ? " · overflowed" : ""}`),
    d.entries.length ? el("ol", { class: "entries" }, entries, more) : null,
  );
}
