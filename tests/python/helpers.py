"""What the Python test modules share: loopback ports, the `herald` gateway binary run with a config, a real
HTTP backend that records its calls, and a recorder of one event's arguments."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HOST = os.environ.get("HERALD_HOST", "127.0.0.1")
STEP_TIMEOUT = 5.0  # any single wait
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def can_connect(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class Recorder:
    """Collects the args of one event; lets a test wait for N of them."""

    def __init__(self):
        self.items = []
        self.cond = threading.Condition()

    def __call__(self, *args):
        with self.cond:
            self.items.append(list(args))
            self.cond.notify_all()

    def wait_for(self, n=1, timeout=STEP_TIMEOUT):
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.items) >= n, timeout=timeout)
        assert ok, f"expected {n} event(s), got {self.items}"
        return self.items


def _binary(env_name, default):
    env = os.environ.get(env_name)
    if env:
        return (REPO_ROOT / env).resolve() if not os.path.isabs(env) else Path(env)
    return default


def conformance_bin() -> Path:
    """HERALD_BIN, else <repo>/target/debug/herald-conformance (target/release when only that exists)."""
    debug = REPO_ROOT / "target" / "debug" / "herald-conformance"
    release = REPO_ROOT / "target" / "release" / "herald-conformance"
    return _binary("HERALD_BIN", release if not debug.exists() and release.exists() else debug)


def gateway_bin() -> Path:
    """HERALD_GATEWAY_BIN, else the `herald` beside conformance_bin(), as gatewayBin() in tests/js."""
    return _binary("HERALD_GATEWAY_BIN", conformance_bin().parent / "herald")


@contextlib.contextmanager
def run_gateway(config_yaml, prefix, env_extra=None):
    """Runs `herald --config FILE --port P --data-dir DIR` with `config_yaml` on a free port (retrying a lost port
    race), in a temp directory named after `prefix`, with no HERALD_* variable but `env_extra`; yields its base
    URL. Fails the test if herald does not start or dies before the end, with its output."""
    binary = gateway_bin()
    if not binary.exists():
        pytest.fail(f"herald not found at {binary}; build it with `cargo build -p herald` or set HERALD_GATEWAY_BIN")
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    config = tmp / "herald.yml"
    config.write_text(config_yaml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}  # no stray config
    env.update(env_extra or {})
    env["RUST_BACKTRACE"] = "1"
    last_output = ""
    try:
        for _attempt in range(3):
            port = free_port()
            log = open(tmp / f"herald-{port}.log", "w+b")
            proc = subprocess.Popen(
                [str(binary), "--config", str(config), "--port", str(port), "--data-dir", str(tmp / "data")],
                cwd=REPO_ROOT,
                env=env,
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
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-5000:]
                    log.close()
                assert died is None, f"herald died during the tests with code {died}. Output:\n{output}"
                return
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            log.seek(0)
            last_output = log.read().decode(errors="replace")[-5000:]
            log.close()
            if "in use" not in last_output.lower():
                break
        pytest.fail(f"herald did not start (exit code {proc.returncode}). Output:\n{last_output}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Call:
    """One request the backend got: its path, lower-cased headers, raw body and the body as JSON (or None)."""

    def __init__(self, path, headers, raw):
        self.path = path
        self.headers = headers  # lower-cased names
        self.raw = raw  # bytes, exactly as received
        try:
            self.body = json.loads(raw) if raw else None
        except ValueError:
            self.body = None

    def __repr__(self):
        return f"Call({self.path!r}, {self.raw[:300]!r})"


class Backend:
    """A real HTTP backend on a free port, in a thread: `routes[path](call)` answers `(status, body)` (404
    otherwise), for any method; every call is recorded."""

    def __init__(self, routes, name="backend"):
        self.calls = []
        self.cond = threading.Condition()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _read_body(self):
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                raw = self._read_body()
                path = self.path.split("?", 1)[0]
                call = Call(path, {k.lower(): v for k, v in self.headers.items()}, raw)
                with backend.cond:
                    backend.calls.append(call)
                    backend.cond.notify_all()
                route = routes.get(path)
                status, body = route(call) if route else (404, {"error": "no route"})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = _handle
            do_GET = _handle
            do_PUT = _handle

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)
        self.thread.start()

    def to(self, path):
        """The calls to `path` so far."""
        with self.cond:
            return [c for c in self.calls if c.path == path]

    def wait_call(self, path, pred=lambda c: True, timeout=STEP_TIMEOUT):
        """Waits for a call to `path` that `pred` accepts; returns it."""

        def find():
            return next((c for c in self.calls if c.path == path and c.body is not None and pred(c)), None)

        with self.cond:
            found = self.cond.wait_for(find, timeout=timeout)
            assert found, f"no matching call to {path} within {timeout}s; calls: {self.calls}"
            return found

    def close(self):
        self.server.shutdown()
        self.server.server_close()
