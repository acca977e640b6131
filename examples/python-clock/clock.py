#!/usr/bin/env python3
"""Publishes the time to herald every second, through its HTTP API, with nothing but the standard library.

    python3 clock.py --herald http://127.0.0.1:3000 --site clock --key clock-example-key

Each tick is `POST /api/v1/sites/<site>/publish` with `Authorization: Bearer <key>` and the body
{"rooms": ["clock"], "event": "time", "args": [{"iso": "...", "epoch_ms": ...}], "volatile": true}.
`volatile`: a tick is worth nothing later, so herald neither logs it for reconnecting clients nor queues it.
The same with crossroads' API: POST /send?site=clock&apiKey=<key> {"rooms": "clock", "event": "time", "args": [...]}.
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
    parser.add_argument("--site", default="clock")
    parser.add_argument("--key", default=os.environ.get("CLOCK_API_KEY"), help="the site's API key "
                        "(or CLOCK_API_KEY)")
    parser.add_argument("--room", default="clock")
    args = parser.parse_args()
    if not args.key:
        sys.exit("clock.py: give the site's API key (--key or CLOCK_API_KEY)")
    print("clock.py: publishing the time to %s, site %s, room %s, every second" % (args.herald, args.site, args.room),
          flush=True)
    failing = False
    while True:
        time.sleep(1 - time.time() % 1)  # tick on the second
        now = datetime.now(timezone.utc)
        body = {"rooms": [args.room], "event": "time", "volatile": True,
                "args": [{"iso": now.isoformat(timespec="seconds"), "epoch_ms": int(now.timestamp() * 1000)}]}
        try:
            publish(args.herald, args.site, args.key, body)
            if failing:
                print("clock.py: publishing again", flush=True)
            failing = False
        except (OSError, RuntimeError) as error:  # herald restarting: say it once, keep ticking
            if not failing:
                print("clock.py: cannot publish: %s" % error, file=sys.stderr, flush=True)
            failing = True


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
