"""The `websockets` library (its sync client) on herald's plain WebSocket endpoint, `GET /ws/{site}` (README.md,
"Plain WebSocket and Server-Sent Events"): the Python side of tests/js/plain.test.mjs.

The module starts a real HTTP backend in a thread (the auth webhook and the `bid` event route) and one
`herald --config FILE --port P --data-dir DIR` with a site `auction` (webhook auth, `bid` routed to the
backend, a 20000-byte frame limit) and a site `app` (HS256 JWT devices with user rooms, so mailboxes).

Checked: the welcome, a publish arriving as an event frame, a client event answered through the webhook with a
reply, an unrouted event and a malformed frame answered with error frames on a connection that stays usable,
mailbox entries with ids acked cumulatively (a reconnect replays only the unacked ones), an oversize frame closed
with 1009, and a refused token answered with an error frame and close code 1008.
"""

import base64
import contextlib
import hashlib
import hmac
import json
import os
import time
import uuid

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from helpers import Backend, run_gateway

STEP_TIMEOUT = 5.0  # any single wait
QUIET = 0.5  # how long we listen to make sure something did NOT arrive
API_KEY = "plain-py-key-0123456789"
JWT_SECRET = "plain-py-jwt-secret-0123456789abcdef"
MAX_PAYLOAD = 20_000

pytestmark = pytest.mark.timeout(30)


def uniq(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def token(user, *rooms):
    """A token the backend's auth route reads back: `t~<user>~<room>+<room>`."""
    return f"t~{user}~{'+'.join(rooms)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_for(user):
    """An HS256 JWT for `user` of site `app`, in their user room `user_<user>`."""
    now = int(time.time())
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = _b64url(json.dumps({"sub": user, "rooms": [f"user_{user}"], "iat": now, "exp": now + 3600}).encode())
    signing_input = f"{header}.{claims}"
    signature = hmac.new(JWT_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


# ---- the backend ---------------------------------------------------------------------------------


def _auth(call):
    parts = call.headers.get("authorization", "").removeprefix("Bearer ").split("~")
    if len(parts) < 2 or not parts[1]:
        return 401, {"error": "no token"}
    return 200, {"user": parts[1], "rooms": parts[2].split("+") if len(parts) > 2 and parts[2] else []}


def _bid(call):
    (amount,) = call.body["args"]
    if amount < 10:
        return 200, {"reply": [{"error": "too low"}]}
    return 200, {"reply": [{"accepted": amount, "by": call.body["socket"]["user"]}]}


ROUTES = {"/auth": _auth, "/events/bid": _bid}


def _config_yaml(backend_url):
    return f"""
server:
  limits: {{max_payload_bytes: {MAX_PAYLOAD}}}
sites:
  - name: auction
    api_keys: [{API_KEY}]
    auth: {{kind: webhook, url: "{backend_url}/auth"}}
    recovery_window_ms: 0
    events:
      bid: {{url: "{backend_url}/events/bid"}}
  - name: app
    api_keys: [{API_KEY}]
    auth: {{kind: jwt, algorithm: HS256, secret: "{JWT_SECRET}"}}
    user_room_prefix: user_
"""


@pytest.fixture(scope="module")
def backend():
    b = Backend(ROUTES, "plain-backend")
    yield b
    b.close()


@pytest.fixture(scope="module")
def gateway_url(backend):
    with run_gateway(_config_yaml(backend.url), "herald-py-plain-") as url:
        yield url


# ---- clients -------------------------------------------------------------------------------------


class Plain:
    """A `websockets` sync client on `/ws/{site}`; `frames` are the JSON frames received so far."""

    def __init__(self, gateway_url, site, query="", headers=None):
        url = gateway_url.replace("http://", "ws://", 1) + f"/ws/{site}" + (f"?{query}" if query else "")
        self._stack = contextlib.ExitStack()
        connection = connect(url, additional_headers=headers, open_timeout=STEP_TIMEOUT, proxy=None)
        self.ws = self._stack.enter_context(connection)
        self.frames = []

    def next(self, timeout=STEP_TIMEOUT):
        """The next frame, parsed; its raw text stays in `last_text`."""
        self.last_text = self.ws.recv(timeout=timeout)
        assert isinstance(self.last_text, str), f"a text frame, got {self.last_text!r}"
        frame = json.loads(self.last_text)
        assert next(iter(frame)) == "type", f"`type` comes first: {self.last_text}"
        self.frames.append(frame)
        return frame

    def welcome(self):
        frame = self.next()
        assert frame["type"] == "welcome", frame
        assert isinstance(frame["socket"], str) and frame["socket"], frame
        return frame

    def send(self, frame):
        self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def request(self, event, args, id):
        """Sends a client event with an id; returns the frame answering it (reply or error)."""
        self.send({"type": "event", "event": event, "args": args, "id": id})
        return self.next()

    def assert_quiet(self):
        try:
            frame = self.ws.recv(timeout=QUIET)
        except TimeoutError:
            return
        raise AssertionError(f"an unexpected frame: {frame}")

    def closed(self):
        """Reads until the server closes; returns the close frame it sent (code, reason)."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                self.next(timeout=max(0.01, deadline - time.monotonic()))
            except ConnectionClosed as e:
                assert e.rcvd is not None, f"the server sent no close frame: {e}"
                return e.rcvd.code, e.rcvd.reason
        raise AssertionError("the connection was not closed in time")

    def close(self):
        self._stack.close()


@pytest.fixture
def plain(gateway_url):
    created = []

    def make(site, query="", headers=None):
        client = Plain(gateway_url, site, query, headers)
        created.append(client)
        return client

    yield make
    for client in created:
        try:
            client.close()
        except Exception:
            pass


def _api(gateway_url, method, path, body=None):
    res = requests.request(
        method, gateway_url + path, headers={"Authorization": f"Bearer {API_KEY}"}, json=body, timeout=STEP_TIMEOUT
    )
    return res.status_code, res.json()


def publish(gateway_url, site, body):
    status, answer = _api(gateway_url, "POST", f"/api/v1/sites/{site}/publish", body)
    assert status == 200, answer


def pending(gateway_url, user, device):
    """The entries of `device` of `user` on site `app` not acked yet."""
    status, answer = _api(gateway_url, "GET", f"/api/v1/sites/app/users/user_{user}/devices")
    assert status == 200, answer
    return next((d["pending"] for d in answer["devices"] if d["deviceId"] == device), None)


def wait_until(cond, what, timeout=STEP_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---- tests ---------------------------------------------------------------------------------------


def test_welcome_then_a_publish_arrives_as_an_event_frame(plain, gateway_url):
    lot = uniq("lot")
    by_query = plain("auction", f"token={token('ann', lot)}")
    welcome = by_query.welcome()
    assert by_query.last_text.startswith('{"type":"welcome",'), by_query.last_text
    assert welcome["rooms"] == [lot]
    by_header = plain("auction", headers={"Authorization": f"Bearer {token('bob', lot)}"})
    assert by_header.welcome()["rooms"] == [lot]
    assert by_header.frames[0]["socket"] != welcome["socket"]

    publish(gateway_url, "auction", {"rooms": [lot], "event": "price", "args": [12, {"currency": "€"}]})
    for client in (by_query, by_header):
        assert client.next() == {"type": "event", "event": "price", "args": [12, {"currency": "€"}]}
        assert client.last_text.startswith('{"type":"event","event":"price",'), client.last_text
        client.assert_quiet()


def test_a_client_event_goes_to_the_webhook_and_is_answered_with_a_reply(plain, backend):
    lot = uniq("lot")
    client = plain("auction", f"token={token('ann', lot)}")
    welcome = client.welcome()
    assert client.request("bid", [25], 1) == {"type": "reply", "id": 1, "args": [{"accepted": 25, "by": "ann"}]}
    call = next(c for c in backend.to("/events/bid") if c.body["socket"]["id"] == welcome["socket"])
    assert call.body["event"] == "bid"
    assert call.body["args"] == [25]
    assert call.body["socket"]["user"] == "ann"
    assert call.headers["authorization"] == f"Bearer {token('ann', lot)}"
    # The backend's {"error"} reply is an error frame with the event's id.
    assert client.request("bid", [3], 2) == {"type": "error", "id": 2, "error": "too low"}
    # Without an id, nothing answers; the event still reaches the backend.
    calls = len(backend.to("/events/bid"))
    client.send({"type": "event", "event": "bid", "args": [30]})
    wait_until(lambda: len(backend.to("/events/bid")) == calls + 1, "the call of the event without an id")
    client.assert_quiet()


def test_an_unrouted_event_is_answered_with_an_error_frame_with_its_id(plain):
    client = plain("auction", f"token={token('ann', uniq('lot'))}")
    client.welcome()
    assert client.request("nope", ["x"], 7) == {"type": "error", "id": 7, "error": "event 'nope' is not routed"}
    assert client.request("bid", [11], 8) == {"type": "reply", "id": 8, "args": [{"accepted": 11, "by": "ann"}]}


def test_a_malformed_frame_is_answered_with_an_error_frame_and_the_connection_stays(plain):
    client = plain("auction", f"token={token('ann', uniq('lot'))}")
    client.welcome()
    client.send("not json{")
    error = client.next()
    assert error["type"] == "error" and "id" not in error, error
    assert error["error"].startswith("malformed frame"), error
    client.send({"type": "shout", "id": 3})
    error = client.next()
    assert (error["type"], error["id"]) == ("error", 3), error
    assert "unknown frame type 'shout'" in error["error"], error
    client.send({"type": "event", "args": [1], "id": 4})
    assert client.next() == {"type": "error", "id": 4, "error": 'an event needs its "event" name'}
    client.send({"type": "ack"})
    assert client.next() == {"type": "error", "error": 'an ack needs its "id"'}
    # Still open, and still served.
    assert client.request("bid", [20], 5) == {"type": "reply", "id": 5, "args": [{"accepted": 20, "by": "ann"}]}


def test_mailbox_entries_carry_ids_acked_cumulatively_and_unacked_ones_come_back(plain, gateway_url):
    user, device = uniq("u"), "sensor-1"
    query = f"token={jwt_for(user)}&deviceId={device}"
    first = plain("app", query)
    assert first.welcome()["rooms"] == [f"user_{user}"]
    for n in (1, 2, 3, 4):
        publish(gateway_url, "app", {"rooms": [f"user_{user}"], "event": "job", "args": [n]})
    entries = [first.next() for _ in range(4)]
    assert [(e["type"], e["event"], e["args"]) for e in entries] == [("event", "job", [n]) for n in (1, 2, 3, 4)]
    ids = [e["id"] for e in entries]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids)), ids
    first.assert_quiet()
    assert pending(gateway_url, user, device) == 4, "delivery alone acks nothing"

    # One ack for the second entry covers the first too.
    first.send({"type": "ack", "id": ids[1]})
    wait_until(lambda: pending(gateway_url, user, device) == 2, "two entries acked")
    first.close()

    # The acked entries are not replayed, the others are, in order. A plain WebSocket's ids number what this
    # connection may ack (the event stream's are the entries' own numbers), so they start again here.
    again = plain("app", query)
    again.welcome()
    replayed = [again.next(), again.next()]
    assert [(e["event"], e["args"]) for e in replayed] == [("job", [3]), ("job", [4])]
    again_ids = [e["id"] for e in replayed]
    assert all(isinstance(i, int) for i in again_ids) and again_ids == sorted(set(again_ids)), again_ids
    again.assert_quiet()
    again.send({"type": "ack", "id": again_ids[1]})
    wait_until(lambda: pending(gateway_url, user, device) == 0, "every entry acked")
    again.close()

    last = plain("app", query)
    last.welcome()
    last.assert_quiet()


def test_a_frame_over_the_payload_limit_closes_with_1009(plain):
    client = plain("auction", f"token={token('ann', uniq('lot'))}")
    client.welcome()
    # Random hex: over the limit even if the frame were compressed.
    client.send({"type": "event", "event": "bid", "args": [os.urandom(MAX_PAYLOAD * 2).hex()], "id": 1})
    code, _reason = client.closed()
    assert code == 1009
    assert not any(f["type"] == "reply" for f in client.frames), client.frames


def test_a_refused_token_gets_an_error_frame_then_close_1008(plain, backend):
    refused = plain("auction", "token=garbage")
    error = refused.next()
    assert error["type"] == "error" and "id" not in error, error
    assert error["error"], error
    code, reason = refused.closed()
    assert code == 1008
    assert reason == error["error"]
    assert not any(f["type"] == "welcome" for f in refused.frames), refused.frames
    # No token at all: refused the same way.
    anonymous = plain("auction")
    assert anonymous.next()["type"] == "error"
    assert anonymous.closed()[0] == 1008
