#!/usr/bin/env python3
"""Runs the pomodoro example: herald with herald.yml (an MQTT bridge for the device's state, an MQTT route for
the page's commands), device.py on Mosquitto, and the page, with a token for the device's user. Ctrl-C stops all.

    python3 examples/pomodoro/run.py [--port N] [--page-port N] [--device NAME] [--work SECONDS] [--break SECONDS]

The device needs paho-mqtt (examples/requirements.txt) and Mosquitto on 127.0.0.1:1883.
"""

import atexit
import re
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))
from herald_example import (Herald, PageHandler, announce, arguments, page_url, require,  # noqa: E402
                            run_until_stopped, serve_page, wait_until)

SITE, KEY = "pomodoro", "pomodoro-example-key"  # as in herald.yml
BROKER_HOST, BROKER_PORT = "127.0.0.1", 1883  # as in herald.yml
TOKEN_TTL_SECS = 24 * 3600
STATE_BRIDGE = "mqtt pomodoro/+/state → pomodoro"  # its name in GET /api/v1/status


def device_name(value):
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise ValueError(value)
    return value


def options(parser):
    parser.add_argument("--device", type=device_name, default="desk", help="the device's name (1 to 64 of "
                        "A-Z a-z 0-9 _ -), also its user in the page's token (default desk)")
    parser.add_argument("--work", type=int, default=25 * 60, help="seconds of a work phase (default 1500)")
    parser.add_argument("--break", dest="break_secs", type=int, default=5 * 60,
                        help="seconds of a break (default 300)")


def main():
    args = arguments(__doc__.splitlines()[0], options)
    require("paho.mqtt.client", "paho-mqtt")
    try:
        socket.create_connection((BROKER_HOST, BROKER_PORT), timeout=3).close()
    except OSError as error:
        sys.exit("pomodoro: cannot reach Mosquitto at %s:%d (%s); start it (scripts/services.sh)" % (
            BROKER_HOST, BROKER_PORT, error))
    page = serve_page(HERE, PageHandler, args.page_port)
    herald = Herald(HERE, page.server_address[1], args)
    room = "pomodoro_" + args.device
    # What a backend would hand a logged-in user's page: a token whose user is the device's name (the route's
    # {user}) and whose one room is the device's (the bridge's pomodoro_{1}).
    token = herald.token(SITE, args.device, [room], TOKEN_TTL_SECS)
    PageHandler.page_config = {"url": herald.url, "site": SITE, "device": args.device, "token": token}

    def bridge_up():
        # The status lists the event route too ("command → mqtt pomodoro/{user}/command"), which stays idle
        # until the first command: only the bridge must be up.
        status, answer = herald.api("GET", "/api/v1/status", KEY)
        return status == 200 and any(b["bridge"] == STATE_BRIDGE and b["state"] == "up" for b in answer["bridges"])

    wait_until(bridge_up, "herald's MQTT bridge to be up")
    device = subprocess.Popen([sys.executable, str(HERE / "device.py"), "--broker",
                               "mqtt://%s:%d" % (BROKER_HOST, BROKER_PORT), "--device", args.device,
                               "--work", str(args.work), "--break", str(args.break_secs)], stdin=subprocess.DEVNULL)

    def stop_device():
        if device.poll() is None:
            device.terminate()
            device.wait()

    atexit.register(stop_device)  # also when a wait below gives up

    def state_retained():
        if device.poll() is not None:
            sys.exit("pomodoro: device.py exited with code %s" % device.returncode)
        status, answer = herald.api("GET", "/api/v1/sites/%s/rooms/%s/retained" % (SITE, room), KEY)
        return status == 200 and answer["retained"]

    # The device's first state has gone through the bridge: a page opened now shows it at once.
    wait_until(state_retained, "the device's first state through the bridge")
    announce("pomodoro", page_url(page), herald.url, SITE)
    run_until_stopped([stop_device, page.shutdown, herald.stop], {"herald": herald.process, "device.py": device})


if __name__ == "__main__":
    main()
