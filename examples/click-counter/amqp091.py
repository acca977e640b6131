"""A minimal AMQP 0-9-1 publisher (RabbitMQ) in the standard library: connect with PLAIN, open one channel in
confirm mode, declare, purge or delete a queue, publish persistent messages to it through the default exchange
and wait for the broker's confirm of each one.

It is here so the example runs with a bare python3. A real backend would use pika or aio-pika; the calls map
one to one: `Publisher(url)` is `pika.BlockingConnection(...)` plus `channel.confirm_delivery()`,
`declare_queue` is `queue_declare(durable=True)`, `publish` is `basic_publish(..., mandatory=True)` with
`delivery_mode=2`.

Not here: TLS, heartbeats (the connection asks for none), consuming, exchanges other than the default one.
"""

import socket
import struct
import urllib.parse

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE

CONNECTION_START, CONNECTION_START_OK = (10, 10), (10, 11)
CONNECTION_TUNE, CONNECTION_TUNE_OK = (10, 30), (10, 31)
CONNECTION_OPEN, CONNECTION_OPEN_OK = (10, 40), (10, 41)
CONNECTION_CLOSE, CONNECTION_CLOSE_OK = (10, 50), (10, 51)
CHANNEL_OPEN, CHANNEL_OPEN_OK = (20, 10), (20, 11)
CHANNEL_CLOSE, CHANNEL_CLOSE_OK = (20, 40), (20, 41)
QUEUE_DECLARE, QUEUE_DECLARE_OK = (50, 10), (50, 11)
QUEUE_PURGE, QUEUE_PURGE_OK = (50, 30), (50, 31)
QUEUE_DELETE, QUEUE_DELETE_OK = (50, 40), (50, 41)
BASIC_PUBLISH, BASIC_RETURN = (60, 40), (60, 50)
BASIC_ACK, BASIC_NACK = (60, 80), (60, 120)
CONFIRM_SELECT, CONFIRM_SELECT_OK = (85, 10), (85, 11)


class AmqpError(Exception):
    """The broker refused something (its reply code and text), or the connection broke."""


def shortstr(text):
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError("AMQP short string over 255 bytes: %r" % text)
    return struct.pack("B", len(raw)) + raw


def longstr(raw):
    return struct.pack(">I", len(raw)) + raw


def table(fields):
    """A field table of strings (type S), which is all this publisher sends."""
    body = b"".join(shortstr(k) + b"S" + longstr(v.encode()) for k, v in fields.items())
    return longstr(body)


class Publisher:
    """One connection and one confirm-mode channel to the broker at `url` (amqp://user:pass@host:port/vhost)."""

    def __init__(self, url, timeout=10):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "amqp":
            raise ValueError("only amqp:// URLs are supported, not %r" % parts.scheme)
        self.user = urllib.parse.unquote(parts.username or "guest")
        self.password = urllib.parse.unquote(parts.password or "guest")
        self.vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.delivery_tag = 0
        self.frame_max = 131072
        self._open()

    # -- frames -------------------------------------------------------------------------------------------------

    @staticmethod
    def _frame(kind, channel, payload):
        return struct.pack(">BHI", kind, channel, len(payload)) + payload + bytes([FRAME_END])

    def _send_method(self, channel, method, args=b""):
        self.sock.sendall(self._frame(FRAME_METHOD, channel, struct.pack(">HH", *method) + args))

    def _read_exact(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AmqpError("the broker closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _read_frame(self):
        kind, channel, size = struct.unpack(">BHI", self._read_exact(7))
        payload = self._read_exact(size)
        if self._read_exact(1)[0] != FRAME_END:
            raise AmqpError("bad frame end from the broker")
        return kind, channel, payload

    def _read_method(self, *expected):
        """The next method frame, which must be one of `expected`: (method, arguments). A close from the broker
        is answered and raised; heartbeats and the bodies of returned messages are skipped."""
        while True:
            kind, channel, payload = self._read_frame()
            if kind != FRAME_METHOD:
                continue
            method, args = struct.unpack(">HH", payload[:4]), payload[4:]
            if method in (CONNECTION_CLOSE, CHANNEL_CLOSE):
                code, = struct.unpack(">H", args[:2])
                text = args[3:3 + args[2]].decode(errors="replace")
                if method == CHANNEL_CLOSE:
                    self._send_method(channel, CHANNEL_CLOSE_OK)
                else:
                    self._send_method(0, CONNECTION_CLOSE_OK)
                raise AmqpError("%d %s" % (code, text))
            if method in expected:
                return method, args
            # anything else (connection.blocked, ...) does not concern a publisher waiting for `expected`

    # -- connection and channel ---------------------------------------------------------------------------------

    def _open(self):
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self._read_method(CONNECTION_START)
        response = b"\x00" + self.user.encode() + b"\x00" + self.password.encode()
        self._send_method(0, CONNECTION_START_OK, table({"product": "herald click-counter example"})
                          + shortstr("PLAIN") + longstr(response) + shortstr("en_US"))
        _, args = self._read_method(CONNECTION_TUNE)
        channel_max, frame_max, _heartbeat = struct.unpack(">HIH", args[:8])
        self.frame_max = frame_max or self.frame_max
        # heartbeat 0: none; a publisher that finds the connection gone reconnects (see backend.py)
        self._send_method(0, CONNECTION_TUNE_OK, struct.pack(">HIH", channel_max, self.frame_max, 0))
        self._send_method(0, CONNECTION_OPEN, shortstr(self.vhost) + shortstr("") + b"\x00")
        self._read_method(CONNECTION_OPEN_OK)
        self._send_method(1, CHANNEL_OPEN, shortstr(""))
        self._read_method(CHANNEL_OPEN_OK)
        self._send_method(1, CONFIRM_SELECT, b"\x00")
        self._read_method(CONFIRM_SELECT_OK)

    def close(self):
        try:
            self._send_method(0, CONNECTION_CLOSE, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0))
            self._read_method(CONNECTION_CLOSE_OK)
        except (OSError, AmqpError):
            pass
        finally:
            self.sock.close()

    # -- queues and messages ------------------------------------------------------------------------------------

    def declare_queue(self, name):
        """Declares `name` durable with no arguments, as herald's bridge does, so either may declare it first."""
        flags = 0b10  # durable; not passive, exclusive, auto-delete or no-wait
        self._send_method(1, QUEUE_DECLARE, struct.pack(">H", 0) + shortstr(name) + bytes([flags]) + table({}))
        self._read_method(QUEUE_DECLARE_OK)

    def purge_queue(self, name):
        """Drops the queue's ready messages; returns how many there were."""
        self._send_method(1, QUEUE_PURGE, struct.pack(">H", 0) + shortstr(name) + b"\x00")
        _, args = self._read_method(QUEUE_PURGE_OK)
        return struct.unpack(">I", args[:4])[0]

    def delete_queue(self, name):
        """Deletes the queue and its messages; returns how many messages it held."""
        self._send_method(1, QUEUE_DELETE, struct.pack(">H", 0) + shortstr(name) + b"\x00")
        _, args = self._read_method(QUEUE_DELETE_OK)
        return struct.unpack(">I", args[:4])[0]

    def publish(self, queue, body, content_type="application/json"):
        """Publishes `body` (bytes) to `queue` through the default exchange, persistent and mandatory, and returns
        once the broker confirmed it. A message no queue took, or one the broker nacked, raises AmqpError."""
        self.delivery_tag += 1
        # the method, the content header and the body frames leave in one write
        frames = [self._frame(FRAME_METHOD, 1, struct.pack(">HH", *BASIC_PUBLISH) + struct.pack(">H", 0)
                              + shortstr("") + shortstr(queue) + b"\x01")]  # mandatory
        flags = 0x8000 | 0x1000  # content-type, delivery-mode
        properties = shortstr(content_type) + bytes([2])  # 2: persistent
        frames.append(self._frame(FRAME_HEADER, 1, struct.pack(">HHQH", 60, 0, len(body), flags) + properties))
        chunk = self.frame_max - 8
        for start in range(0, len(body), chunk):
            frames.append(self._frame(FRAME_BODY, 1, body[start:start + chunk]))
        self.sock.sendall(b"".join(frames))
        returned = None
        while True:
            method, args = self._read_method(BASIC_ACK, BASIC_NACK, BASIC_RETURN)
            if method == BASIC_RETURN:
                code, = struct.unpack(">H", args[:2])
                returned = "%d %s" % (code, args[3:3 + args[2]].decode(errors="replace"))
                continue
            tag, = struct.unpack(">Q", args[:8])
            multiple = args[8] & 1
            if tag == self.delivery_tag or (multiple and tag >= self.delivery_tag):
                if method == BASIC_NACK:
                    raise AmqpError("the broker nacked the message")
                if returned:
                    raise AmqpError("no queue took the message: " + returned)
                return
