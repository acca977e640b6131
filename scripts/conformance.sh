#!/usr/bin/env bash
# Runs the official Socket.IO and Engine.IO protocol test suites against herald-conformance.
# For humans; NOT run by CI (the suites are not vendored in this repository).
#
# Prerequisites: the `test-suite/` folders of socketio/socket.io-protocol and
# socketio/engine.io-protocol, already on disk (they are not committed here), e.g.
#   git clone <mirror of socketio/socket.io-protocol> /tmp/sio-repo && export SIO_SUITE_DIR=/tmp/sio-repo/test-suite
#   git clone <mirror of socketio/engine.io-protocol> /tmp/eio-repo && export EIO_SUITE_DIR=/tmp/eio-repo/test-suite
# and a built binary (cargo build -p herald-conformance, or set HERALD_BIN).
#
# Usage: SIO_SUITE_DIR=... EIO_SUITE_DIR=... bash scripts/conformance.sh [sio|eio|all]
#
# What it does, for each suite and for each ws version in WS_VERSIONS (default "8.5.0 8.16.0";
# 8.5.0 is what both suites' package-lock.json pins):
#   - copies the suite to $WORK_DIR/<suite>-ws<version> (default WORK_DIR=/tmp/herald-conformance),
#     runs `npm ci` there (only once; the copy is reused on later runs) and, for a version other
#     than the lockfile's, `npm install ws@<version>`;
#   - starts `herald-conformance --port 3000 --suite socket.io|engine.io` (both suites hard-code
#     URL = "http://localhost:3000"; the socket.io suite uses the /socket.io/ path, the engine.io
#     suite /engine.io/; both expect pingInterval 300, pingTimeout 200, maxPayload 1e6, and the
#     socket.io suite connectTimeout 1000 ms);
#   - runs mocha (= the suites' `npm test`) and prints the passing/failing/pending counts.
# Mocha output is kept in $WORK_DIR/<suite>-ws<version>.log. Exit status is non-zero if any test failed.
#
# Env: CONFORMANCE_PORT (default 3000, what the suites hard-code; any other value rewrites the
#      `const URL = "http://localhost:3000"` line of the /tmp copy, never the original),
#      HERALD_BIN (default target/debug/herald-conformance, else target/release), WS_VERSIONS,
#      WORK_DIR, SUITE_TIMEOUT (seconds per mocha run, default 300), MOCHA_ARGS (extra mocha args,
#      e.g. "--grep handshake" or "--bail").

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${CONFORMANCE_PORT:-3000}"
WORK_DIR="${WORK_DIR:-/tmp/herald-conformance}"
WS_VERSIONS="${WS_VERSIONS:-8.5.0 8.16.0}"
SUITE_TIMEOUT="${SUITE_TIMEOUT:-300}"
MOCHA_ARGS="${MOCHA_ARGS:-}"
WHICH="${1:-all}"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

if [ -z "${HERALD_BIN:-}" ]; then
  HERALD_BIN="$ROOT/target/debug/herald-conformance"
  [ -x "$HERALD_BIN" ] || [ ! -x "$ROOT/target/release/herald-conformance" ] || HERALD_BIN="$ROOT/target/release/herald-conformance"
fi
[ -x "$HERALD_BIN" ] || { echo "conformance.sh: binary not found: $HERALD_BIN (cargo build -p herald-conformance)" >&2; exit 2; }

mkdir -p "$WORK_DIR"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  SERVER_PID=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start_server() { # $1 = socket.io | engine.io, $2 = log file
  if port_open; then
    echo "conformance.sh: port $PORT is already in use (the suites expect http://localhost:$PORT; set CONFORMANCE_PORT to use another one)" >&2
    return 1
  fi
  "$HERALD_BIN" --port "$PORT" --suite "$1" >"$2" 2>&1 </dev/null &
  SERVER_PID=$!
  local i
  for i in $(seq 1 200); do
    port_open && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "herald-conformance exited early:" >&2; tail -n 30 "$2" >&2; SERVER_PID=""; return 1; }
    sleep 0.05
  done
  echo "herald-conformance did not open port $PORT within 10 s" >&2
  return 1
}

prepare_copy() { # $1 = source test-suite dir, $2 = copy dir, $3 = ws version
  local src="$1" dst="$2" ws="$3"
  if [ ! -f "$dst/.prepared-ws-$ws" ]; then
    rm -rf "$dst"
    mkdir -p "$dst"
    cp -R "$src"/. "$dst"/
    rm -rf "$dst/node_modules"
    (cd "$dst" && npm ci --no-audit --no-fund --loglevel=error) || return 1
    local locked
    locked="$(cd "$dst" && node -p 'require("./node_modules/ws/package.json").version')"
    if [ "$locked" != "$ws" ]; then
      (cd "$dst" && npm install --no-audit --no-fund --loglevel=error "ws@$ws") || return 1
    fi
    touch "$dst/.prepared-ws-$ws"
  fi
  # always start from the pristine suite file, then point it at $PORT if that is not 3000
  cp "$src/test-suite.js" "$dst/test-suite.js"
  if [ "$PORT" != 3000 ]; then
    sed -i "s#^const URL = \"http://localhost:3000\";#const URL = \"http://localhost:$PORT\";#" "$dst/test-suite.js"
    grep -q "^const URL = \"http://localhost:$PORT\";" "$dst/test-suite.js" || { echo "could not retarget $dst/test-suite.js to port $PORT" >&2; return 1; }
  fi
  local have
  have="$(cd "$dst" && node -p 'require("./node_modules/ws/package.json").version')"
  [ "$have" = "$ws" ] || { echo "expected ws $ws in $dst, found $have" >&2; return 1; }
}

declare -a RESULTS=()
ANY_FAIL=0

run_suite() { # $1 = sio|eio
  local key="$1" src mode
  case "$key" in
    sio) src="${SIO_SUITE_DIR:-}"; mode="socket.io" ;;
    eio) src="${EIO_SUITE_DIR:-}"; mode="engine.io" ;;
  esac
  if [ -z "$src" ] || [ ! -f "$src/test-suite.js" ]; then
    echo "conformance.sh: ${key^^}_SUITE_DIR must point at the suite's test-suite/ folder (got '${src}')" >&2
    RESULTS+=("$mode: NOT RUN (suite dir missing)"); ANY_FAIL=1; return
  fi
  local ws
  for ws in $WS_VERSIONS; do
    local copy="$WORK_DIR/$key-ws$ws" log="$WORK_DIR/$key-ws$ws.log" slog="$WORK_DIR/$key-ws$ws.server.log"
    echo
    echo "==== $mode suite, ws $ws ($copy) ===="
    if ! prepare_copy "$src" "$copy" "$ws"; then
      RESULTS+=("$mode ws@$ws: NOT RUN (npm install failed)"); ANY_FAIL=1; continue
    fi
    if ! start_server "$mode" "$slog"; then
      RESULTS+=("$mode ws@$ws: NOT RUN (server did not start)"); ANY_FAIL=1; cleanup; continue
    fi
    # shellcheck disable=SC2086
    (cd "$copy" && timeout --kill-after=10 "$SUITE_TIMEOUT" ./node_modules/.bin/mocha --reporter spec --exit $MOCHA_ARGS test-suite.js) 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    cleanup
    local pass fail pend
    pass="$(grep -Eo '[0-9]+ passing' "$log" | tail -n1 | cut -d' ' -f1)"
    fail="$(grep -Eo '[0-9]+ failing' "$log" | tail -n1 | cut -d' ' -f1)"
    pend="$(grep -Eo '[0-9]+ pending' "$log" | tail -n1 | cut -d' ' -f1)"
    pass="${pass:-0}"; fail="${fail:-0}"; pend="${pend:-0}"
    [ "$rc" = 0 ] && [ "$fail" = 0 ] || ANY_FAIL=1
    local note=""
    [ "$rc" = 124 ] && note=" (TIMED OUT after ${SUITE_TIMEOUT}s)"
    RESULTS+=("$mode ws@$ws: $pass passing, $fail failing, $pend pending (mocha exit $rc)$note; log $log, server log $slog")
  done
}

case "$WHICH" in
  sio) run_suite sio ;;
  eio) run_suite eio ;;
  all) run_suite eio; run_suite sio ;;
  *) echo "usage: $0 [sio|eio|all]" >&2; exit 2 ;;
esac

echo
echo "==== conformance summary ($HERALD_BIN) ===="
for r in "${RESULTS[@]}"; do echo "  $r"; done
exit "$ANY_FAIL"
