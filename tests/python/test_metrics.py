"""`GET /metrics` of the `herald` gateway (README.md, "Metrics"), read with the official Prometheus text-format
parser (`prometheus_client.parser`), while python-socketio clients connect, are refused, receive, emit and leave.

The module starts a real HTTP backend in a thread (the auth webhook, one event route, socket hooks and
`updateUserUrl`) and one `herald --config FILE --port P --data-dir DIR` with `HERALD_METRICS_TOKEN` set and two
sites: `shop` (webhook auth, a webhook event route, a relayed event, a connect hook) and `inbox` (the same auth,
with per-device mailboxes and `updateUserUrl`). A herald with `server.metrics: false` checks that `/metrics` is
then off. Two herald nodes on Redis (database HERALD_TEST_METRICS_REDIS_DB, default 11, which this module owns
and flushes; scripts/services.sh starts Redis, and the test fails without it) check the cluster's node count
and the publishes of the socket.io Redis emitter and of a Redis bridge.

The binary is HERALD_GATEWAY_BIN, else the `herald` beside HERALD_BIN's herald-conformance (default
<repo>/target/debug/herald), as in test_two_way.py.
"""

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
import socketio
from prometheus_client.parser import text_string_to_metric_families

from helpers import Backend, Recorder, run_gateway

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
STEP_TIMEOUT = 5.0  # any single wait
API_KEY = "metrics-key-0123456789"
METRICS_TOKEN = "metrics-token-0123456789"
LIMITS = [
    "header_read_timeout_ms",
    "idle_timeout_ms",
    "max_http_connections",
    "max_header_bytes",
    "max_handshake_bytes",
    "max_connections",
    "max_auth_attempts",
    "max_concurrent_auth",
    "max_devices_per_user",
    "store_timeout_ms",
    "outbox_frames",
    "max_payload_bytes",
    "client_events_per_sec",
    "client_events_in_flight",
    "max_client_event_bytes",
    "max_retained",
    "connects_per_ip_per_sec",
    "publishes_per_key_per_sec",
]

REDIS = ("127.0.0.1", 6379)
REDIS_DB = int(os.environ.get("HERALD_TEST_METRICS_REDIS_DB", "11"))
EMITTER_FIXTURES = REPO_ROOT / "crates" / "herald" / "src" / "bridges" / "emitter" / "fixtures"

pytestmark = pytest.mark.timeout(60)


# ---- the backend ---------------------------------------------------------------------------------


def _auth(call):
    parts = call.headers.get("authorization", "").removeprefix("Bearer ").split("~")
    if parts[0] == "ok" and len(parts) > 1:
        return 200, {"user": parts[1], "rooms": parts[2].split("+") if len(parts) > 2 and parts[2] else []}
    return 401, {"error": "bad token"}


def _routes():
    ok = lambda call: (200, {})  # noqa: E731
    routes = {"/auth": _auth, "/events/echo": lambda call: (200, {"reply": call.body["args"]})}
    return _Prefixed(routes, ("/hooks/", "/users/"), ok)


class _Prefixed(dict):
    """A route table that also answers every path under `prefixes` with `route`."""

    def __init__(self, routes, prefixes, route):
        super().__init__(routes)
        self.prefixes = prefixes
        self.route = route

    def get(self, path, default=None):
        if path in self:
            return self[path]
        return self.route if path.startswith(self.prefixes) else default


def _config_yaml(backend_url, metrics=True):
    return f"""
server:
  metrics: {"true" if metrics else "false"}
sites:
  - name: shop
    api_keys: [{API_KEY}]
    auth: {{kind: webhook, url: "{backend_url}/auth"}}
    recovery_window_ms: 0
    events:
      echo: {{url: "{backend_url}/events/echo"}}
      chat: {{relay: true}}
    hooks:
      connect: "{backend_url}/hooks/connect"
  - name: inbox
    api_keys: [{API_KEY}]
    auth: {{kind: webhook, url: "{backend_url}/auth"}}
    user_room_prefix: user_
    update_user_url: "{backend_url}/users/:id"
    recovery_window_ms: 0
"""


@pytest.fixture(scope="module")
def backend():
    b = Backend(_routes(), "metrics-backend")
    yield b
    b.close()


@pytest.fixture(scope="module")
def gateway_url(backend):
    with run_gateway(_config_yaml(backend.url), "herald-py-metrics-", {"HERALD_METRICS_TOKEN": METRICS_TOKEN}) as url:
        yield url


# ---- reading /metrics ----------------------------------------------------------------------------


def scrape(url, token=METRICS_TOKEN):
    """Every sample of `/metrics`, parsed by prometheus_client: {(sample name, sorted labels): value}, and the
    families by name."""
    response = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=STEP_TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4", response.headers
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = {}
    for family in families.values():
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Snapshot(samples, families)


class Snapshot:
    def __init__(self, samples, families):
        self.samples = samples
        self.families = families

    def get(self, name, **labels):
        """The value of one sample; 0 when it is not there yet."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(url, check, timeout=STEP_TIMEOUT):
    """Scrapes until `check(snapshot)` holds; returns that snapshot, or fails with the last one's mismatch."""
    deadline = time.monotonic() + timeout
    while True:
        snap = scrape(url)
        try:
            check(snap)
            return snap
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ---- clients -------------------------------------------------------------------------------------


@pytest.fixture
def clients(gateway_url):
    created = []

    def make(namespace, token, transport="websocket", handlers=None, device=None):
        sio = socketio.Client(reconnection=False, request_timeout=5)
        for event, fn in (handlers or {}).items():
            sio.on(event, fn, namespace=namespace)
        created.append(sio)
        auth = {"token": token}
        if device:
            auth["deviceId"] = device
        sio.connect(gateway_url, namespaces=[namespace], transports=[transport], auth=auth, wait_timeout=STEP_TIMEOUT)
        return sio

    yield make
    for sio in created:
        try:
            sio.disconnect()
        except Exception:
            pass


def uniq(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def publish(url, site, body):
    response = requests.post(
        f"{url}/api/v1/sites/{site}/publish",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json=body,
        timeout=STEP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    return response.json()


# ---- tests ---------------------------------------------------------------------------------------


def test_the_token_guards_metrics(gateway_url):
    assert requests.get(f"{gateway_url}/metrics", timeout=STEP_TIMEOUT).status_code == 401
    wrong = requests.get(f"{gateway_url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=STEP_TIMEOUT)
    assert wrong.status_code == 401
    assert wrong.headers.get("www-authenticate") == "Bearer"
    snap = scrape(gateway_url)
    # Every metric of the issue is there, with its HELP text, before anything happened.
    for name, kind in [
        ("herald_connections", "gauge"),
        ("herald_connects", "counter"),
        ("herald_deliveries", "counter"),
        ("herald_publishes", "counter"),
        ("herald_disconnects", "counter"),
        ("herald_mailbox_pending", "gauge"),
        ("herald_cluster_nodes", "gauge"),
        ("herald_client_events", "counter"),
        ("herald_limit_hits", "counter"),
    ]:
        family = snap.families.get(name)
        assert family is not None, f"{name} missing: {sorted(snap.families)}"
        assert family.type == kind, (name, family.type)
        assert family.documentation, f"{name} has no HELP"
    assert snap.get("herald_cluster_nodes") == 1
    for transport in ["polling", "websocket", "plain-websocket", "sse"]:
        assert ("herald_connections", (("site", "shop"), ("transport", transport))) in snap.samples
    for limit in LIMITS:
        assert ("herald_limit_hits_total", (("limit", limit),)) in snap.samples, limit


def test_values_move_as_clients_connect_receive_and_leave(gateway_url, backend, clients):
    url = gateway_url
    room = uniq("team")
    shop = {"site": "shop"}
    before = scrape(url)

    # Two clients connect, one over each socket.io transport; each is an auth webhook call.
    news_ws, news_poll = Recorder(), Recorder()
    ws = clients("/shop", f"ok~alice~{room}", "websocket", handlers={"news": news_ws})
    poll = clients("/shop", f"ok~bob~{room}", "polling", handlers={"news": news_poll})
    connected = scrape(url)
    for transport in ["websocket", "polling"]:
        key = dict(site="shop", transport=transport)
        assert connected.get("herald_connections", **key) == before.get("herald_connections", **key) + 1, transport
    assert connected.get("herald_connects_total", **shop, result="accepted") == before.get(
        "herald_connects_total", **shop, result="accepted"
    ) + 2
    auth = dict(site="shop", kind="auth")
    assert connected.get("herald_webhook_duration_seconds_count", **auth) == before.get(
        "herald_webhook_duration_seconds_count", **auth
    ) + 2
    assert connected.get("herald_webhook_duration_seconds_bucket", **auth, le="+Inf") == connected.get(
        "herald_webhook_duration_seconds_count", **auth
    )
    # Each socket's connect hook is one more backend call, made on its own task.
    hook = dict(site="shop", kind="hook")
    wait_until(
        url,
        lambda snap: _equal(
            snap.get("herald_webhook_duration_seconds_count", **hook),
            before.get("herald_webhook_duration_seconds_count", **hook) + 2,
        ),
    )

    # A client the auth webhook refuses.
    with pytest.raises(socketio.exceptions.ConnectionError):
        clients("/shop", "bad-token")
    refused = scrape(url)
    assert refused.get("herald_connects_total", **shop, result="refused") == before.get(
        "herald_connects_total", **shop, result="refused"
    ) + 1

    # A publish through the API reaches both: one publish, two deliveries, one timed publish.
    publish(url, "shop", {"rooms": [room], "event": "news", "args": [{"n": 1}]})
    news_ws.wait_for(1)
    news_poll.wait_for(1)
    published = scrape(url)
    assert published.get("herald_publishes_total", **shop, source="api") == before.get(
        "herald_publishes_total", **shop, source="api"
    ) + 1
    assert published.get("herald_deliveries_total", **shop) == before.get("herald_deliveries_total", **shop) + 2
    assert published.get("herald_publish_duration_seconds_count") == before.get(
        "herald_publish_duration_seconds_count"
    ) + 1

    # crossroads' /send is its own source.
    sent = requests.post(
        f"{url}/send",
        params={"site": "shop", "apiKey": API_KEY},
        json={"rooms": [room], "event": "news", "args": [2]},
        timeout=STEP_TIMEOUT,
    )
    assert sent.status_code == 200, sent.text
    news_ws.wait_for(2)
    assert scrape(url).get("herald_publishes_total", **shop, source="send") == before.get(
        "herald_publishes_total", **shop, source="send"
    ) + 1

    # A client event routed to a webhook: answered, and timed.
    calls = len(backend.to("/events/echo"))
    assert ws.call("echo", ("hi",), namespace="/shop", timeout=STEP_TIMEOUT) == "hi"
    assert len(backend.to("/events/echo")) == calls + 1
    evented = scrape(url)
    assert evented.get("herald_client_events_total", **shop, result="ok") == before.get(
        "herald_client_events_total", **shop, result="ok"
    ) + 1
    event = dict(site="shop", kind="event")
    assert evented.get("herald_webhook_duration_seconds_count", **event) == before.get(
        "herald_webhook_duration_seconds_count", **event
    ) + 1

    # A relayed event is a publish from a client; an event without a route is counted as unrouted.
    assert ws.call("chat", (room, "hello"), namespace="/shop", timeout=STEP_TIMEOUT) == {"ok": True}
    assert ws.call("nowhere", (), namespace="/shop", timeout=STEP_TIMEOUT) == {"error": "event 'nowhere' is not routed"}
    relayed = scrape(url)
    assert relayed.get("herald_publishes_total", **shop, source="client") == before.get(
        "herald_publishes_total", **shop, source="client"
    ) + 1
    assert relayed.get("herald_client_events_total", **shop, result="ok") == before.get(
        "herald_client_events_total", **shop, result="ok"
    ) + 2
    assert relayed.get("herald_client_events_total", **shop, result="unrouted") == before.get(
        "herald_client_events_total", **shop, result="unrouted"
    ) + 1

    # Over a limit: refused in the ack, and the limit's count shows.
    too_large = ws.call("echo", ("x" * 70_000,), namespace="/shop", timeout=STEP_TIMEOUT)
    assert "over the limit" in too_large["error"], too_large
    limited = scrape(url)
    assert limited.get("herald_client_events_total", **shop, result="refused") == before.get(
        "herald_client_events_total", **shop, result="refused"
    ) + 1
    bytes_limit = dict(limit="max_client_event_bytes")
    assert limited.get("herald_limit_hits_total", **bytes_limit) == before.get(
        "herald_limit_hits_total", **bytes_limit
    ) + 1

    # Both leave: the gauges come back, and each leaving is counted with its socket.io reason. The API
    # disconnects one ("server namespace disconnect"); the other leaves by itself, and its reason depends on
    # whether python-socketio's namespace DISCONNECT got out before it closed the transport, so any reason counts.
    reason = dict(reason="server namespace disconnect")
    dropped = requests.delete(
        f"{url}/api/v1/sites/shop/sockets/{ws.get_sid('/shop')}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=STEP_TIMEOUT,
    )
    assert dropped.status_code == 204, dropped.text

    def ws_left(snap):
        key = dict(site="shop", transport="websocket")
        assert snap.get("herald_connections", **key) == before.get("herald_connections", **key)
        assert snap.get("herald_disconnects_total", **reason) == before.get("herald_disconnects_total", **reason) + 1

    wait_until(url, ws_left)
    poll.disconnect()

    def poll_left(snap):
        key = dict(site="shop", transport="polling")
        assert snap.get("herald_connections", **key) == before.get("herald_connections", **key)
        assert disconnects(snap) == disconnects(before) + 2

    wait_until(url, poll_left)


def disconnects(snap):
    """Sockets that left, whatever the reason."""
    return sum(v for (name, _), v in snap.samples.items() if name == "herald_disconnects_total")


def test_mailbox_appends_deliveries_and_presence(gateway_url, clients):
    url = gateway_url
    user = uniq("u")
    inbox = {"site": "inbox"}
    presence = dict(site="inbox", kind="presence")
    before = scrape(url)
    got, release = Recorder(), threading.Event()

    def note(*args):
        got(*args)
        # python-socketio acks a mailbox entry when its handler returns: hold the ack until released.
        release.wait(STEP_TIMEOUT)

    clients("/inbox", f"ok~{user}~user_{user}", "websocket", handlers={"note": note}, device="phone")
    try:
        result = publish(url, "inbox", {"rooms": [f"user_{user}"], "event": "note", "args": ["hello"]})
        assert result["queued"] == 1, result
        got.wait_for(1)

        def delivered(snap):
            assert snap.get("herald_mailbox_appends_total") == before.get("herald_mailbox_appends_total") + 1
            assert snap.get("herald_deliveries_total", **inbox) == before.get("herald_deliveries_total", **inbox) + 1
            assert snap.get("herald_publishes_total", **inbox, source="api") == before.get(
                "herald_publishes_total", **inbox, source="api"
            ) + 1
            assert snap.get("herald_mailbox_pending") == before.get("herald_mailbox_pending") + 1
            # The user's first socket is reported to updateUserUrl (`last_connected`).
            assert snap.get("herald_webhook_duration_seconds_count", **presence) == before.get(
                "herald_webhook_duration_seconds_count", **presence
            ) + 1

        wait_until(url, delivered)
    finally:
        release.set()

    def acked(snap):
        assert snap.get("herald_mailbox_pending") == before.get("herald_mailbox_pending")

    wait_until(url, acked)


def _equal(got, want):
    assert got == want, (got, want)


def test_metrics_off_is_a_404(backend):
    with run_gateway(_config_yaml(backend.url, metrics=False), "herald-py-metrics-") as url:
        assert requests.get(f"{url}/metrics", timeout=STEP_TIMEOUT).status_code == 404
        assert requests.get(f"{url}/healthcheck", timeout=STEP_TIMEOUT).status_code == 200


# ---- two nodes on Redis --------------------------------------------------------------------------


def _resp(*parts):
    out = f"*{len(parts)}\r\n".encode()
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out += f"${len(data)}\r\n".encode() + data + b"\r\n"
    return out


def redis(*commands):
    """Runs `commands` on REDIS_DB over one connection; returns the raw replies."""
    try:
        conn = socket.create_connection(REDIS, timeout=STEP_TIMEOUT)
    except OSError as e:
        pytest.fail(f"Redis is not answering on {REDIS[0]}:{REDIS[1]} ({e}); start it with scripts/services.sh")
    with conn:
        conn.sendall(_resp("SELECT", REDIS_DB) + b"".join(_resp(*c) for c in commands))
        replies, buffer = [], b""
        while len(replies) < len(commands) + 1:
            chunk = conn.recv(65536)
            assert chunk, "Redis closed the connection"
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            replies.extend(lines)
        return replies


def _cluster_yaml(prefix, channel):
    return f"""
server:
  drain_delay_ms: 100
  cluster:
    emitter_prefix: "{prefix}"
sites:
  - name: acme
    api_keys: [{API_KEY}]
    auth: {{kind: public}}
    public_channel: lobby
bridges:
  - {{kind: redis, url: "redis://{REDIS[0]}:{REDIS[1]}/{REDIS_DB}", channel: "{channel}", site: acme}}
"""


def _total(urls, name, **labels):
    return sum(scrape(url).get(name, **labels) for url in urls)


def _bridge_total(urls, result):
    """A result's count over the nodes' Redis bridges (label `redis <channel> → acme`)."""
    total = 0
    for url in urls:
        snap = scrape(url)
        for (name, labels), value in snap.samples.items():
            labels = dict(labels)
            if name == "herald_bridge_messages_total" and labels["result"] == result:
                assert labels["bridge"].startswith("redis "), labels
                total += value
    return total


def _publish_until(urls, channel, payload, check, timeout=15.0):
    """Publishes `payload` on `channel` every 0.3 s until `check()` holds: an emitter or bridge publishes on the
    node holding its lease, which a node takes within a few seconds of its start."""
    deadline = time.monotonic() + timeout
    while True:
        redis(("PUBLISH", channel, payload))
        time.sleep(0.3)
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def test_a_cluster_counts_its_nodes_emitter_and_bridge_publishes():
    redis(("FLUSHDB",))
    run = uuid.uuid4().hex[:8]
    prefix, channel = f"metrics-{run}", f"herald-metrics:{run}"
    env = {"REDIS_URL": f"redis://{REDIS[0]}:{REDIS[1]}/{REDIS_DB}", "HERALD_METRICS_TOKEN": METRICS_TOKEN}
    config = _cluster_yaml(prefix, channel)
    with run_gateway(config, "herald-py-metrics-", env) as first, run_gateway(config, "herald-py-metrics-", env) as second:
        urls = [first, second]
        for url in urls:
            wait_until(url, lambda snap: _equal(snap.get("herald_cluster_nodes"), 2), timeout=15)

        emit = (EMITTER_FIXTURES / "emit-all.bin").read_bytes()  # all of /acme: hello("world", 42)
        emitter = dict(site="acme", source="emitter")
        _publish_until(
            urls,
            f"{prefix}#/acme#",
            emit,
            lambda: _equal(_total(urls, "herald_publishes_total", **emitter) >= 1, True),
        )

        bridge = dict(site="acme", source="bridge")
        message = json.dumps({"rooms": ["lobby"], "event": "news", "args": [1]})
        _publish_until(
            urls,
            channel,
            message,
            lambda: _equal(_total(urls, "herald_publishes_total", **bridge) >= 1, True),
        )
        published = _bridge_total(urls, "published")
        assert published == _total(urls, "herald_publishes_total", **bridge) and published >= 1
        # A message that is no publish is rejected, once, by the lease holder.
        rejected = _bridge_total(urls, "rejected")
        redis(("PUBLISH", channel, "not a publish"))
        deadline = time.monotonic() + STEP_TIMEOUT
        while _bridge_total(urls, "rejected") < rejected + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _bridge_total(urls, "rejected") == rejected + 1
