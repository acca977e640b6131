// The console's calls to herald's admin API (/api/v1/admin). The session cookie goes with every same-origin
// request; a 401 means it expired or was logged out, so the page goes back to the login form.

const BASE = "/api/v1/admin";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(BASE + path, init);
  if (res.status === 401) {
    location.assign("/admin");
    throw new ApiError(401, "logged out");
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!res.ok) throw new ApiError(res.status, data?.error ?? `HTTP ${res.status}`);
  return data;
}

const site = (name) => `/sites/${encodeURIComponent(name)}`;
const query = (params) => {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
};

export const api = {
  overview: () => call("GET", "/overview"),
  connections: (name) => call("GET", `${site(name)}/connections`),
  sockets: (name, { room, q } = {}) => call("GET", `${site(name)}/sockets${query({ room, q })}`),
  socket: (name, id) => call("GET", `${site(name)}/sockets/${encodeURIComponent(id)}`),
  rooms: (name, { q } = {}) => call("GET", `${site(name)}/rooms${query({ q })}`),
  retained: (name, room) => call("GET", `${site(name)}/rooms/${encodeURIComponent(room)}/retained`),
  devices: (name, user) => call("GET", `${site(name)}/users/${encodeURIComponent(user)}/devices`),
  publish: (name, body) => call("POST", `${site(name)}/publish`, body),
  disconnect: (name, id) => call("DELETE", `${site(name)}/sockets/${encodeURIComponent(id)}`),
  changeRooms: (name, id, body) => call("POST", `${site(name)}/sockets/${encodeURIComponent(id)}/rooms`, body),
};

/**
 * Opens the live tail of a site (or one room of it). `on.ready()`, `on.publish(record)`, `on.lagged(n)` and
 * `on.error()` are called as the stream goes; returns a function that closes it.
 */
export function tail(name, room, on) {
  const source = new EventSource(`${BASE}${site(name)}/tail${query({ room })}`);
  source.addEventListener("ready", () => on.ready?.());
  source.addEventListener("publish", (e) => on.publish?.(JSON.parse(e.data)));
  source.addEventListener("lagged", (e) => on.lagged?.(JSON.parse(e.data).dropped));
  source.addEventListener("error", () => on.error?.(source.readyState));
  return () => source.close();
}
