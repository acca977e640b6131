#!/usr/bin/env bash
# Builds herald and runs every test: Rust unit/integration tests, the dependency policy (cargo deny),
# then the end-to-end tests of `herald-conformance --suite e2e` with the official JS clients
# (socket.io-client 4.x and 2.x, tests/js) and the python-socketio client (tests/python).
#
# Usage: bash scripts/test.sh [--no-cargo] [--only STAGE[,STAGE...]]
#   stages: services, cargo-build, cargo-test, deny, py-install, js-install, js-test, py-test, api-schema, bench-smoke
#   (deny: `cargo deny check licenses bans sources` against deny.toml, root workspace only; installs
#    cargo-deny with `cargo install --locked cargo-deny` when missing; no advisories: no database here)
#   (bench-smoke: scripts/bench.sh --smoke, herald-bench's scenarios at tiny sizes, failing on any lost message)
#   (services: scripts/services.sh makes sure Redis, RabbitMQ, Mosquitto, NATS and PostgreSQL answer, starting any that is not)
#   (js-install: npm ci in tests/js, and Debian's chromium for browser.test.mjs when missing: apt-get, as root)
#   --no-cargo         skip cargo build/test and deny (re-run only the e2e tests against the existing binary)
#   env HERALD_BIN     binary the e2e tests spawn (default ${CARGO_TARGET_DIR:-target}/debug/herald-conformance)
#   env HERALD_GATEWAY_BIN  the `herald` gateway binary the JS and Python gateway tests spawn (default: beside HERALD_BIN)
#   env HERALD_E2E_TIMEOUT  seconds allowed for each e2e runner (default 900)
#
# Idempotent and fast on re-runs: `npm ci` runs only when tests/js/node_modules is missing or
# package-lock.json changed; the .venv is created once and `pip install` re-runs only when
# tests/python/requirements.txt changed. Exits non-zero if any stage fails.

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUN_CARGO=1
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-cargo) RUN_CARGO=0 ;;
    --only) ONLY="${2:-}"; shift ;;
    --only=*) ONLY="${1#--only=}" ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

E2E_TIMEOUT="${HERALD_E2E_TIMEOUT:-900}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export HERALD_BIN="${HERALD_BIN:-$TARGET_DIR/debug/herald-conformance}"
case "$HERALD_BIN" in /*) ;; *) HERALD_BIN="$ROOT/$HERALD_BIN" ;; esac
# tests/js/gateway-helpers.mjs (gatewayBin) and tests/python/test_two_way.py spawn the `herald` binary
# itself, which `cargo build --workspace` builds beside herald-conformance.
export HERALD_GATEWAY_BIN="${HERALD_GATEWAY_BIN:-$(dirname "$HERALD_BIN")/herald}"
case "$HERALD_GATEWAY_BIN" in /*) ;; *) HERALD_GATEWAY_BIN="$ROOT/$HERALD_GATEWAY_BIN" ;; esac
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

PASSED=()
FAILED=()
SKIPPED=()
START_ALL=$(date +%s)

banner() { printf '\n==== [test.sh] %s ====\n' "$*"; }

wanted() {
  local stage="$1"
  if [ -n "$ONLY" ]; then
    case ",$ONLY," in *",$stage,"*) ;; *) return 1 ;; esac
  fi
  if [ "$RUN_CARGO" = 0 ]; then
    case "$stage" in cargo-*|deny) return 1 ;; esac
  fi
  return 0
}

# run_stage NAME COMMAND...: runs the command, records the result, never aborts the script.
run_stage() {
  local name="$1"; shift
  if ! wanted "$name"; then SKIPPED+=("$name(not selected)"); return 0; fi
  banner "stage $name"
  local t0=$(date +%s) rc=0
  "$@" || rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if [ "$rc" = 0 ]; then
    PASSED+=("$name")
    echo "[test.sh] stage $name OK (${dt}s)"
  else
    FAILED+=("$name")
    echo "[test.sh] STAGE FAILED: $name (exit code $rc, ${dt}s)" >&2
  fi
  return "$rc"
}

skip_stage() { SKIPPED+=("$1($2)"); echo "[test.sh] stage $1 skipped: $2" >&2; }

stage_failed() { local s; for s in "${FAILED[@]+"${FAILED[@]}"}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

sha_of() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

# ---- services ------------------------------------------------------------------------------------
# The Redis mailbox store's tests (Rust and JS) need Redis on 127.0.0.1:6379.
run_stage services bash "$ROOT/scripts/services.sh"

# ---- Rust ----------------------------------------------------------------------------------------
cargo_test() { cargo test --workspace --no-fail-fast; }

# --locked fails when Cargo.lock is missing or stale; fall back to a normal build in that case so a
# fresh checkout without a lock file still works (the fallback prints why).
cargo_build_stage() {
  if [ -f Cargo.lock ]; then
    cargo build --workspace --locked || { echo "[test.sh] retrying without --locked" >&2; cargo build --workspace; }
  else
    cargo build --workspace
  fi
}

run_stage cargo-build cargo_build_stage
if stage_failed cargo-build; then
  skip_stage cargo-test "cargo build failed"
else
  run_stage cargo-test cargo_test
fi

# ---- dependency policy ---------------------------------------------------------------------------
# Licences, bans and sources of the root workspace's dependency tree (deny.toml). The separate fuzz
# workspace (crates/herald-protocol/fuzz) and bench/reference/socketioxide are not checked.
deny_stage() {
  if ! cargo deny --version >/dev/null 2>&1; then
    echo "[test.sh] cargo-deny not found; installing it with cargo install --locked cargo-deny"
    cargo install --locked cargo-deny || return 1
  fi
  cargo deny --version
  cargo deny --manifest-path "$ROOT/Cargo.toml" check licenses bans sources
}

run_stage deny deny_stage

check_bin() {
  if [ ! -x "$HERALD_BIN" ]; then
    echo "[test.sh] herald-conformance binary not found or not executable: $HERALD_BIN" >&2
    echo "[test.sh] (is crates/herald-conformance a [[bin]] of the workspace? set HERALD_BIN to override)" >&2
    return 1
  fi
  if [ ! -x "$HERALD_GATEWAY_BIN" ]; then
    echo "[test.sh] herald binary not found or not executable: $HERALD_GATEWAY_BIN" >&2
    echo "[test.sh] (cargo build -p herald builds it; set HERALD_GATEWAY_BIN to override)" >&2
    return 1
  fi
}

# ---- Python venv ---------------------------------------------------------------------------------
# Installed before the JS e2e tests: tests/js/examples.test.mjs runs the examples with .venv's python, which
# has examples/requirements.txt's pins (pika, paho-mqtt) through tests/python/requirements.txt.
VENV="$ROOT/.venv"
PY_REQ="$ROOT/tests/python/requirements.txt"
py_install() {
  local python="${PYTHON:-python3}"
  command -v "$python" >/dev/null || { echo "$python not found" >&2; return 1; }
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    rm -rf "$VENV"
    "$python" -m venv "$VENV" || return 1
  fi
  local want have stamp="$VENV/.herald-requirements.sha256"
  want="$(sha_of "$PY_REQ")"
  have="$(cat "$stamp" 2>/dev/null || true)"
  if [ "$want" = "$have" ]; then
    echo "[test.sh] .venv up to date, skipping pip install"
    return 0
  fi
  "$VENV/bin/python" -m pip install --quiet -r "$PY_REQ" && echo "$want" > "$stamp"
}
run_stage py-install py_install

# ---- JavaScript e2e ------------------------------------------------------------------------------
JS_DIR="$ROOT/tests/js"
# tests/js/browser.test.mjs drives Debian's Chromium (/usr/bin/chromium) with playwright-core; install it when it
# is missing and this user can (root with apt-get), else say how.
ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[test.sh] installing Chromium for tests/js/browser.test.mjs: apt-get install -y chromium"
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null \
      || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null; } \
      || { echo "[test.sh] could not install chromium" >&2; return 1; }
    return 0
  fi
  echo "[test.sh] /usr/bin/chromium is missing: install it (apt-get install -y chromium); browser.test.mjs fails without it" >&2
  return 1
}
js_install() {
  command -v node >/dev/null && command -v npm >/dev/null || { echo "node/npm not found" >&2; return 1; }
  ensure_chromium || return 1
  local want have stamp="$JS_DIR/node_modules/.herald-lock.sha256"
  want="$(sha_of "$JS_DIR/package.json" "$JS_DIR/package-lock.json")"
  have="$(cat "$stamp" 2>/dev/null || true)"
  if [ -d "$JS_DIR/node_modules" ] && [ "$want" = "$have" ]; then
    echo "[test.sh] tests/js/node_modules up to date, skipping npm ci"
    return 0
  fi
  (cd "$JS_DIR" && npm ci --no-audit --no-fund) && echo "$want" > "$stamp"
}
js_test() {
  check_bin || return 1
  local files=()
  local f
  for f in "$JS_DIR"/*.test.mjs; do [ -e "$f" ] && files+=("$(basename "$f")"); done
  [ "${#files[@]}" -gt 0 ] || { echo "no tests/js/*.test.mjs files" >&2; return 1; }
  # one file at a time: every file spawns its own server, and timing-based assertions (acks that
  # must time out, "nothing else arrives within 300 ms") are steadier on a 2-core machine. A file may
  # take up to 300 s (mailbox-flaps runs its proxy for 60 s; the 100k replay fills a mailbox first);
  # each test sets its own, shorter timeout.
  # The examples' run.py (examples.test.mjs) with the venv's python, not PYTHON (which py_install reads as
  # the interpreter that makes the venv).
  local python="${PYTHON:-python3}"
  [ -x "$VENV/bin/python" ] && python="$VENV/bin/python"
  (cd "$JS_DIR" && PYTHON="$python" timeout --kill-after=10 "$E2E_TIMEOUT" \
    node --test --test-concurrency=1 --test-timeout=300000 "${files[@]}")
}

if wanted js-install || wanted js-test; then
  run_stage js-install js_install
  if stage_failed js-install; then
    skip_stage js-test "npm ci failed"
  elif stage_failed cargo-build; then
    skip_stage js-test "cargo build failed"
  else
    run_stage js-test js_test
  fi
fi

# ---- Python e2e ----------------------------------------------------------------------------------
py_test() {
  check_bin || return 1
  local rc=0
  (cd "$ROOT/tests/python" && timeout --kill-after=10 "$E2E_TIMEOUT" "$VENV/bin/python" -m pytest -p no:cacheprovider) || rc=$?
  if [ "$rc" = 5 ]; then echo "[test.sh] pytest collected no tests" >&2; fi
  return "$rc"
}

if wanted py-test; then
  if stage_failed py-install; then
    skip_stage py-test "pip install failed"
  elif stage_failed cargo-build; then
    skip_stage py-test "cargo build failed"
  else
    run_stage py-test py_test
  fi
fi

# ---- API schema fuzz ------------------------------------------------------------------------------
# schemathesis (its own venv, tests/api-schema/.venv) against the OpenAPI document of a running debug herald.
if wanted api-schema; then
  if stage_failed cargo-build; then
    skip_stage api-schema "cargo build failed"
  else
    run_stage api-schema env HERALD_SERVER_BIN="$TARGET_DIR/debug/herald" \
      timeout --kill-after=10 "$E2E_TIMEOUT" bash "$ROOT/tests/api-schema/run.sh"
  fi
fi

# ---- benchmark harness smoke run ------------------------------------------------------------------
if wanted bench-smoke; then
  if stage_failed cargo-build; then
    skip_stage bench-smoke "cargo build failed"
  else
    run_stage bench-smoke bash "$ROOT/scripts/bench.sh" --smoke
  fi
fi

# ---- summary -------------------------------------------------------------------------------------
TOTAL=$(( $(date +%s) - START_ALL ))
join() { local IFS=,; echo "$*"; }
echo
echo "[test.sh] stages ok: $(join "${PASSED[@]+"${PASSED[@]}"}")"
[ "${#SKIPPED[@]}" -gt 0 ] && echo "[test.sh] stages skipped: $(join "${SKIPPED[@]}")"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "[test.sh] stages FAILED: $(join "${FAILED[@]}")"
  echo "[test.sh] SUMMARY: FAILED (${#FAILED[@]} of $(( ${#PASSED[@]} + ${#FAILED[@]} )) stages failed: $(join "${FAILED[@]}")) in ${TOTAL}s"
  exit 1
fi
echo "[test.sh] SUMMARY: OK (all ${#PASSED[@]} stages succeeded) in ${TOTAL}s"
