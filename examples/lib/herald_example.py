"""What every example's run.py shares: find the herald binary, start it on a free port with the example's
herald.yml, serve the example's page, print where everything is, and stop it all on Ctrl-C or SIGTERM.

The devices and scripts (clock.py, sensor.py, ticker.py, device.py) do not import it: they are plain scripts you
can copy. The backends take their HTTP server from it (`PageHandler`), so what they hold is their own logic.

Standard library only (3.9 or newer): the examples' own dependencies (pika, paho-mqtt) are in
examples/requirements.txt, and only the scripts that talk to a broker import them.
"""

import argparse
import atexit
import http.server
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The herald.yml files name the page's (or backend's) address as http://127.0.0.1:8000 and
# http://localhost:8000; run.py serves it on a free port and rewrites that port in the copy herald reads.
TEMPLATE_PORT = 8000
_TEMPLATE_ORIGIN = re.compile(r"(http://(?:127\.0\.0\.1|localhost)):%d\b" % TEMPLATE_PORT)

# Variables herald reads (crossroads' names and its own HERALD_*): none of them may change an example's config.
_HERALD_ENV = {"SITE_NAME", "AUTH_URL", "AUTH_SCHEME", "API_KEY", "USER_ROOM_PREFIX", "UPDATE_USER_URL",
               "PUBLIC_CHANNEL", "DEVICE_TTL", "PORT", "REDIS_URL"}

START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 15


def arguments(description, extra=None):
    """The options every run.py takes, plus the example's own (`extra(parser)`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="herald's port (default 0: any free port)")
    parser.add_argument("--page-port", type=int, default=0, help="the page's port (default 0: any free port)")
    parser.add_argument("--herald", help="the herald binary (default: $HERALD_GATEWAY_BIN, else the newest of "
                        "target/release/herald and target/debug/herald, else herald on PATH)")
    parser.add_argument("--data-dir", help="herald's data directory, kept (default: a temporary one, removed)")
    if extra:
        extra(parser)
    # SIGTERM while starting: exit through atexit, which stops whatever already started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return parser.parse_args()


def herald_binary(explicit=None):
    """The herald binary to run, or exit with a line saying how to get one."""
    if explicit or os.environ.get("HERALD_GATEWAY_BIN"):
        path = Path(explicit or os.environ["HERALD_GATEWAY_BIN"]).expanduser().resolve()
        if not os.access(path, os.X_OK):
            sys.exit(f"herald binary not found or not executable: {path}")
        return str(path)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    built = [p for p in (target / "release" / "herald", target / "debug" / "herald") if os.access(p, os.X_OK)]
    if built:
        return str(max(built, key=lambda p: p.stat().st_mtime))
    on_path = shutil.which("herald")
    if on_path:
        return on_path
    sys.exit("herald binary not found: build it (cargo build -p herald) or set HERALD_GATEWAY_BIN")


def require(module, package):
    """Checks that `module` imports (from `package` of examples/requirements.txt), or exits saying how to install
    it: run.py calls it before it starts anything."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        sys.exit("%s needs %s (%s): python3 -m venv .venv && .venv/bin/pip install -r examples/requirements.txt, "
                 "then run it with .venv/bin/python" % (sys.executable, package, error))


def socket_io_client_js():
    """The socket.io client the pages load: $SOCKET_IO_CLIENT_JS, else tests/js's copy (npm ci in tests/js)."""
    explicit = os.environ.get("SOCKET_IO_CLIENT_JS")
    candidate = Path(explicit) if explicit else REPO / "tests/js/node_modules/socket.io-client/dist/socket.io.min.js"
    return candidate if candidate.is_file() else None


class PageHandler(http.server.BaseHTTPRequestHandler):
    """Serves the example's web/ folder, /socket.io.min.js and /config.js (where herald is). An example's
    backend subclasses it and adds routes in `do_POST`."""

    web_dir = None  # set by `serve_page`
    page_config = {}  # window.HERALD in /config.js
    server_version = "herald-example"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/config.js":
            body = "window.HERALD = %s;\n" % json.dumps(self.page_config)
            return self.send_body(200, body.encode(), "text/javascript")
        if path == "/socket.io.min.js":
            script = socket_io_client_js()
            if script is None:
                return self.send_body(404, b"socket.io-client not found: run `npm ci` in tests/js or set "
                                      b"SOCKET_IO_CLIENT_JS", "text/plain")
            return self.send_body(200, script.read_bytes(), "text/javascript")
        name = "index.html" if path == "/" else path.lstrip("/")
        file = (self.web_dir / name).resolve()
        if self.web_dir not in file.parents or not file.is_file():
            return self.send_body(404, b"not found", "text/plain")
        kind = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}
        return self.send_body(200, file.read_bytes(), kind.get(file.suffix, "application/octet-stream"))

    def read_body(self):
        """The request's body, as bytes (a webhook checks its signature on exactly these)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status, value):
        self.send_body(status, json.dumps(value).encode(), "application/json")

    def send_body(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # quiet: run.py prints what matters


def serve_page(example_dir, handler=PageHandler, port=0):
    """Starts the page (and backend) server on 127.0.0.1:`port` in a thread; returns the server."""
    handler.web_dir = (Path(example_dir) / "web").resolve()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="page", daemon=True).start()
    atexit.register(server.server_close)
    return server


def page_url(server):
    return "http://127.0.0.1:%d" % server.server_address[1]


class Herald:
    """One herald process running a copy of the example's herald.yml, on `args.port`: the page's port put in the
    origins and URLs written with port 8000, and each key of `replace` replaced by its value."""

    def __init__(self, example_dir, page_port, args, replace=None):
        self.binary = herald_binary(args.herald)
        # The copy of herald.yml goes in a temporary directory, and so does herald's data without --data-dir.
        self.dir = Path(tempfile.mkdtemp(prefix="herald-example-"))
        data_dir = Path(args.data_dir).resolve() if args.data_dir else self.dir / "data"
        text = _TEMPLATE_ORIGIN.sub(lambda m: "%s:%d" % (m.group(1), page_port),
                                    (Path(example_dir) / "herald.yml").read_text())
        for old, new in (replace or {}).items():  # the example's own options (click-counter's --queue)
            if old not in text:
                sys.exit("herald.yml has no %r to replace" % old)
            text = text.replace(old, new)
        self.config = self.dir / "herald.yml"
        self.config.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_") and k not in _HERALD_ENV}
        command = [self.binary, "--config", str(self.config), "--port", str(args.port),
                   "--data-dir", str(data_dir), "--log-json"]
        self.stopped = False
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        self.log = []
        self.url = None
        atexit.register(self.stop)
        listening = threading.Event()
        threading.Thread(target=self._read_log, args=(listening,), name="herald-log", daemon=True).start()
        if not listening.wait(START_TIMEOUT_S) or self.url is None:
            self.stop()
            sys.exit("herald did not start:\n" + "\n".join(self.log[-30:]))

    def _read_log(self, listening):
        # herald logs one JSON object per line on stderr; the first says where it listens.
        for line in self.process.stderr:
            line = line.rstrip("\n")
            self.log = (self.log + [line])[-200:]
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                fields = {}
            if self.url is None and "addr" in fields and fields.get("message", "").startswith("herald listening"):
                self.url = "http://" + fields["addr"]
                listening.set()
            if os.environ.get("HERALD_EXAMPLE_LOG"):
                print("[herald]", line, file=sys.stderr, flush=True)
        listening.set()  # herald exited: stop waiting

    def token(self, site, user, rooms, ttl_secs=86400):
        """A JWT for `user` in `rooms`, minted by `herald token` from the same config copy (the site's secret):
        what a real backend would hand a logged-in user's page."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_") and k not in _HERALD_ENV}
        command = [self.binary, "token", "--config", str(self.config), "--site", site, "--user", user,
                   "--ttl", str(ttl_secs)] + [arg for room in rooms for arg in ("--room", room)]
        minted = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if minted.returncode != 0:
            sys.exit("herald token failed: " + minted.stderr.strip())
        return minted.stdout.strip()

    def api(self, method, path, key, body=None):
        """A call to herald's HTTP API: (status, parsed answer)."""
        return http_json(method, self.url + path, body, {"Authorization": "Bearer " + key})

    def stop(self):
        """SIGTERM (herald drains, then exits), SIGKILL past the timeout; the temporary directory goes. A herald
        that had exited on its own shows its last log lines."""
        if self.stopped:
            return
        self.stopped = True
        if self.process.poll() is not None and self.process.returncode != 0:
            print("herald exited with code %s:\n%s" % (self.process.returncode, "\n".join(self.log[-30:])),
                  file=sys.stderr, flush=True)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def http_json(method, url, body=None, headers=None, timeout=5):
    """(status, parsed JSON or text) of one HTTP call, also for 4xx and 5xx answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_until(condition, what, timeout=START_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for " + what)
        time.sleep(0.1)


def announce(name, page, herald, site, socket_io=True):
    """Tells a person where to look, and a test (one `READY {json}` line) where everything is. `socket_io`:
    whether the page loads the socket.io client (plain-clients' pages do not)."""
    print("%s: open %s/ (herald %s, site %s)" % (name, page, herald, site), flush=True)
    if socket_io and socket_io_client_js() is None:
        print("%s: the page needs socket.io-client: run `npm ci` in tests/js or set SOCKET_IO_CLIENT_JS" % name,
              flush=True)
    print("READY " + json.dumps({"page": page, "herald": herald, "site": site}), flush=True)


def run_until_stopped(cleanups, watch):
    """Blocks until SIGINT or SIGTERM, or until one of the `watch` processes ({name: Popen}) exits, then runs
    `cleanups` in order and exits (1 when a process died on its own)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    status = 0
    while not stop.wait(0.2):
        died = [(name, p.returncode) for name, p in watch.items() if p.poll() is not None]
        if died:
            # Ctrl-C and a kill of the process group reach the children too, which may end first: not a failure.
            if stop.wait(0.5):
                break
            print("%s exited with code %s; stopping" % died[0], file=sys.stderr, flush=True)
            status = 1
            break
    for cleanup in cleanups:
        cleanup()
    sys.exit(status)
