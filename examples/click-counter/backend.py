"""The click-counter's backend: it takes clicks (`POST /click` from the page), keeps the running count and
publishes each new count to a RabbitMQ queue in herald's v1 publish shape. herald's AMQP bridge consumes the
queue and pushes the count to every page; the message is retained, so a page that opens later gets the current
count at once. The backend never talks to herald itself.
"""

import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from herald_example import PageHandler  # noqa: E402 (after the path is set)

import amqp091  # noqa: E402

ROOM = "counter"  # the site's public_channel in herald.yml: every page is in it


class ClickCounter:
    """The count and the one AMQP connection it is published on; a lock keeps counts and messages in order."""

    def __init__(self, amqp_url, queue):
        self.amqp_url = amqp_url
        self.queue = queue
        self.count = 0
        self.lock = threading.Lock()
        self.publisher = self._connect()
        # This backend starts at 0: counts left in the queue by an earlier run are stale, so they go.
        stale = self.publisher.purge_queue(queue)
        if stale:
            print("click-counter: dropped %d stale count(s) from %s" % (stale, queue), flush=True)

    def _connect(self):
        publisher = amqp091.Publisher(self.amqp_url)
        publisher.declare_queue(self.queue)  # durable, as herald declares it: whichever starts first creates it
        return publisher

    def click(self):
        """Counts one click and returns the new count once RabbitMQ has confirmed its message."""
        with self.lock:
            self.count += 1
            message = {"rooms": [ROOM], "event": "count", "args": [self.count], "retain": True}
            body = json.dumps(message).encode()
            try:
                self.publisher.publish(self.queue, body)
            except (OSError, amqp091.AmqpError):
                # The broker restarted or dropped us: one new connection, one more try.
                self.publisher.sock.close()
                self.publisher = self._connect()
                self.publisher.publish(self.queue, body)
            return self.count

    def close(self):
        with self.lock:
            self.publisher.close()


class Handler(PageHandler):
    """The page (web/index.html) and `POST /click`, which answers {"count": n}."""

    counter = None  # a ClickCounter, set before serving

    def do_POST(self):
        if self.path != "/click":
            return self.send_json(404, {"error": "not found"})
        try:
            count = self.counter.click()
        except (OSError, amqp091.AmqpError) as error:
            return self.send_json(503, {"error": "could not publish the count: %s" % error})
        return self.send_json(200, {"count": count})
