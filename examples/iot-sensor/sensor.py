#!/usr/bin/env python3
"""A simulated temperature sensor that posts its readings to herald's HTTP API, standard library only.

    python3 sensor.py --herald http://127.0.0.1:3000 --site sensors --key sensors-example-key [--stdin]

Each reading is `POST /api/v1/sites/<site>/publish` with `Authorization: Bearer <key>` and the body
{"rooms": ["sensors"], "event": "reading:kitchen", "args": [{"sensor": "kitchen", "celsius": 21.5}],
 "retain": true, "if_changed": true}.

`retain`: herald keeps the reading as the room's last `reading:kitchen`, and a page that joins later gets it at
once. `if_changed`: when the reading equals the kept one, herald sends nothing and answers "changed": false, so
a sensor may post every few seconds without waking every page. That is why the arguments hold no timestamp:
with one, every reading would differ.

Readings are simulated (a slow random walk, to half a degree, so many repeat); with --stdin each line you type
is a reading. Each answer is printed: `kitchen 21.5 C: herald answered {"changed": true, ...}`.
"""

import argparse
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request


def publish(herald, site, key, body):
    """POSTs one publish; returns herald's answer ({"matched", "changed", ...}) or raises with herald's error."""
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


def simulated(start, interval):
    """A reading every `interval` seconds: a random walk rounded to half a degree."""
    celsius = start
    while True:
        yield round(celsius * 2) / 2
        time.sleep(interval)
        celsius += random.uniform(-0.3, 0.3)


def typed():
    """One reading per line of standard input."""
    for line in sys.stdin:
        try:
            yield float(line)
        except ValueError:
            if line.strip():
                print("not a temperature: %r" % line.strip(), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--herald", default="http://127.0.0.1:3000", help="herald's base URL")
    parser.add_argument("--site", default="sensors")
    parser.add_argument("--key", default=os.environ.get("SENSOR_API_KEY"), help="the site's API key "
                        "(or SENSOR_API_KEY)")
    parser.add_argument("--room", default="sensors")
    parser.add_argument("--sensor", default="kitchen", help="the sensor's name; its event is reading:<name>")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between simulated readings")
    parser.add_argument("--stdin", action="store_true", help="read one reading per line of standard input")
    args = parser.parse_args()
    if not args.key:
        sys.exit("sensor.py: give the site's API key (--key or SENSOR_API_KEY)")
    readings = typed() if args.stdin else simulated(21.0, args.interval)
    print("sensor.py: %s readings of %s to %s, site %s, room %s" % (
        "typed" if args.stdin else "simulated", args.sensor, args.herald, args.site, args.room), flush=True)
    for celsius in readings:
        body = {"rooms": [args.room], "event": "reading:" + args.sensor,
                "args": [{"sensor": args.sensor, "celsius": celsius}], "retain": True, "if_changed": True}
        try:
            answer = publish(args.herald, args.site, args.key, body)
        except (OSError, RuntimeError) as error:  # herald restarting: the next reading tries again
            print("%s %s C: not published: %s" % (args.sensor, celsius, error), file=sys.stderr, flush=True)
            continue
        print("%s %s C: herald answered %s" % (args.sensor, celsius, json.dumps(answer, sort_keys=True)), flush=True)
    print("sensor.py: no more readings", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
