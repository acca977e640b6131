#!/usr/bin/env python3
"""Publishes a numbered tick to herald every second, through its HTTP API, with nothing but the standard library.

    python3 ticker.py --herald http://127.0.0.1:3000 --site plain --key plain-example-key

Each tick is `POST /api/v1/sites/<site>/publish` with `Authorization: Bearer <key>` and the body
{"rooms": ["lobby"], "event": "tick", "args": [{"n": 7, "iso": "2026-01-01T12:00:07+00:00"}]}.

Unlike python-clock's ticks these are not `volatile`: herald logs them for the site's recovery window, so a
client that comes back (an EventSource with Last-Event-ID) gets the ones it missed, and `n` shows that none is
missing or repeated.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone


def publish(herald, site, key, body):
    """POSTs one publish; returns herald's answer ({"matched": n}) or raises with herald's error text."""
    request = urllib.request.Request(
        "%s/api/v1/sites/%s/publish" % (herald.rstrip("/"), site),
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:  # 4xx/5xx: herald says what was wrong in {"error": "..."}
        raise RuntimeError("herald answered %d: %s" % (error.code, error.read().decode(errors="replace"))) from None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--herald", default="http://127.0.0.1:3000", help="herald's base URL")
    parser.add_argument("--site", default="plain")
    parser.add_argument("--key", default=os.environ.get("TICKER_API_KEY"), help="the site's API key "
                        "(or TICKER_API_KEY)")
    parser.add_argument("--room", default="lobby")
    args = parser.parse_args()
    if not args.key:
        sys.exit("ticker.py: give the site's API key (--key or TICKER_API_KEY)")
    print("ticker.py: publishing a tick to %s, site %s, room %s, every second" % (args.herald, args.site, args.room),
          flush=True)
    n = 0
    failing = False
    while True:
        time.sleep(1 - time.time() % 1)  # tick on the second
        n += 1
        now = datetime.now(timezone.utc)
        body = {"rooms": [args.room], "event": "tick", "args": [{"n": n, "iso": now.isoformat(timespec="seconds")}]}
        try:
            publish(args.herald, args.site, args.key, body)
            if failing:
                print("ticker.py: publishing again from tick %d" % n, flush=True)
            failing = False
        except (OSError, RuntimeError) as error:  # herald restarting: say it once, keep ticking
            if not failing:
                print("ticker.py: cannot publish tick %d: %s" % (n, error), file=sys.stderr, flush=True)
            failing = True


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
