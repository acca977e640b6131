#!/usr/bin/env python3
"""Runs the iot-sensor example: herald with herald.yml, sensor.py posting readings with `retain` and
`if_changed`, and the page that shows the last reading. Ctrl-C stops all three.

    python3 examples/iot-sensor/run.py [--port N] [--page-port N] [--stdin] [--interval SECONDS]

With --stdin, each line you type is a reading: type the same value twice and the second answer says
"changed": false, and the page gets nothing.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))
from herald_example import Herald, PageHandler, announce, arguments, page_url, run_until_stopped, serve_page  # noqa: E402

SITE, KEY = "sensors", "sensors-example-key"  # as in herald.yml


def options(parser):
    parser.add_argument("--stdin", action="store_true", help="type the readings (one per line) instead of "
                        "simulating them")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between simulated readings")


def main():
    args = arguments(__doc__.splitlines()[0], options)
    page = serve_page(HERE, PageHandler, args.page_port)
    herald = Herald(HERE, page.server_address[1], args)
    PageHandler.page_config = {"url": herald.url, "site": SITE}
    command = [sys.executable, str(HERE / "sensor.py"), "--herald", herald.url, "--site", SITE, "--key", KEY,
               "--interval", str(args.interval)]
    # With --stdin the sensor reads this process's standard input: what you type goes to it.
    sensor = subprocess.Popen(command + ["--stdin"] if args.stdin else command,
                              stdin=None if args.stdin else subprocess.DEVNULL)
    announce("iot-sensor", page_url(page), herald.url, SITE)

    def stop_sensor():
        sensor.terminate()
        sensor.wait()

    watch = {"herald": herald.process} if args.stdin else {"herald": herald.process, "sensor.py": sensor}
    run_until_stopped([stop_sensor, page.shutdown, herald.stop], watch)


if __name__ == "__main__":
    main()
