#!/usr/bin/env bash
# Instruction counts (issue 15): what one delivery and one connect cost each server, counted in instructions
# executed instead of CPU seconds. Unlike the wall-clock and CPU-time figures of scripts/bench.sh, the counts do
# not move with what the other core is doing, so they compare servers on a busy machine and across sittings.
#
#   bash scripts/instructions.sh                        # herald, node, socketioxide; one run each (~3 min)
#   bash scripts/instructions.sh --servers herald --runs 2   # does herald's count repeat? (~1.5 min)
#   bash scripts/instructions.sh --subs 100 --messages 200 --rate 20 --conns 200
#
# The counter: `perf stat -e instructions` when the machine's PMU offers it (`perf stat -e instructions true`
# prints a count), else valgrind's callgrind (the server runs under `valgrind --tool=callgrind`, ~50× slower, so
# the sizes are small; Node with --smc-check=all-non-file for V8's generated code). --counter forces one.
#
# Each run starts the server (bench/herald.yml for herald, as scripts/bench.sh does), then:
#   1. warm-up, not counted: the same fan-out and the same connects (Node's JIT compiles its hot paths here);
#   2. idle: the counter runs for --idle-secs with no load: the instructions per second of an idle server
#      (timers, heartbeats), subtracted from each phase in proportion to its length;
#   3. per delivery: `herald-bench fanout --subs S --messages M --rate R`, POST /send to one room; herald-bench
#      starts the counter once the subscribers are connected and stops it when the last delivery arrived
#      (--measure-start / --measure-end); instructions / deliveries actually received;
#   4. per connect: `herald-bench storm --conns C`: JWT-authenticated socket.io connects over WebSocket, each
#      joining one room; counted from before the first connect to after the last; instructions / C.
# With callgrind, starting is `callgrind_control -z` (zero) and stopping `callgrind_control -d` (dump), whose
# `totals:` line is the count (Ir, over all threads).
#
# Results: one JSON line per (server, phase) in $CARGO_TARGET_DIR/bench/instructions.jsonl (target/bench without
# it), and the table `herald-bench report` prints from them in instructions.md beside it: the median
# instructions per delivery and per connect, the range over --runs, and herald's edge (the other server's count
# divided by herald's). Release builds; BENCH_API_KEY and BENCH_JWT_SECRET as in scripts/bench.sh.
# Not part of scripts/test.sh or CI: valgrind runs are slow.
# --keep leaves the run's files (the server's callgrind dumps: <server>.<run>.callgrind.<pid>.<n>, one per counter
# stop, in order idle, fanout, storm) in the directory it names at the end, for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."

# The counter's start and stop, run by herald-bench (--measure-start / --measure-end) through this script:
#   instructions.sh --counter-start KIND PID STATE DUMPS   |   instructions.sh --counter-stop KIND PID STATE DUMPS
# STATE is a file prefix; the stop writes "<instructions> <seconds>" to STATE.count. DUMPS is callgrind's
# --callgrind-out-file of the server (its dumps are DUMPS.1, DUMPS.2, ...).
if [[ ${1:-} == --counter-start || ${1:-} == --counter-stop ]]; then
  action=$1 kind=$2 pid=$3 state=$4 dumps=${5:-}
  case "$action:$kind" in
    --counter-start:callgrind)
      callgrind_control -z "$pid" >"$state.vgdb" 2>&1 || { cat "$state.vgdb" >&2; exit 1; }
      date +%s.%N >"$state.started" ;;
    --counter-stop:callgrind)
      stopped=$(date +%s.%N)
      callgrind_control -d "$pid" >"$state.vgdb" 2>&1 || { cat "$state.vgdb" >&2; exit 1; }
      # The newest dump of this process: <out-file>.<n>.
      dump=$(for f in "$dumps".*; do echo "${f##*.} $f"; done | sort -n | tail -n 1 | cut -d' ' -f2-)
      total=$(awk '/^(totals|summary):/ { print $2; exit }' "$dump")
      echo "$total $(echo "$stopped - $(cat "$state.started")" | bc -l)" >"$state.count" ;;
    --counter-start:perf)
      date +%s.%N >"$state.started"
      perf stat -e instructions -x, -o "$state.perf" -p "$pid" &
      echo $! >"$state.perf-pid"
      sleep 0.2 ;;
    --counter-stop:perf)
      stopped=$(date +%s.%N)
      perf_pid=$(cat "$state.perf-pid")
      kill -INT "$perf_pid"
      while kill -0 "$perf_pid" 2>/dev/null; do sleep 0.05; done
      total=$(awk -F, '$3 ~ /^instructions/ { print $1; exit }' "$state.perf")
      echo "$total $(echo "$stopped - $(cat "$state.started")" | bc -l)" >"$state.count" ;;
    *) echo "unknown counter $kind" >&2; exit 64 ;;
  esac
  exit 0
fi

target_dir=${CARGO_TARGET_DIR:-target}
servers="herald node socketioxide" runs=1 out=$target_dir/bench counter=""
subs=100 messages=200 rate=20 conns=200 idle_secs=10 keep=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --servers) servers=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --subs) subs=$2; shift 2 ;;
    --messages) messages=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --conns) conns=$2; shift 2 ;;
    --idle-secs) idle_secs=$2; shift 2 ;;
    --counter) counter=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
done
if [[ -z $counter ]]; then
  if perf stat -x, -e instructions true 2>&1 >/dev/null | grep -q '^[0-9]'; then counter=perf; else counter=callgrind; fi
fi
case "$counter" in
  callgrind) command -v callgrind_control >/dev/null || { echo "valgrind is not installed" >&2; exit 1; } ;;
  perf) ;;
  *) echo "--counter is perf or callgrind" >&2; exit 64 ;;
esac
echo "[instructions] counter: $counter" >&2

cargo build -q --release -p herald -p herald-bench
profile_dir=$target_dir/release
bench_bin=$profile_dir/herald-bench
if [[ $servers != herald ]]; then bash scripts/bench-setup.sh >&2; fi

mkdir -p "$out"
results=$out/instructions.jsonl
: >"$results"
work=$(mktemp -d "$out/instructions.XXXXXX")
if [[ $(nproc) -ge 2 ]]; then server_cpu=(taskset -c 0) gen_cpu=(taskset -c 1); else server_cpu=() gen_cpu=(); fi
port=${BENCH_PORT:-3790}
export BENCH_API_KEY=${BENCH_API_KEY:-bench-api-key-0123456789}
export BENCH_JWT_SECRET=${BENCH_JWT_SECRET:-bench-jwt-secret-0123456789abcdef}

server_pid="" dumps=""
# start_server SERVER STATE: the server on $port, under valgrind with callgrind; waits for /healthcheck.
start_server() {
  local server=$1 state=$2 command
  case "$server" in
    herald) command=("$profile_dir/herald" --config bench/herald.yml --port "$port") ;;
    node) command=(node bench/reference/node/server.mjs) ;;
    socketioxide) command=(bench/reference/socketioxide/target/release/herald-ref-socketioxide) ;;
    *) echo "unknown server $server" >&2; exit 64 ;;
  esac
  local wrap=()
  if [[ $counter == callgrind ]]; then
    # Collection stays on from the start (a dump needs it); the warm-up's counts are zeroed away.
    # --smc-check: V8 writes and rewrites machine code in anonymous mappings.
    wrap=(valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file="$state.callgrind.%p")
  fi
  PORT=$port "${server_cpu[@]}" "${wrap[@]}" "${command[@]}" >"$state.log" 2>&1 &
  server_pid=$!
  dumps=$state.callgrind.$server_pid
  for _ in $(seq 1 1200); do
    if curl -sf "http://127.0.0.1:$port/healthcheck" >/dev/null; then return; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "$server did not start:" >&2; cat "$state.log" >&2; exit 1
}

stop_server() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop_server EXIT

# bench STATE [--json FILE] SCENARIO ARGS...: herald-bench against the running server, the counter around the
# measured phase when STATE is not empty.
bench() {
  local state=$1 hooks=()
  shift
  if [[ -n $state ]]; then
    hooks=(--measure-start "bash scripts/instructions.sh --counter-start $counter $server_pid $state $dumps"
      --measure-end "bash scripts/instructions.sh --counter-stop $counter $server_pid $state $dumps")
  fi
  "${gen_cpu[@]}" "$bench_bin" --addr "127.0.0.1:$port" --pid "$server_pid" --server "$server" "${hooks[@]}" "$@" >&2
}

# record STATE PHASE VARIANT UNITS: one JSON line from STATE.count, less the idle rate over the phase's length.
record() {
  local state=$1 phase=$2 variant=$3 units=$4 instructions secs
  read -r instructions secs <"$state.count"
  jq -cn --arg server "$server" --arg variant "$variant" --arg counter "$counter" --arg phase "$phase" \
    --argjson instructions "$instructions" --argjson secs "$secs" --argjson units "$units" \
    --argjson idle_per_sec "$idle_per_sec" '
      ($idle_per_sec * $secs) as $idle
      | {scenario: "instructions", variant: $variant, server: $server,
         metrics: {phase: $phase, counter: $counter, units: $units, secs: $secs, instructions: $instructions,
                   idle_instructions: $idle, idle_pct: (100 * $idle / $instructions),
                   instructions_per_unit: (($instructions - $idle) / $units)}}' >>"$results"
  tail -n 1 "$results" | jq -r '"[instructions] \(.server) \(.metrics.phase): \(.metrics.instructions_per_unit | floor) instructions each (\(.metrics.units) units, \(.metrics.instructions) counted, idle \(.metrics.idle_pct * 100 | floor / 100)%)"' >&2
}

fanout_args=(fanout --subs "$subs" --messages "$messages" --rate "$rate" --drain-secs 60)
delivery_variant="per delivery: $subs subs, one room, $messages msgs at $rate/s"
connect_variant="per connect: $conns JWT connects, 10 at a time"
for run in $(seq 1 "$runs"); do
  for server in $servers; do
    echo "== $server, run $run" >&2
    state=$work/$server.$run
    start_server "$server" "$state"
    # 1. Warm-up.
    bench "" "${fanout_args[@]}"
    bench "" storm --conns "$conns" --concurrency 10
    sleep 1
    # 2. Idle. callgrind_control reaches a server blocked in epoll_wait through vgdb (ptrace).
    bash scripts/instructions.sh --counter-start "$counter" "$server_pid" "$state.idle" "$dumps"
    sleep "$idle_secs"
    bash scripts/instructions.sh --counter-stop "$counter" "$server_pid" "$state.idle" "$dumps"
    read -r idle_instructions idle_elapsed <"$state.idle.count"
    idle_per_sec=$(echo "$idle_instructions / $idle_elapsed" | bc -l)
    echo "[instructions] $server idle: $idle_instructions instructions in ${idle_elapsed}s" >&2
    # 3. Per delivery.
    bench "$state.fanout" --json "$state.fanout.jsonl" "${fanout_args[@]}"
    delivered=$(jq -s '.[-1].metrics.delivered' "$state.fanout.jsonl")
    record "$state.fanout" delivery "$delivery_variant" "$delivered"
    # 4. Per connect.
    bench "$state.storm" storm --conns "$conns" --concurrency 10
    record "$state.storm" connect "$connect_variant" "$conns"
    stop_server
    sleep 1
  done
done

"$bench_bin" report "$results" | tee "$out/instructions.md"
{
  echo
  echo "counter: $counter; commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)'), $(date -u +%FT%TZ)"
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
  if [[ $counter == callgrind ]]; then echo "$(valgrind --version)"; fi
  if [[ $servers != herald ]]; then bash scripts/bench-setup.sh | grep -E '^\[bench-setup\] (node|socketioxide) [0-9]'; fi
} | tee -a "$out/instructions.md"
if [[ -n $keep ]]; then echo "[instructions] kept $work" >&2; else rm -rf "$work"; fi
