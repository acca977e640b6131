#!/usr/bin/env python3
"""Runs the click-counter example: the backend (page + POST /click, publishing to RabbitMQ) and herald with
herald.yml, whose AMQP bridge carries the counts to the page. Ctrl-C stops both.
The backend publishes with pika (examples/requirements.txt).

    python3 examples/click-counter/run.py [--port N] [--page-port N] [--queue NAME]
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))
sys.path.insert(0, str(HERE))
from herald_example import (Herald, announce, arguments, page_url, require, run_until_stopped,  # noqa: E402
                            serve_page, wait_until)

SITE, KEY = "clicks", "clicks-example-key"  # as in herald.yml
AMQP_URL, QUEUE = "amqp://guest:guest@127.0.0.1:5672/%2f", "herald.examples.clicks"  # as in herald.yml


def options(parser):
    parser.add_argument("--queue", default=QUEUE, help="the RabbitMQ queue between the backend and herald "
                        "(default %s, as in herald.yml)" % QUEUE)


def main():
    args = arguments(__doc__.splitlines()[0], options)
    require("pika", "pika")
    import backend  # after the check: it imports pika

    try:
        counter = backend.ClickCounter(AMQP_URL, args.queue)
    except (OSError, backend.AMQPError) as error:
        sys.exit("click-counter: cannot use RabbitMQ at 127.0.0.1:5672 (%s); start it (scripts/services.sh)" % error)
    backend.Handler.counter = counter
    page = serve_page(HERE, backend.Handler, args.page_port)
    herald = Herald(HERE, page.server_address[1], args, replace={"queue: " + QUEUE: "queue: " + args.queue})
    backend.Handler.page_config = {"url": herald.url, "site": SITE}

    def bridge_up():
        status, answer = herald.api("GET", "/api/v1/status", KEY)
        return status == 200 and all(b["state"] == "up" for b in answer["bridges"]) and answer["bridges"]

    wait_until(bridge_up, "herald's AMQP bridge to be up")
    announce("click-counter", page_url(page), herald.url, SITE)
    run_until_stopped([page.shutdown, herald.stop, counter.close], {"herald": herald.process})


if __name__ == "__main__":
    main()
