#!/usr/bin/env python3
"""Runs the plain-clients example: herald with herald.yml, ticker.py publishing a numbered tick every second
through herald's HTTP API, and two pages with no socket.io library: ws.html (the browser's WebSocket) and
sse.html (its EventSource). Ctrl-C stops all three.

    python3 examples/plain-clients/run.py [--port N] [--page-port N]
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))
from herald_example import Herald, PageHandler, announce, arguments, page_url, run_until_stopped, serve_page  # noqa: E402

SITE, KEY = "plain", "plain-example-key"  # as in herald.yml


def main():
    args = arguments(__doc__.splitlines()[0])
    page = serve_page(HERE, PageHandler, args.page_port)
    herald = Herald(HERE, page.server_address[1], args)
    PageHandler.page_config = {"url": herald.url, "site": SITE}
    ticker = subprocess.Popen([sys.executable, str(HERE / "ticker.py"), "--herald", herald.url, "--site", SITE,
                               "--key", KEY], stdin=subprocess.DEVNULL)
    print("plain-clients: the WebSocket page is %s/ws.html, the EventSource page %s/sse.html"
          % (page_url(page), page_url(page)), flush=True)
    announce("plain-clients", page_url(page), herald.url, SITE, socket_io=False)

    def stop_ticker():
        ticker.terminate()
        ticker.wait()

    run_until_stopped([stop_ticker, page.shutdown, herald.stop], {"herald": herald.process, "ticker.py": ticker})


if __name__ == "__main__":
    main()
