"""What the python-socketio test modules share: loopback ports, and a recorder of one event's arguments."""

import os
import socket
import threading

HOST = os.environ.get("HERALD_HOST", "127.0.0.1")
STEP_TIMEOUT = 5.0  # any single wait


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
