#!/usr/bin/env bash
# Fuzzes herald's HTTP API against its own OpenAPI document with schemathesis: no 5xx, and every answer (2xx and
# 4xx alike, 401s of a wrong key included) conforms to /api/v1/openapi.json in status, content type and body.
#
# Usage: bash tests/api-schema/run.sh
#   env HERALD_SERVER_BIN      herald binary to run (default ${CARGO_TARGET_DIR:-target}/debug/herald)
#   env API_SCHEMA_EXAMPLES    test cases per operation and pass (default 60)
#   env API_SCHEMA_SEED        explore: generate from this seed instead of the fixed, derandomized cases CI runs
#   env API_SCHEMA_ARGS        more `schemathesis run` arguments, e.g. "--report har --report-dir /tmp/st"
#
# It starts one herald (tests/api-schema/herald.yml: a public site `news` with a public channel and a mailbox
# site `shop` with JWT users; data in a temp dir) on a free port, opens a few idle socket.io sockets on each
# site (sockets.py) so socket ids, rooms and mailboxes are live, then runs three schemathesis passes: `shop`
# with its key, `news` with its key, and `shop` with a wrong key. The venv tests/api-schema/.venv is made
# once; `pip install` re-runs only when requirements.txt changed. Exits non-zero if any pass fails.

set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
HERALD="${HERALD_SERVER_BIN:-$TARGET_DIR/debug/herald}"
case "$HERALD" in /*) ;; *) HERALD="$ROOT/$HERALD" ;; esac
EXAMPLES="${API_SCHEMA_EXAMPLES:-60}"
# Derandomized by default, so every run (and CI) tests the same cases.
GENERATION=(--generation-deterministic)
[ -n "${API_SCHEMA_SEED:-}" ] && GENERATION=(--seed "$API_SCHEMA_SEED")
read -r -a EXTRA_ARGS <<<"${API_SCHEMA_ARGS:-}"
VENV="$HERE/.venv"
CONFIG="$HERE/herald.yml"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

log() { printf '[api-schema] %s\n' "$*" >&2; }

[ -x "$HERALD" ] || { log "herald binary not found or not executable: $HERALD (run cargo build -p herald)"; exit 1; }

# ---- venv ----------------------------------------------------------------------------------------------
python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { log "$python not found"; exit 1; }
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  rm -rf "$VENV"
  "$python" -m venv "$VENV" || exit 1
fi
stamp="$VENV/.herald-requirements.sha256"
want="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [ "$want" != "$(cat "$stamp" 2>/dev/null || true)" ]; then
  log "pip install -r tests/api-schema/requirements.txt"
  "$VENV/bin/python" -m pip install --quiet -r "$HERE/requirements.txt" || exit 1
  echo "$want" > "$stamp"
fi

# ---- herald --------------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/herald-api-schema.XXXXXX")"
HERALD_PID=""
stop_herald() {
  [ -n "$HERALD_PID" ] || return 0
  kill -TERM "$HERALD_PID" 2>/dev/null
  # herald drains for server.drain_delay_ms (2 s) before it exits
  for _ in $(seq 1 100); do kill -0 "$HERALD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$HERALD_PID" 2>/dev/null
  wait "$HERALD_PID" 2>/dev/null
  HERALD_PID=""
}
cleanup() { stop_herald; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free port: bind port 0, read it, release it.
PORT="$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
BASE="http://127.0.0.1:$PORT"
# A clean environment: herald reads PORT, REDIS_URL, API_KEY, HERALD_* and more from it.
env -i PATH="$PATH" HOME="${HOME:-/tmp}" RUST_BACKTRACE=1 \
  "$HERALD" --config "$CONFIG" --port "$PORT" --data-dir "$WORK/data" >"$WORK/herald.log" 2>&1 &
HERALD_PID=$!
for _ in $(seq 1 100); do
  "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
    "$BASE/healthcheck" 2>/dev/null && break
  kill -0 "$HERALD_PID" 2>/dev/null || break
  sleep 0.1
done
if ! "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$BASE/healthcheck" 2>/dev/null; then
  log "herald did not answer $BASE/healthcheck; its log:"; cat "$WORK/herald.log" >&2; exit 1
fi
log "herald $("$HERALD" --version 2>/dev/null | cut -d' ' -f2) on $BASE (data in $WORK/data)"

"$VENV/bin/python" "$HERE/sockets.py" --url "$BASE" --site news --count 12 --out "$WORK" || exit 1
"$VENV/bin/python" "$HERE/sockets.py" --url "$BASE" --site shop --count 12 --out "$WORK" \
  --herald "$HERALD" --config "$CONFIG" || exit 1

# ---- schemathesis --------------------------------------------------------------------------------------
# run_pass SITE KEY LABEL: one schemathesis run with the site's name and KEY in every request (path, /send's
# query, the Authorization header). Socket ids come from sockets.py's dictionaries: the `keep` half for join/leave,
# the `drop` half for DELETE; user ids and room names from a few that exist.
run_pass() {
  local site="$1" key="$2" toml="$WORK/schemathesis-$1-$3.toml"
  cat >"$toml" <<EOF
[parameters]
"path.site" = "$site"
"query.site" = "$site"
"query.apiKey" = "$key"
"path.user" = { dictionary = "users", probability = 0.5 }
"body.rooms[*]" = { dictionary = "rooms", probability = 0.5 }
"body.messages[*].rooms[*]" = { dictionary = "rooms", probability = 0.5 }
"body.join[*]" = { dictionary = "rooms", probability = 0.3 }
"body.leave[*]" = { dictionary = "rooms", probability = 0.3 }

[headers]
Authorization = "Bearer $key"

# Nothing kept between runs (no .schemathesis/ directory, no example database): every run is the same.
[cache]
enabled = false

[generation]
database = "none"

[dictionaries.users]
values = ["100", "101", "user_102", "nobody"]

[dictionaries.rooms]
values = ["user_100", "user_101", "team_a", "team_1", "lobby"]

[dictionaries.keep]
from-file = "$site-keep.dict"

[dictionaries.drop]
from-file = "$site-drop.dict"

[[operations]]
include-path = "/api/v1/sites/{site}/sockets/{id}/rooms"
parameters = { "path.id" = { dictionary = "keep", probability = 0.7 } }

[[operations]]
include-path = "/api/v1/sites/{site}/sockets/{id}"
parameters = { "path.id" = { dictionary = "drop", probability = 0.5 } }
EOF
  log "pass $3: site $site"
  (cd "$WORK" && "$VENV/bin/schemathesis" --config-file "$toml" run "$BASE/api/v1/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection,unsupported_method \
    --max-examples "$EXAMPLES" "${GENERATION[@]}" --workers 1 \
    --request-timeout 10 --no-color --warnings off "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}")
}

# rc: schemathesis's exit status, the last failing pass's if any fails.
rc=0
run_pass shop schema-test-shop-key keyed || rc=$?
run_pass news schema-test-news-key keyed || rc=$?
run_pass shop not-the-shop-key wrong-key || rc=$?

if ! kill -0 "$HERALD_PID" 2>/dev/null; then
  log "herald exited during the run"; rc=1
fi
if grep -E 'panicked|ERROR' "$WORK/herald.log" >&2; then
  log "herald logged errors or panics (above)"; rc=1
fi
stop_herald
if [ "$rc" = 0 ]; then
  log "OK"
else
  log "FAILED; the end of herald's log:"; tail -n 40 "$WORK/herald.log" >&2
fi
exit "$rc"
