"""Opens socket.io sockets on a running herald so the fuzzer has live socket ids to hit.

Each socket is an Engine.IO v4 polling session that joins one site's namespace and then stays idle (the test's
herald.yml sets a heartbeat longer than the run). The ids are written as libFuzzer dictionaries, which
schemathesis draws path parameters from:

    python sockets.py --url http://127.0.0.1:PORT --site shop --count 8 --out DIR \
        [--herald BIN --config FILE]   # JWT site: tokens from `herald token`, one user per socket

writes DIR/<site>-keep.dict (for join/leave) and DIR/<site>-drop.dict (for DELETE), half the ids each.
Standard library only.
"""

import argparse
import json
import subprocess
import sys
import urllib.request

RECORD_SEPARATOR = "\x1e"


def request(url, data=None):
    body = None if data is None else data.encode()
    req = urllib.request.Request(url, data=body, method="GET" if data is None else "POST")
    if body is not None:
        req.add_header("Content-Type", "text/plain;charset=UTF-8")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def mint(args, user):
    rooms = [f"user_{user}", "team_a", f"team_{user % 3}"]
    command = [args.herald, "token", "--config", args.config, "--site", args.site, "--user", str(user)]
    for room in rooms:
        command += ["--room", room]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def open_socket(args, n):
    base = f"{args.url}/socket.io/?EIO=4&transport=polling"
    opened = request(base)
    if not opened.startswith("0"):
        raise RuntimeError(f"unexpected Engine.IO open packet: {opened!r}")
    sid = json.loads(opened[1:])["sid"]
    session = f"{base}&sid={sid}"
    auth = {"deviceId": f"device-{n}"}
    if args.herald:
        auth["token"] = mint(args, 100 + n // 2)  # two devices per user
    request(session, f"40/{args.site},{json.dumps(auth)}")
    prefix = f"40/{args.site},"
    for _ in range(5):
        for packet in request(session).split(RECORD_SEPARATOR):
            if packet.startswith(prefix):
                return json.loads(packet[len(prefix):])["sid"]
            if packet.startswith(f"44/{args.site},"):
                raise RuntimeError(f"site {args.site} refused socket {n}: {packet}")
    raise RuntimeError(f"no CONNECT answer for socket {n} on site {args.site}")


def write_dict(path, ids):
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(f'"{socket_id}"\n' for socket_id in ids)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--site", required=True)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--out", required=True)
    parser.add_argument("--herald", help="herald binary, to mint JWTs for a JWT site")
    parser.add_argument("--config", help="herald config holding the site's JWT secret")
    args = parser.parse_args()
    ids = [open_socket(args, n) for n in range(args.count)]
    write_dict(f"{args.out}/{args.site}-keep.dict", ids[0::2])
    write_dict(f"{args.out}/{args.site}-drop.dict", ids[1::2])
    print(f"[api-schema] {len(ids)} sockets on site {args.site}", file=sys.stderr)


if __name__ == "__main__":
    main()
