// The admin console: polls the admin API every few seconds, draws what it gets, and runs the actions (publish,
// disconnect, join, leave) and the live tail. The site shown is in the URL's hash (#site=<name>).

import { api, tail } from "./api.js";
import { COLORS, compact, sparkline, timeChart } from "./charts.js";
import * as view from "./views.js";

const { $, el } = view;
const REFRESH_MS = 3000;
const TAIL_KEEP = 200;
const HOUR = 3_600_000;
const DEVICES_HINT = $("devices-status").textContent;

const state = {
  overview: null,
  site: new URLSearchParams(location.hash.slice(1)).get("site"),
  room: null,
  socketQuery: "",
  roomQuery: "",
  selected: null,
  user: null,
  seenSockets: null,
  samples: null,
  closeTail: null,
  timer: null,
};

// ---- polling ----------------------------------------------------------------------------------------------

async function refresh() {
  clearTimeout(state.timer);
  try {
    state.overview = await api.overview();
    const names = state.overview.sites.map((s) => s.name);
    if (!names.includes(state.site)) selectSite(names[0], { quiet: true });
    drawOverview();
    if (state.site) await refreshSite();
    setLive(true);
  } catch (error) {
    setLive(false, error.message);
  } finally {
    // Refreshes asked for by an action may overlap the timer's: one timer stays.
    clearTimeout(state.timer);
    state.timer = setTimeout(refresh, REFRESH_MS);
  }
}

async function refreshSite() {
  const site = state.site;
  const [samples, sockets, rooms] = await Promise.all([
    api.connections(site),
    api.sockets(site, { room: state.room, q: state.socketQuery }),
    api.rooms(site, { q: state.roomQuery }),
  ]);
  if (site !== state.site) return;
  state.samples = samples;
  drawCharts();
  drawSockets(sockets);
  drawRooms(rooms);
  await drawRetained(site, state.room);
  if (state.selected) await refreshSocket();
  if (state.user) await refreshDevices();
}

function setLive(on, why) {
  const live = $("live");
  live.className = `live ${on ? "on" : "off"}`;
  $("live-text").textContent = on ? `live · ${new Date().toLocaleTimeString()}` : `offline: ${why}`;
  document.body.dataset.refreshed = String(Date.now());
}

// ---- overview: top bar, sites, cluster, bridges -----------------------------------------------------------

function drawOverview() {
  const o = state.overview;
  $("node-info").replaceChildren(
    "node ", el("code", {}, o.node), ` · herald ${o.version} · up ${view.duration(Date.now() - o.startedAt)}`,
    o.nodes.length > 1 ? ` · ${view.plural(o.nodes.length, "node")}` : "",
    o.tails ? ` · ${view.plural(o.tails, "tail")} open` : "",
  );
  view.fill(
    $("sites"),
    o.sites.map((s) =>
      el(
        "li",
        {},
        el(
          "button",
          { type: "button", class: s.name === state.site ? "active" : "", data: { site: s.name }, onclick: () => selectSite(s.name) },
          el("span", {}, s.name),
          el("span", { class: "count badge" }, s.sockets),
        ),
      ),
    ),
  );
  view.fill($("nodes-mini"), o.nodes.map((n) => el("li", {}, el("span", { class: "state up", title: "alive" }), el("code", {}, n.id), n.self ? el("span", { class: "muted" }, "this node") : null)));
  $("nodes-count").textContent = o.nodes.length;
  view.fill($("nodes"), o.nodes.map((n) => el("tr", {}, el("td", {}, el("code", {}, n.id)), el("td", {}, n.url), el("td", { class: "muted" }, n.self ? "this node" : "peer"))));
  $("bridges-count").textContent = o.bridges.length;
  view.fill(
    $("bridges"),
    o.bridges.map((b) =>
      el(
        "tr",
        { title: b.last_error ?? "" },
        el("td", {}, b.bridge),
        el("td", {}, b.site),
        el("td", {}, view.state(b.state)),
        el("td", { class: "num" }, b.published),
        el("td", { class: "num" }, b.rejected),
        el("td", { class: "num" }, b.retried),
      ),
    ),
    $("bridges-empty"),
  );
  const site = o.sites.find((s) => s.name === state.site);
  if (!site) return;
  $("site-name").textContent = site.name;
  $("site-tags").replaceChildren(
    el("span", { class: `tag ${site.mailbox ? "on" : ""}` }, site.mailbox ? "mailboxes" : "no mailboxes"),
    el("span", { class: `tag ${site.recovery ? "on" : ""}` }, site.recovery ? "recovery" : "no recovery"),
  );
  const notes = [];
  if (site.publicChannel) notes.push(`public channel ${site.publicChannel}`);
  if (site.userRoomPrefix) notes.push(`user rooms ${site.userRoomPrefix}…`);
  $("site-notes").textContent = notes.join(" · ");
  $("stat-connections").textContent = compact(site.sockets);
}

// ---- charts -----------------------------------------------------------------------------------------------

/**
 * Per-second rates between consecutive samples. The last sample is taken when the page asks: when it comes
 * less than a second after the one before, that one is left out, so the newest rate spans a few seconds.
 */
function rates(all) {
  const samples = all.slice();
  if (samples.length >= 3 && samples.at(-1).at - samples.at(-2).at < 1000) samples.splice(-2, 1);
  const out = { times: [], publishes: [], deliveries: [] };
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].at - samples[i - 1].at) / 1000;
    if (dt < 1) continue;
    out.times.push(samples[i].at);
    out.publishes.push(Math.max(0, samples[i].publishes - samples[i - 1].publishes) / dt);
    out.deliveries.push(Math.max(0, samples[i].deliveries - samples[i - 1].deliveries) / dt);
  }
  return out;
}

function domain(times) {
  const end = times.at(-1) ?? Date.now();
  const start = Math.max(end - HOUR, times[0] ?? end);
  return [Math.min(start, end - 60_000), end];
}

function drawCharts() {
  const { samples, transports } = state.samples;
  const times = samples.map((s) => s.at);
  const series = transports.map((key, i) => ({ key, label: key, values: samples.map((s) => s.connections[i]) }));
  timeChart($("chart-connections"), { times, series, stacked: true, integer: true, domain: domain(times) });
  const now = samples.at(-1);
  $("legend-connections").replaceChildren(
    ...series.map((s, i) => el("span", { class: "key" }, el("span", { class: `swatch ${s.key}` }), s.label, " ", el("b", {}, now.connections[i]))),
  );
  const spanMin = Math.round((times.at(-1) - times[0]) / 60_000);
  $("chart-span").textContent = `this node · ${spanMin >= 60 ? "last hour" : `last ${Math.max(1, spanMin)} min`} · every ${state.samples.everyMs / 1000} s`;

  const r = rates(samples);
  const throughput = [
    { key: "publishes", label: "publishes", values: r.publishes },
    { key: "deliveries", label: "deliveries", values: r.deliveries },
  ];
  timeChart($("chart-throughput"), { times: r.times, series: throughput, domain: domain(times), format: compact });
  const last = (values) => values.at(-1) ?? 0;
  $("legend-throughput").replaceChildren(
    ...throughput.map((s) => el("span", { class: "key" }, el("span", { class: `swatch ${s.key}` }), s.label, " ", el("b", {}, `${compact(last(s.values))}/s`))),
  );
  $("stat-publishes").textContent = compact(last(r.publishes));
  $("stat-deliveries").textContent = compact(last(r.deliveries));
  const recent = samples.slice(-60);
  sparkline($("spark-connections"), recent.map((s) => s.connections.reduce((a, b) => a + b, 0)), COLORS.websocket);
  sparkline($("spark-publishes"), r.publishes.slice(-60), COLORS.publishes);
  sparkline($("spark-deliveries"), r.deliveries.slice(-60), COLORS.deliveries);
}

// ---- sockets and rooms ------------------------------------------------------------------------------------

function drawSockets(listing) {
  const previous = state.seenSockets;
  state.seenSockets = new Set(listing.sockets.map((s) => s.id));
  $("sockets-count").textContent = listing.total ?? listing.sockets.length;
  const rows = listing.sockets.map((socket) =>
    view.socketRow(socket, {
      selected: socket.id === state.selected,
      fresh: previous && !previous.has(socket.id),
      onSelect: selectSocket,
    }),
  );
  view.fill($("sockets"), rows, $("sockets-empty"));
  $("sockets-empty").textContent = state.room || state.socketQuery ? "No socket matches." : "No socket is connected to this site.";
  if (listing.partial) $("sockets-empty").textContent += ` Nodes ${listing.unreachable.join(", ")} did not answer.`;
}

function drawRooms(listing) {
  $("rooms-count").textContent = listing.total;
  $("stat-rooms").textContent = compact(listing.total);
  const largest = listing.rooms[0];
  $("stat-rooms-sub").textContent = largest ? `largest: ${view.preview(largest.room, 24)} · ${view.plural(largest.members, "member")}` : "\u00a0";
  view.fill($("rooms"), listing.rooms.map((room) => view.roomRow(room, pickRoom)), $("rooms-empty"));
}

/** What the picked room retains, under the rooms. */
async function drawRetained(site, room) {
  $("retained").classList.toggle("hidden", !room);
  if (!room) return;
  const { retained } = await api.retained(site, room);
  if (site !== state.site || room !== state.room) return;
  $("retained-room").textContent = room;
  const items = retained.map((r) =>
    el("li", { title: view.fullTime(r.at) }, el("b", {}, r.event), " ", el("code", {}, view.preview(r.args, 160)), el("span", { class: "muted" }, ` · ${view.ago(r.at)}`)),
  );
  $("retained-list").replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "Nothing: publish with Retain to keep a value here.")]));
}

function pickRoom(room) {
  state.room = room;
  const chip = $("room-filter");
  chip.replaceChildren(
    "room ",
    el("code", {}, room),
    el("button", { type: "button", "aria-label": "Show every room", onclick: () => pickRoom(null) }, "✕"),
  );
  chip.classList.toggle("hidden", !room);
  $("tail-room").value = room ?? $("tail-room").value;
  refresh();
}

// ---- one socket -------------------------------------------------------------------------------------------

function selectSocket(id) {
  state.selected = id;
  $("socket-panel").classList.remove("hidden");
  $("socket-id").textContent = id;
  $("rooms-result").textContent = "";
  resetDisconnect();
  for (const row of $("sockets").children) row.classList.toggle("selected", row.dataset.id === id);
  refreshSocket();
}

async function refreshSocket() {
  const id = state.selected;
  try {
    const socket = await api.socket(state.site, id);
    if (id !== state.selected) return;
    $("socket-details").replaceChildren(...view.details(socket));
    $("socket-panel").dataset.state = "connected";
    $("disconnect").disabled = false;
    $("rooms-form").classList.remove("hidden");
  } catch (error) {
    if (error.status !== 404 || id !== state.selected) throw error;
    $("socket-panel").dataset.state = "gone";
    $("socket-details").replaceChildren(el("div", {}, el("dt", {}, "State"), el("dd", {}, "This socket has left the site.")));
    $("disconnect").disabled = true;
    $("rooms-form").classList.add("hidden");
  }
}

let confirmTimer = null;
function resetDisconnect() {
  clearTimeout(confirmTimer);
  const button = $("disconnect");
  button.textContent = "Disconnect";
  delete button.dataset.armed;
}

$("disconnect").addEventListener("click", async () => {
  const button = $("disconnect");
  if (!button.dataset.armed) {
    button.dataset.armed = "1";
    button.textContent = "Click again to disconnect";
    confirmTimer = setTimeout(resetDisconnect, 4000);
    return;
  }
  resetDisconnect();
  try {
    await api.disconnect(state.site, state.selected);
    result($("rooms-result"), true, "Disconnected: the client was told 'io server disconnect'.");
  } catch (error) {
    result($("rooms-result"), false, error.message);
  }
  refresh();
});

$("close-socket").addEventListener("click", () => {
  state.selected = null;
  $("socket-panel").classList.add("hidden");
  for (const row of $("sockets").children) row.classList.remove("selected");
});

$("rooms-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const room = $("room-name").value.trim();
  const action = event.submitter?.value === "leave" ? "leave" : "join";
  try {
    const answer = await api.changeRooms(state.site, state.selected, { [action]: [room] });
    result($("rooms-result"), true, `${action === "join" ? "Joined" : "Left"} ${room}: now in ${answer.rooms.slice(1).join(", ") || "no room"}.`);
  } catch (error) {
    result($("rooms-result"), false, error.message);
  }
  refresh();
});

function result(node, ok, text) {
  node.className = `result ${ok ? "ok" : "error"}`;
  node.textContent = text;
}

// ---- publish ----------------------------------------------------------------------------------------------

$("pub-all").addEventListener("change", () => ($("pub-rooms").disabled = $("pub-all").checked));

$("publish-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = $("publish-result");
  let args;
  try {
    args = JSON.parse($("pub-args").value || "[]");
  } catch (error) {
    return result(out, false, `The arguments are not JSON: ${error.message}`);
  }
  if (!Array.isArray(args)) return result(out, false, "The arguments must be a JSON array, one item per argument.");
  const body = { event: $("pub-event").value.trim(), args };
  if ($("pub-all").checked) body.all = true;
  else body.rooms = $("pub-rooms").value.split(",").map((r) => r.trim()).filter(Boolean);
  if ($("pub-retain").checked) body.retain = true;
  $("publish").disabled = true;
  try {
    const outcome = await api.publish(state.site, body);
    const parts = [`reached ${view.plural(outcome.matched, "socket")} on this node`];
    if (outcome.queued) parts.push(`${view.plural(outcome.queued, "mailbox entry", "mailbox entries")} queued`);
    if (outcome.changed !== undefined) parts.push(outcome.changed ? "retained value changed" : "retained value unchanged");
    result(out, true, `Published '${body.event}': ${parts.join(", ")}.`);
  } catch (error) {
    result(out, false, error.message);
  } finally {
    $("publish").disabled = false;
  }
});

// ---- live tail --------------------------------------------------------------------------------------------

function stopTail(message) {
  state.closeTail?.();
  state.closeTail = null;
  $("tail-toggle").textContent = "Start";
  $("tail-status").dataset.state = "stopped";
  if (message) $("tail-status").textContent = message;
}

function startTail() {
  const room = $("tail-room").value.trim() || null;
  const list = $("tail");
  list.replaceChildren(el("li", { class: "tail-empty" }, "Waiting for publishes…"));
  $("tail-toggle").textContent = "Stop";
  $("tail-status").dataset.state = "opening";
  $("tail-status").textContent = "Opening the tail…";
  const where = room ? `room ${room}` : "every room";
  state.closeTail = tail(state.site, room, {
    ready: () => {
      $("tail-status").dataset.state = "tailing";
      $("tail-status").textContent = `Tailing ${where} of ${state.site}, live.`;
    },
    publish: (record) => {
      list.querySelector(".tail-empty")?.remove();
      list.prepend(view.tailItem(record));
      while (list.children.length > TAIL_KEEP) list.lastChild.remove();
    },
    lagged: (dropped) => list.prepend(el("li", { class: "lagged" }, `${view.plural(dropped, "publish", "publishes")} skipped: this page did not keep up.`)),
    error: (readyState) => {
      if (readyState === EventSource.CLOSED) stopTail("The tail was closed by the server (too many tails, or it is shutting down).");
      else $("tail-status").textContent = "Reconnecting the tail…";
    },
  });
}

$("tail-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (state.closeTail) stopTail("Stopped.");
  else startTail();
});

// ---- user devices -----------------------------------------------------------------------------------------

$("user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.user = $("user-name").value.trim();
  refreshDevices();
});

async function refreshDevices() {
  const user = state.user;
  try {
    const answer = await api.devices(state.site, user);
    if (user !== state.user) return;
    $("devices-status").textContent = answer.devices.length
      ? `${answer.user}: ${view.plural(answer.devices.length, "device")}, refreshed ${new Date().toLocaleTimeString()}.`
      : `${answer.user} has no device with a mailbox.`;
    $("devices").replaceChildren(...answer.devices.map(view.device));
  } catch (error) {
    if (error.status === 401) throw error;
    $("devices-status").textContent = error.message;
    $("devices").replaceChildren();
    state.user = null;
  }
}

// ---- site selection ---------------------------------------------------------------------------------------

function selectSite(name, { quiet = false } = {}) {
  if (name === state.site && !quiet) return;
  state.site = name ?? null;
  state.room = null;
  state.selected = null;
  state.user = null;
  state.seenSockets = null;
  history.replaceState(null, "", name ? `#site=${encodeURIComponent(name)}` : "#");
  $("room-filter").classList.add("hidden");
  $("socket-panel").classList.add("hidden");
  $("devices").replaceChildren();
  $("devices-status").textContent = DEVICES_HINT;
  $("publish-result").textContent = "";
  if (state.closeTail) stopTail("Stopped: another site was chosen.");
  $("tail").replaceChildren();
  if (!quiet) refresh();
}

let searchTimer = null;
for (const [input, key] of [["socket-search", "socketQuery"], ["room-search", "roomQuery"]]) {
  $(input).addEventListener("input", () => {
    state[key] = $(input).value.trim();
    clearTimeout(searchTimer);
    searchTimer = setTimeout(refresh, 250);
  });
}

window.addEventListener("resize", () => state.samples && drawCharts());
refresh();
