#!/usr/bin/env python3
"""Runs the python-clock example: herald with herald.yml, clock.py publishing the time every second through
herald's HTTP API, and the page that shows it. Ctrl-C stops all three.

    python3 examples/python-clock/run.py [--port N] [--page-port N]
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))
from herald_example import Herald, PageHandler, announce, arguments, page_url, run_until_stopped, serve_page  # noqa: E402

SITE, KEY = "clock", "clock-example-key"  # as in herald.yml


def main():
    args = arguments(__doc__.splitlines()[0])
    page = serve_page(HERE, PageHandler, args.page_port)
    herald = Herald(HERE, page.server_address[1], args)
    PageHandler.page_config = {"url": herald.url, "site": SITE}
    clock = subprocess.Popen([sys.executable, str(HERE / "clock.py"), "--herald", herald.url, "--site", SITE,
                              "--key", KEY], stdin=subprocess.DEVNULL)
    announce("python-clock", page_url(page), herald.url, SITE)

    def stop_clock():
        clock.terminate()
        clock.wait()

    run_until_stopped([stop_clock, page.shutdown, herald.stop], {"herald": herald.process, "clock.py": clock})


if __name__ == "__main__":
    main()
