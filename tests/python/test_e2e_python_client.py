"""python-socketio 5.x client against `herald-conformance --suite e2e` (see E2E_CONTRACT.md).

The server is spawned once per module from HERALD_BIN (default <repo>/target/debug/herald-conformance,
falling back to target/release) on a free port, or HERALD_URL points at an already running one.
"""

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import socketio

from helpers import Recorder, can_connect, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = os.environ.get("HERALD_HOST", "127.0.0.1")
STEP_TIMEOUT = 5.0  # any single wait
QUIET = 0.3  # how long we listen to make sure something did NOT arrive

pytestmark = pytest.mark.timeout(30)


def _herald_bin() -> Path:
    env = os.environ.get("HERALD_BIN")
    if env:
        return (REPO_ROOT / env).resolve() if not os.path.isabs(env) else Path(env)
    debug = REPO_ROOT / "target" / "debug" / "herald-conformance"
    release = REPO_ROOT / "target" / "release" / "herald-conformance"
    if not debug.exists() and release.exists():
        return release
    return debug



@pytest.fixture(scope="module")
def server_url():
    if os.environ.get("HERALD_URL"):
        yield os.environ["HERALD_URL"].rstrip("/")
        return
    binary = _herald_bin()
    if not binary.exists():
        pytest.fail(f"herald-conformance not found at {binary}; run `cargo build --workspace` or set HERALD_BIN")
    last_output = ""
    for _attempt in range(3):
        port = free_port()
        log = open(f"/tmp/herald-pytest-{os.getpid()}-{port}.log", "w+b")
        proc = subprocess.Popen(
            [str(binary), "--port", str(port), "--suite", "e2e"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None and not can_connect(port):
            time.sleep(0.05)
        if proc.poll() is None and can_connect(port):
            try:
                yield f"http://{HOST}:{port}"
            finally:
                died = proc.poll()
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
            assert died is None, f"herald-conformance died during the tests with code {died}"
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.seek(0)
        last_output = log.read().decode(errors="replace")[-5000:]
        log.close()
        if "in use" not in last_output.lower():
            break
    pytest.fail(f"herald-conformance did not start (exit code {proc.returncode}). Output:\n{last_output}")


@pytest.fixture
def make_client(server_url):
    created = []

    def make(transports, namespace="/", auth=None, handlers=None):
        sio = socketio.Client(reconnection=False, request_timeout=5)
        for event, fn in (handlers or {}).items():
            sio.on(event, fn, namespace=namespace)
        created.append(sio)
        sio.connect(
            server_url,
            namespaces=[namespace],
            transports=transports,
            auth=auth,
            wait_timeout=STEP_TIMEOUT,
        )
        return sio

    yield make
    for sio in created:
        try:
            sio.disconnect()
        except Exception:
            pass


TRANSPORTS = {
    "websocket": (["websocket"], "websocket"),
    "polling": (["polling"], "polling"),
    "upgrade": (["polling", "websocket"], "websocket"),
}


@pytest.fixture(params=sorted(TRANSPORTS))
def mode(request):
    return TRANSPORTS[request.param]


def _wait_transport(sio, expected, timeout=STEP_TIMEOUT):
    deadline = time.monotonic() + timeout
    while sio.transport() != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sio.transport() == expected


def test_connect_and_auth_echo(make_client, mode):
    transports, final = mode
    auth_events = Recorder()
    sio = make_client(transports, auth={"token": "py", "n": 1}, handlers={"auth": auth_events})
    assert sio.connected
    _wait_transport(sio, final)
    assert auth_events.wait_for(1) == [[{"token": "py", "n": 1}]]
    assert sio.get_sid() and isinstance(sio.get_sid(), str)


def test_message_with_ack(make_client, mode):
    transports, final = mode
    sio = make_client(transports)
    _wait_transport(sio, final)
    # several args -> the ack args come back as a list/tuple
    assert list(sio.call("message-with-ack", (1, "two", {"three": [3, None]}), timeout=STEP_TIMEOUT)) == [
        1,
        "two",
        {"three": [3, None]},
    ]
    # one arg -> the single ack arg
    assert sio.call("message-with-ack", "solo", timeout=STEP_TIMEOUT) == "solo"


def test_message_back(make_client, mode):
    transports, final = mode
    back = Recorder()
    sio = make_client(transports, handlers={"message-back": back})
    _wait_transport(sio, final)
    sio.emit("message", ("hello", 42, {"k": "é"}))
    assert back.wait_for(1) == [["hello", 42, {"k": "é"}]]


def test_server_to_client_ack(make_client, mode):
    transports, final = mode
    sio = make_client(transports, handlers={"question": lambda n, s: ("answer", n + 1, s.upper())})
    _wait_transport(sio, final)
    result = sio.call("ask", {"event": "question", "args": [41, "bee"], "timeoutMs": 3000}, timeout=STEP_TIMEOUT)
    assert result == {"ok": True, "reply": ["answer", 42, "BEE"]}


def test_binary_echo(make_client, mode):
    transports, final = mode
    sio = make_client(transports)
    _wait_transport(sio, final)
    payload = bytes([0, 1, 2, 0x80, 0xFE, 0xFF])
    assert sio.call("binary-echo", payload, timeout=STEP_TIMEOUT) == payload


def test_join_room_and_receive_broadcast(make_client, mode):
    transports, _final = mode
    room = f"py-{uuid.uuid4().hex[:8]}"
    got_a, got_b, got_c = Recorder(), Recorder(), Recorder()
    a = make_client(transports, handlers={"py-evt": got_a})
    b = make_client(["websocket"], handlers={"py-evt": got_b})
    c = make_client(["polling"], handlers={"py-evt": got_c})
    assert a.call("join", room, timeout=STEP_TIMEOUT) == "ok"
    assert b.call("join", room, timeout=STEP_TIMEOUT) == "ok"
    rooms = a.call("rooms", timeout=STEP_TIMEOUT)
    assert room in rooms and a.get_sid() in rooms and len(rooms) == 2
    count = c.call("broadcast", {"room": room, "event": "py-evt", "args": [1, "x", {"y": None}]}, timeout=STEP_TIMEOUT)
    assert count == 2
    assert got_a.wait_for(1) == [[1, "x", {"y": None}]]
    assert got_b.wait_for(1) == [[1, "x", {"y": None}]]
    time.sleep(QUIET)
    assert got_c.items == []
    assert len(got_a.items) == 1 and len(got_b.items) == 1
    # leave: no more deliveries to a
    assert a.call("leave", room, timeout=STEP_TIMEOUT) == "ok"
    assert c.call("broadcast", {"room": room, "event": "py-evt", "args": ["again"]}, timeout=STEP_TIMEOUT) == 1
    assert got_b.wait_for(2)[1] == ["again"]
    time.sleep(QUIET)
    assert len(got_a.items) == 1


def test_custom_namespace(make_client, mode):
    transports, _final = mode
    auth_events = Recorder()
    sio = make_client(transports, namespace="/custom", auth={"role": "py"}, handlers={"auth": auth_events})
    assert auth_events.wait_for(1) == [[{"role": "py"}]]
    assert sio.call("message-with-ack", "in-custom", namespace="/custom", timeout=STEP_TIMEOUT) == "in-custom"


def test_server_disconnect(make_client, mode):
    transports, final = mode
    reasons = Recorder()
    sio = make_client(transports, handlers={"disconnect": reasons})
    _wait_transport(sio, final)
    sio.emit("disconnect-me")
    got = reasons.wait_for(1)
    # python-socketio >= 5.12 passes the reason; a namespace DISCONNECT from the server is SERVER_DISCONNECT
    assert got == [[socketio.Client.reason.SERVER_DISCONNECT]]
    deadline = time.monotonic() + STEP_TIMEOUT
    while sio.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not sio.connected


def test_client_disconnect_is_clean(make_client, mode):
    transports, final = mode
    reasons = Recorder()
    sio = make_client(transports, handlers={"disconnect": reasons})
    _wait_transport(sio, final)
    sid = sio.get_sid()
    assert sid
    # python-engineio's write loop checks `state == "connected"` before taking the next packets: when
    # disconnect() runs while the loop is still returning from a POST (here the CONNECT's, sent a moment ago),
    # the loop exits and the queued `41` and close packets are never sent, so the server keeps the socket
    # until its ping timeout (seen about once in 30 runs). Wait until everything queued has been sent.
    sio.eio.queue.join()
    sio.disconnect()
    assert not sio.connected
    assert reasons.wait_for(1) == [[socketio.Client.reason.CLIENT_DISCONNECT]]
    # the server forgot the socket: addressing it now finds nobody
    other = make_client(["websocket"])
    found = other.call("to-socket", {"sid": sid, "event": "x", "args": []}, timeout=STEP_TIMEOUT)
    deadline = time.monotonic() + 3
    while found and time.monotonic() < deadline:
        time.sleep(0.05)
        found = other.call("to-socket", {"sid": sid, "event": "x", "args": []}, timeout=STEP_TIMEOUT)
    assert found is False
