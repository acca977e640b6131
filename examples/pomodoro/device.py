#!/usr/bin/env python3
"""A simulated pomodoro timer on MQTT, as an ESP32 (or a Raspberry Pi) would be, with paho-mqtt.

    python3 device.py --broker mqtt://127.0.0.1:1883 --device desk

Every second it publishes its state to `pomodoro/<device>/state` (QoS 0):

    {"phase": "work", "remaining": 1499}            phase: "work", "break" or "idle"; remaining: seconds

and it obeys the commands it gets on `pomodoro/<device>/command` (subscribed at QoS 1). herald's event route
puts each one there as the JSON of a client event:

    {"site": "pomodoro", "event": "command", "args": ["desk", {"action": "start"}],
     "socket": {"id": "...", "user": "desk", "deviceId": null, "rooms": ["pomodoro_desk"]}}

- start: a work phase from its beginning (unless one is running);
- stop: idle;
- skip: on to the next phase at once (work to break, break to work).

A work phase ends in a break, a break ends idle. A command changes the state at once and publishes it, so the
page sees the effect without waiting for the next tick. The device never talks to herald: the broker is all it
knows. Each command it obeys or ignores is printed (`desk: start from user desk: work 1500 s`).
"""

import argparse
import json
import re
import signal
import sys
import threading
import time
import urllib.parse

import paho.mqtt.client as mqtt

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # one MQTT topic level, and a herald user and room name


class Pomodoro:
    """The timer: a phase and the seconds left in it. `tick()` once a second, `command()` for the page's
    buttons. Not thread-safe: the device holds its lock around both."""

    def __init__(self, work_secs, break_secs):
        self.lengths = {"work": work_secs, "break": break_secs, "idle": 0}
        self.phase, self.remaining = "idle", 0

    def state(self):
        return {"phase": self.phase, "remaining": self.remaining}

    def tick(self):
        if self.phase == "idle":
            return
        self.remaining -= 1
        if self.remaining <= 0:
            self._enter("break" if self.phase == "work" else "idle")

    def command(self, action):
        """Applies one action; False for an action it does not know."""
        if action == "start":
            if self.phase != "work":
                self._enter("work")
        elif action == "stop":
            self._enter("idle")
        elif action == "skip":
            if self.phase != "idle":
                self._enter("break" if self.phase == "work" else "work")
        else:
            return False
        return True

    def _enter(self, phase):
        self.phase, self.remaining = phase, self.lengths[phase]


class Device:
    """The timer on one MQTT connection: the main thread ticks, paho's network thread delivers commands, and a
    lock keeps each state change and its publish together, so states leave in the order they happened."""

    def __init__(self, name, broker, work_secs, break_secs):
        self.name = name
        self.state_topic = "pomodoro/%s/state" % name
        self.command_topic = "pomodoro/%s/command" % name
        self.timer = Pomodoro(work_secs, break_secs)
        self.lock = threading.Lock()
        parts = urllib.parse.urlsplit(broker)
        if parts.scheme != "mqtt":
            raise ValueError("the broker is an mqtt:// URL, not %r" % broker)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pomodoro-" + name)
        if parts.username:
            self.client.username_pw_set(urllib.parse.unquote(parts.username),
                                        urllib.parse.unquote(parts.password or ""))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def run(self, stop):
        """Connects, then ticks once a second until `stop` is set. paho reconnects by itself (1 s to 2 min apart)
        and `_on_connect` subscribes again each time."""
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        try:
            with self.lock:
                self._publish()
            next_tick = time.monotonic() + 1
            while not stop.wait(max(0.0, next_tick - time.monotonic())):
                next_tick += 1
                with self.lock:  # one step: a command cannot come between the tick and its publish
                    self.timer.tick()
                    self._publish()
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def _publish(self):
        # QoS 0: a state is replaced by the next one a second later. Called with the lock held.
        self.client.publish(self.state_topic, json.dumps(self.timer.state()), qos=0)

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties):
        if reason_code.is_failure:
            print("%s: the broker refused the connection: %s" % (self.name, reason_code), file=sys.stderr, flush=True)
            return
        # QoS 1: a command herald had PUBACKed reaches the device even if a packet is lost on the way.
        client.subscribe(self.command_topic, qos=1)
        print("%s: connected to mqtt://%s:%d; state every second on %s, commands from %s" % (
            self.name, self.host, self.port, self.state_topic, self.command_topic), flush=True)

    def _on_message(self, _client, _userdata, message):
        try:
            event = json.loads(message.payload)
            device, order = event["args"][0], event["args"][1]
            action, user = order["action"], event["socket"]["user"]
        except (ValueError, KeyError, IndexError, TypeError):
            print("%s: ignored a message that is not a command: %r" % (self.name, message.payload[:200]), flush=True)
            return
        if device != self.name:
            # The topic comes from the token's user, never from the page: this page named another device.
            print("%s: ignored %r for device %r from user %s" % (self.name, action, device, user), flush=True)
            return
        with self.lock:
            if not self.timer.command(action):
                print("%s: ignored unknown action %r from user %s" % (self.name, action, user), flush=True)
                return
            self._publish()
            state = self.timer.state()
        print("%s: %s from user %s: %s %d s" % (self.name, action, user, state["phase"], state["remaining"]),
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="the MQTT broker's URL")
    parser.add_argument("--device", default="desk", help="the device's name: its topics' second level")
    parser.add_argument("--work", type=int, default=25 * 60, help="seconds of a work phase")
    parser.add_argument("--break", dest="break_secs", type=int, default=5 * 60, help="seconds of a break")
    args = parser.parse_args()
    if not NAME.match(args.device):
        sys.exit("device.py: a device name is 1 to 64 of A-Z a-z 0-9 _ -, not %r" % args.device)
    if args.work < 1 or args.break_secs < 1:
        sys.exit("device.py: --work and --break are at least 1 second")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    device = Device(args.device, args.broker, args.work, args.break_secs)
    try:
        device.run(stop)
    except OSError as error:
        sys.exit("device.py: cannot reach the MQTT broker at %s: %s" % (args.broker, error))


if __name__ == "__main__":
    main()
