"""What the Python test modules share: loopback ports, the `herald` gateway binary run with a config, and a
recorder of one event's arguments."""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
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
def run_gateway(config_yaml, prefix):
    """Runs `herald --config FILE --port P --data-dir DIR` with `config_yaml` on a free port (retrying a lost port
    race), in a temp directory named after `prefix`; yields its base URL. Fails the test if herald does not start
    or dies before the end, with its output."""
    binary = gateway_bin()
    if not binary.exists():
        pytest.fail(f"herald not found at {binary}; build it with `cargo build -p herald` or set HERALD_GATEWAY_BIN")
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    config = tmp / "herald.yml"
    config.write_text(config_yaml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}  # no stray config
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
