"""The auction's backend: herald's webhook for the `bid` event. It checks herald's signature, validates the bid
against the current price, and answers with the bidder's ack (`reply`) and, for a bid it takes, a publish of
the new price to the auction room, retained so a page that opens later shows it at once.

What herald POSTs (signed: X-Herald-Signature: sha256=<hex HMAC-SHA256 of the body>):
    {"site": "auction", "event": "bid", "args": [{"amount": 120, "bidder": "alice"}],
     "socket": {"id": "...", "user": null, "deviceId": null, "rooms": ["auction", "..."]}}
What it answers for a bid it takes:
    {"reply": [{"ok": true, "price": 120}],
     "publish": [{"rooms": ["auction"], "event": "price", "args": [{"price": 120, "bidder": "alice", "seq": 1}],
                  "retain": true}]}
and for one it refuses (herald acks the reply, and publishes nothing):
    {"reply": [{"error": "bid 110 is too low: the price is 120"}]}
"""

import hashlib
import hmac
import json
import math
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from herald_example import PageHandler, http_json  # noqa: E402 (after the path is set)

ROOM = "auction"  # the site's public_channel in herald.yml: every page is in it


class Auction:
    """One lot: its price, its leader and how many bids it took. A lock makes check-and-set one step."""

    def __init__(self, opening_price):
        self.price = opening_price
        self.leader = None
        self.seq = 0  # bids taken; pages ignore a price older than the one they show
        self.lock = threading.Lock()

    def state(self):
        return {"price": self.price, "bidder": self.leader, "seq": self.seq}

    def bid(self, args):
        """The webhook's answer to one `bid` event's arguments."""
        offer = args[0] if args and isinstance(args[0], dict) else {}
        amount, bidder = offer.get("amount"), offer.get("bidder")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount):
            return {"reply": [{"error": "a bid is {\"amount\": number, \"bidder\": name}"}]}
        if not isinstance(bidder, str) or not 0 < len(bidder.strip()) <= 40:
            return {"reply": [{"error": "a bid needs the bidder's name (at most 40 characters)"}]}
        with self.lock:
            if amount <= self.price:
                return {"reply": [{"error": "bid %s is too low: the price is %s" % (amount, self.price)}]}
            self.price, self.leader, self.seq = amount, bidder.strip(), self.seq + 1
            state = self.state()
        # herald publishes this as POST .../publish would (retained for the room), then acks the bidder.
        return {"reply": [{"ok": True, "price": amount}],
                "publish": [{"rooms": [ROOM], "event": "price", "args": [state], "retain": True}]}

    def open(self, herald_url, site, key):
        """Publishes the opening price (retained) through herald's HTTP API, so pages show it before any bid."""
        body = {"rooms": [ROOM], "event": "price", "args": [self.state()], "retain": True}
        status, answer = http_json("POST", "%s/api/v1/sites/%s/publish" % (herald_url, site), body,
                                   {"Authorization": "Bearer " + key})
        if status != 200:
            raise RuntimeError("herald refused the opening price: %s %s" % (status, answer))


def signed_by(secret, body, header):
    """Whether `header` (X-Herald-Signature) is herald's signature of `body` under `secret`."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header or "")


class Handler(PageHandler):
    """The page (web/index.html) and the webhook, `POST /events/bid`."""

    auction = None  # an Auction, set before serving
    signing_secret = None  # the site's signing_secret in herald.yml

    def do_POST(self):
        if self.path != "/events/bid":
            return self.send_json(404, {"error": "not found"})
        raw = self.read_body()
        if not signed_by(self.signing_secret, raw, self.headers.get("X-Herald-Signature")):
            # herald acks the bidder {"error": "the backend answered 401"}
            return self.send_json(401, {"error": "bad signature"})
        try:
            event = json.loads(raw)
        except ValueError:
            return self.send_json(400, {"error": "not JSON"})
        return self.send_json(200, self.auction.bid(event.get("args") or []))
