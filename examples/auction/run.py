#!/usr/bin/env python3
"""Runs the auction example: the backend (the page, and the webhook herald routes `bid` to) and herald with
herald.yml; the backend then publishes the opening price. Ctrl-C stops both.

    python3 examples/auction/run.py [--port N] [--page-port N] [--opening-price N]
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))
sys.path.insert(0, str(HERE))
from herald_example import Herald, announce, arguments, page_url, run_until_stopped, serve_page  # noqa: E402

import backend  # noqa: E402

SITE, KEY, SIGNING_SECRET = "auction", "auction-example-key", "auction-example-signing-secret"  # as in herald.yml


def options(parser):
    parser.add_argument("--opening-price", type=int, default=100, help="the lot's price before any bid")


def main():
    args = arguments(__doc__.splitlines()[0], options)
    auction = backend.Auction(args.opening_price)
    backend.Handler.auction = auction
    backend.Handler.signing_secret = SIGNING_SECRET
    page = serve_page(HERE, backend.Handler, args.page_port)  # the page and the webhook: one server
    herald = Herald(HERE, page.server_address[1], args)
    backend.Handler.page_config = {"url": herald.url, "site": SITE}
    auction.open(herald.url, SITE, KEY)
    announce("auction", page_url(page), herald.url, SITE)
    run_until_stopped([page.shutdown, herald.stop], {"herald": herald.process})


if __name__ == "__main__":
    main()
