"""python-socketio 5.x client against the `herald` gateway's two-way features (README.md, "Two-way: client
events, retained state, socket hooks"), the Python side of tests/js/two-way.test.mjs.

The module starts a real HTTP backend in a thread (auth webhook, event routes, socket hooks; every call is
recorded whole: path, headers, raw body and parsed JSON) and one `herald --config FILE --port P --data-dir DIR`
with a site `auction` (webhook auth, signed webhook routes, a relayed chat, `get` of retained values, hooks)
and a site `open` (a public channel, `get` of retained values).

The binary is HERALD_GATEWAY_BIN, else the `herald` beside HERALD_BIN's herald-conformance (default
<repo>/target/debug/herald), as gatewayBin() in tests/js/gateway-helpers.mjs.
"""

import hashlib
import hmac
import time
import uuid

import pytest
import requests
import socketio

from helpers import Backend, Recorder, run_gateway

HOST = "127.0.0.1"
STEP_TIMEOUT = 5.0  # any single wait
QUIET = 0.3  # how long we listen to make sure something did NOT arrive
API_KEY = "two-way-key-0123456789"
SIGNING_SECRET = "two-way-signing-secret-0123456789"

pytestmark = pytest.mark.timeout(30)


def sign(raw: bytes, secret: str = SIGNING_SECRET) -> str:
    """`sha256=<hex HMAC-SHA256>` of the raw body, as herald signs its calls."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def token(user, *rooms):
    """A token the backend's auth route reads back: `t~<user>~<room>+<room>`."""
    return f"t~{user}~{'+'.join(rooms)}"


# ---- the backend ---------------------------------------------------------------------------------


def _auth(call):
    scheme_token = call.headers.get("authorization", "")
    parts = scheme_token.removeprefix("Bearer ").split("~")
    if len(parts) < 2 or not parts[1]:
        return 401, {"error": "no token"}
    rooms = parts[2].split("+") if len(parts) > 2 and parts[2] else []
    return 200, {"user": parts[1], "rooms": rooms}


def _bid(call):
    lot, amount = call.body["args"]
    return 200, {
        "reply": [{"accepted": True, "amount": amount}],
        "publish": [{"rooms": [lot], "event": "bid", "args": [{"user": call.body["socket"]["user"], "amount": amount}]}],
    }


ROUTES = {
    "/auth": _auth,
    "/events/bid": _bid,
    "/events/broken": lambda call: (500, {"error": "down"}),
    "/hooks/connect": lambda call: (200, {}),
    "/hooks/disconnect": lambda call: (200, {}),
}


def _config_yaml(backend_url):
    return f"""
sites:
  - name: auction
    api_keys: [{API_KEY}]
    auth: {{kind: webhook, url: "{backend_url}/auth"}}
    signing_secret: "{SIGNING_SECRET}"
    recovery_window_ms: 0
    events:
      bid: {{url: "{backend_url}/events/bid"}}
      broken: {{url: "{backend_url}/events/broken"}}
      chat: {{relay: true}}
      get: {{retained: true}}
    hooks:
      connect: "{backend_url}/hooks/connect"
      disconnect: "{backend_url}/hooks/disconnect"
  - name: open
    api_keys: [{API_KEY}]
    public_channel: lobby
    events:
      get: {{retained: true}}
"""


@pytest.fixture(scope="module")
def backend():
    b = Backend(ROUTES, "two-way-backend")
    yield b
    b.close()


@pytest.fixture(scope="module")
def gateway_url(backend):
    with run_gateway(_config_yaml(backend.url), "herald-py-two-way-") as url:
        yield url


# ---- clients -------------------------------------------------------------------------------------


@pytest.fixture
def make_client(gateway_url):
    created = []

    def make(transport, namespace, auth=None, handlers=None):
        sio = socketio.Client(reconnection=False, request_timeout=5)
        for event, fn in (handlers or {}).items():
            sio.on(event, fn, namespace=namespace)
        created.append(sio)
        sio.connect(
            gateway_url,
            namespaces=[namespace],
            transports=[transport],
            auth=auth,
            wait_timeout=STEP_TIMEOUT,
        )
        assert sio.get_sid(namespace), f"no sid for {namespace}"
        return sio

    yield make
    for sio in created:
        try:
            sio.disconnect()
        except Exception:
            pass


def auction(make_client, transport, user, *rooms, handlers=None):
    return make_client(transport, "/auction", auth={"token": token(user, *rooms)}, handlers=handlers)


@pytest.fixture(params=["websocket", "polling"])
def transport(request):
    return request.param


def other(transport):
    return "polling" if transport == "websocket" else "websocket"


def uniq(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def call(sio, event, *args, namespace="/auction"):
    return sio.call(event, tuple(args), namespace=namespace, timeout=STEP_TIMEOUT)


# ---- tests ---------------------------------------------------------------------------------------


def test_bid_webhook_acks_the_reply_and_publishes(make_client, backend, transport):
    lot = uniq("lot_1")
    bids_alice, bids_bob = Recorder(), Recorder()
    alice = auction(make_client, transport, "alice", lot, handlers={"bid": bids_alice})
    bob = auction(make_client, other(transport), "bob", lot, handlers={"bid": bids_bob})
    assert alice.call("bid", (lot, 25), namespace="/auction", timeout=STEP_TIMEOUT) == {"accepted": True, "amount": 25}
    assert bids_bob.wait_for(1) == [[{"user": "alice", "amount": 25}]]
    # the publish goes to the whole room, the bidder included
    assert bids_alice.wait_for(1) == [[{"user": "alice", "amount": 25}]]

    sid = alice.get_sid("/auction")
    got = backend.wait_call("/events/bid", lambda c: c.body["socket"]["id"] == sid)
    assert got.body["site"] == "auction"
    assert got.body["event"] == "bid"
    assert got.body["args"] == [lot, 25]
    assert got.body["socket"]["user"] == "alice"
    assert lot in got.body["socket"]["rooms"], got.body
    assert got.headers["authorization"] == f"Bearer {token('alice', lot)}"
    assert got.headers["x-herald-signature"] == sign(got.raw)
    assert got.headers["x-herald-signature"] != sign(got.raw, "another secret")
    assert bob.get_sid("/auction") != sid


def test_unrouted_event_is_refused_and_the_client_stays(make_client, transport):
    lot = uniq("lot_2")
    alice = auction(make_client, transport, "alice", lot)
    assert call(alice, "nope", 1) == {"error": "event 'nope' is not routed"}
    alice.emit("nope-no-ack", 1, namespace="/auction")
    time.sleep(QUIET)
    assert alice.connected
    assert call(alice, "bid", lot, 11) == {"accepted": True, "amount": 11}


def test_failing_webhook_acks_an_error(make_client, transport):
    alice = auction(make_client, transport, "alice", uniq("lot_3"))
    assert call(alice, "broken") == {"error": "the backend answered 500"}
    assert alice.connected
    assert call(alice, "nope") == {"error": "event 'nope' is not routed"}


def test_relay_chat_reaches_the_others_of_the_room(make_client, transport):
    room, elsewhere = uniq("chat_1"), uniq("chat_2")
    to_alice, to_bob, to_carol = Recorder(), Recorder(), Recorder()
    alice = auction(make_client, transport, "alice", room, handlers={"chat": to_alice})
    auction(make_client, other(transport), "bob", room, handlers={"chat": to_bob})
    auction(make_client, transport, "carol", elsewhere, handlers={"chat": to_carol})
    assert call(alice, "chat", room, "hi") == {"ok": True}
    assert to_bob.wait_for(1) == [[room, "hi"]]
    assert call(alice, "chat", elsewhere, "sneaky") == {"error": f"this socket is not in room '{elsewhere}'"}
    time.sleep(QUIET)
    assert (to_alice.items, len(to_bob.items), to_carol.items) == ([], 1, [])


def test_connect_and_disconnect_hooks(make_client, backend, transport):
    room = uniq("hooked")
    alice = auction(make_client, transport, "alice", room)
    sid = alice.get_sid("/auction")
    connected = backend.wait_call("/hooks/connect", lambda c: c.body["socket"]["id"] == sid)
    assert connected.body["site"] == "auction"
    assert connected.body["socket"]["user"] == "alice"
    assert room in connected.body["socket"]["rooms"]
    assert connected.headers["x-herald-signature"] == sign(connected.raw)
    assert not [c for c in backend.to("/hooks/disconnect") if c.body["socket"]["id"] == sid]
    leave(alice)
    gone = backend.wait_call("/hooks/disconnect", lambda c: c.body["socket"]["id"] == sid)
    assert gone.body["reason"] == "client namespace disconnect"
    assert gone.body["site"] == "auction"
    assert gone.body["socket"]["user"] == "alice"
    assert gone.headers["x-herald-signature"] == sign(gone.raw)


def leave(sio):
    """`sio.disconnect()`, with its namespace DISCONNECT packets on the wire before the transport closes.

    python-engineio's disconnect() queues the packets for its write loop thread and, on WebSocket, closes the
    socket at once from the calling thread: the close frame goes out before `41/auction,` (seen every time
    here), so the server sees "transport close". Over polling the write loop posts the queued packets and the
    server sees "client namespace disconnect". So on WebSocket the DISCONNECT packets are sent first and the
    write loop is waited for (the later DISCONNECT that disconnect() queues again follows the close frame and
    is dropped, as RFC 6455 wants).
    """
    # see test_client_disconnect_is_clean in test_e2e_python_client.py: let the write loop send what it holds
    sio.eio.queue.join()
    if sio.transport() == "websocket":
        for namespace in list(sio.namespaces):
            sio._send_packet(sio.packet_class(socketio.packet.DISCONNECT, namespace=namespace))
        sio.eio.queue.join()
    sio.disconnect()
    assert not sio.connected


def _api(gateway_url, method, path, body=None):
    res = requests.request(
        method,
        gateway_url + path,
        headers={"Authorization": f"Bearer {API_KEY}"},
        json=body,
        timeout=STEP_TIMEOUT,
    )
    return res.status_code, res.json()


def test_retained_value_on_connect_and_get(make_client, gateway_url, transport):
    status, body = _api(gateway_url, "DELETE", "/api/v1/sites/open/rooms/lobby/retained")
    assert status == 200, body
    early = make_client(transport, "/open")
    # nothing retained: an ack with no arguments, which call() gives as None
    assert call(early, "get", "lobby", "score", namespace="/open") is None

    status, body = _api(
        gateway_url,
        "POST",
        "/api/v1/sites/open/publish",
        {"rooms": ["lobby"], "event": "score", "args": [7], "retain": True},
    )
    assert status == 200, body
    scores = Recorder()
    late = make_client(transport, "/open", handlers={"score": scores})
    assert scores.wait_for(1) == [[7]]
    # one retained argument: call() gives the value itself
    assert call(late, "get", "lobby", "score", namespace="/open") == 7
    assert call(late, "get", "elsewhere", "score", namespace="/open") == {
        "error": "this socket is not in room 'elsewhere'"
    }

    # several retained arguments: call() gives them as a tuple
    status, body = _api(
        gateway_url,
        "POST",
        "/api/v1/sites/open/publish",
        {"rooms": ["lobby"], "event": "reading", "args": [{"t": 19}, "celsius"], "retain": True},
    )
    assert status == 200, body
    assert call(late, "get", "lobby", "reading", namespace="/open") == ({"t": 19}, "celsius")
    time.sleep(QUIET)
    assert scores.items == [[7]]
