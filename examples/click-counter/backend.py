"""The click-counter's backend: it takes clicks (`POST /click` from the page), keeps the running count and
publishes each new count to a RabbitMQ queue in herald's v1 publish shape. herald's AMQP bridge consumes the
queue and pushes the count to every page; the message is retained, so a page that opens later gets the current
count at once. The backend never talks to herald itself.
"""

import json
import sys
import threading
from pathlib import Path

import pika
from pika.exceptions import AMQPError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from herald_example import PageHandler  # noqa: E402 (after the path is set)

ROOM = "counter"  # the site's public_channel in herald.yml: every page is in it


def connect(amqp_url):
    """One blocking connection and a channel in confirm mode: `basic_publish` returns once RabbitMQ has the
    message, and raises when it nacks it or (mandatory) no queue took it.

    No heartbeats: a backend that publishes only from its request threads never services them, and the broker
    would close the connection after two missed ones. A connection that broke anyway (a broker restart) is
    found on the next publish, which `ClickCounter.click` retries once on a new connection."""
    parameters = pika.URLParameters(amqp_url)
    parameters.heartbeat = 0
    parameters.blocked_connection_timeout = 10  # a broker out of memory or disk: fail the click, do not hang
    connection = pika.BlockingConnection(parameters)
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


class ClickCounter:
    """The count and the one AMQP connection it is published on; a lock keeps counts and messages in order (and
    pika's BlockingConnection to one thread at a time)."""

    def __init__(self, amqp_url, queue):
        self.amqp_url = amqp_url
        self.queue = queue
        self.count = 0
        self.lock = threading.Lock()
        self.connection, self.channel = self._connect()
        # This backend starts at 0: counts left in the queue by an earlier run are stale, so they go.
        stale = self.channel.queue_purge(queue).method.message_count
        if stale:
            print("click-counter: dropped %d stale count(s) from %s" % (stale, queue), flush=True)

    def _connect(self):
        connection, channel = connect(self.amqp_url)
        # Durable with no arguments, as herald's bridge declares it: whichever starts first creates it.
        channel.queue_declare(self.queue, durable=True)
        return connection, channel

    def _publish(self, body):
        # Through the default exchange to the queue; persistent, and mandatory: a message no queue takes is an
        # error (pika.exceptions.UnroutableError), not a count lost in silence.
        self.channel.basic_publish(exchange="", routing_key=self.queue, body=body, mandatory=True,
                                   properties=pika.BasicProperties(content_type="application/json",
                                                                   delivery_mode=pika.DeliveryMode.Persistent))

    def click(self):
        """Counts one click and returns the new count once RabbitMQ has confirmed its message (a click whose
        message RabbitMQ did not take raises and does not count)."""
        with self.lock:
            count = self.count + 1
            message = {"rooms": [ROOM], "event": "count", "args": [count], "retain": True}
            body = json.dumps(message).encode()
            try:
                self._publish(body)
            except (OSError, AMQPError):
                # The broker restarted or dropped us: one new connection, one more try.
                self._close()
                self.connection, self.channel = self._connect()
                self._publish(body)
            self.count = count
            return count

    def _close(self):
        try:
            if self.connection.is_open:
                self.connection.close()
        except (OSError, AMQPError):
            pass

    def close(self):
        with self.lock:
            self._close()


class Handler(PageHandler):
    """The page (web/index.html) and `POST /click`, which answers {"count": n}."""

    counter = None  # a ClickCounter, set before serving

    def do_POST(self):
        if self.path != "/click":
            return self.send_json(404, {"error": "not found"})
        try:
            count = self.counter.click()
        except (OSError, AMQPError) as error:
            return self.send_json(503, {"error": "could not publish the count: %s" % error})
        return self.send_json(200, {"count": count})
