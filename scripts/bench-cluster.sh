#!/usr/bin/env bash
# BENCHMARKS.md's cluster section in one sitting: two nodes of each server on one Redis, the same workload.
# herald (bench/herald-cluster.yml, REDIS_URL), Node socket.io with @socket.io/redis-adapter and socketioxide with
# socketioxide-redis (bench/reference, REDIS_URL), alternating server by server within each round.
#
#   bash scripts/bench-cluster.sh                      # everything, 2 rounds (~10 min on 2 cores)
#   bash scripts/bench-cluster.sh --rounds 1 --servers "herald node"
#   bash scripts/bench-cluster.sh --only poll          # scenarios whose name contains the word
#   bash scripts/bench-cluster.sh --smoke              # tiny sizes, 1 round, fails on a loss
#   bash scripts/bench-cluster.sh --redis-url redis://127.0.0.1:6379/15   # an existing Redis (db flushed)
#
# Scenarios (herald-bench arguments in the list below):
#   cluster-*       1000 subscribers split evenly over the two nodes (client i on node i % 2), one room,
#                   publishes through POST /send on node 1 (or on each node in turn: `alternate`); server CPU is
#                   both nodes' utime+stime per delivered message; Redis's CPU is shown apart.
#   cluster-poll-*  polling clients whose session is opened on node 1; then every request goes to node 1
#                   (direct) or to node 2 (forwarded: herald hands it to node 1; the references need sticky
#                   sessions and answer 400 "Session ID unknown", shown as refused clients).
#
# Redis: by default a private redis-server on port $BENCH_REDIS_PORT (6390), no persistence, pinned with the
# servers, db 15, flushed before every start of a pair of nodes, stopped at the end. Both server nodes run on
# CPU 0 and the load generator on CPU 1 (as scripts/bench.sh), when the machine has two CPUs or more.
#
# Results: $out/results.jsonl (one JSON line per run), $out/runs.txt (herald-bench's line per run) and
# $out/report.md (the tables), out being target/bench-cluster under $CARGO_TARGET_DIR when set; each node's log
# is $out/<server>-<n>.log.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
smoke=0 rounds=2 servers="herald node socketioxide" only="" out=$target_dir/bench-cluster redis_url=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) smoke=1; rounds=1; shift ;;
    --rounds) rounds=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --redis-url) redis_url=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
done

profile_dir=$target_dir/release
cargo build -q --release -p herald -p herald-bench
if [[ $servers != herald ]]; then bash scripts/bench-setup.sh >&2; fi

mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
: > "$out/runs.txt"
if [[ $(nproc) -ge 2 ]]; then server_cpu=(taskset -c 0) gen_cpu=(taskset -c 1); else server_cpu=() gen_cpu=(); fi
ports=("${BENCH_PORT:-3791}" "$(( ${BENCH_PORT:-3791} + 1 ))")
export BENCH_API_KEY=bench-api-key-0123456789 BENCH_JWT_SECRET=bench-jwt-secret-0123456789abcdef

# The Redis the nodes share.
redis_pid="" own_redis=""
if [[ -z $redis_url ]]; then
  redis_port=${BENCH_REDIS_PORT:-6390}
  if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
    echo "a Redis already answers on port $redis_port; pass --redis-url to use it or set BENCH_REDIS_PORT" >&2
    exit 1
  fi
  "${server_cpu[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --loglevel warning >"$out/redis.log" 2>&1 &
  own_redis=$!
  for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis_url=redis://127.0.0.1:$redis_port/15
fi
redis_host_port=${redis_url#redis://}; redis_host_port=${redis_host_port%%/*}; redis_host_port=${redis_host_port##*@}
redis_db=${redis_url##*/}; [[ $redis_db =~ ^[0-9]+$ ]] || redis_db=0
redis_cli=(redis-cli -h "${redis_host_port%%:*}" -p "${redis_host_port##*:}" -n "$redis_db")
redis_pid=$("${redis_cli[@]}" info server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
case "${redis_host_port%%:*}" in 127.*|localhost) ;; *) redis_pid="" ;; esac
redis_pid_args=(); if [[ -n $redis_pid && -d /proc/$redis_pid ]]; then redis_pid_args=(--redis-pid "$redis_pid"); fi

node_pids=()
start_nodes() {
  "${redis_cli[@]}" flushdb >/dev/null
  node_pids=()
  for n in 0 1; do
    local port=${ports[$n]} log=$out/$1-$((n + 1)).log
    case "$1" in
      herald)
        rm -rf "$out/data-$n"
        REDIS_URL=$redis_url HERALD_NODE_URL=http://127.0.0.1:$port HERALD_DATA_DIR=$out/data-$n \
          "${server_cpu[@]}" "$profile_dir/herald" --config bench/herald-cluster.yml --port "$port" >"$log" 2>&1 & ;;
      node) REDIS_URL=$redis_url PORT=$port "${server_cpu[@]}" node bench/reference/node/server.mjs >"$log" 2>&1 & ;;
      socketioxide) REDIS_URL=$redis_url PORT=$port "${server_cpu[@]}" \
          bench/reference/socketioxide/target/release/herald-ref-socketioxide >"$log" 2>&1 & ;;
      *) echo "unknown server $1" >&2; exit 64 ;;
    esac
    node_pids+=($!)
  done
  for n in 0 1; do
    local ok=0
    for _ in $(seq 1 100); do
      if curl -sf "http://127.0.0.1:${ports[$n]}/healthcheck" >/dev/null; then ok=1; break; fi
      sleep 0.1
    done
    if [[ $ok == 0 ]]; then echo "$1 node $((n + 1)) did not start:" >&2; cat "$out/$1-$((n + 1)).log" >&2; exit 1; fi
  done
  # Both nodes are up; give each a moment to see the other on the bus.
  sleep 1
}

stop_nodes() {
  for pid in "${node_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  node_pids=()
}
cleanup() {
  stop_nodes
  if [[ -n $own_redis ]]; then kill "$own_redis" 2>/dev/null || true; wait "$own_redis" 2>/dev/null || true; fi
}
trap cleanup EXIT

failed=0
nodes_arg=127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}
# name | herald-bench arguments (after the scenario, --nodes and --pids are added)
if [[ $smoke == 1 ]]; then
  scenarios=(
    "cluster-paced|cluster --subs 100 --messages 100 --rate 100"
    "cluster-unpaced|cluster --subs 100 --messages 200 --publishers 4"
    "cluster-alternate|cluster --subs 100 --messages 100 --rate 100 --via alternate"
    "cluster-poll-direct|cluster-poll --clients 10 --rounds 20"
    "cluster-poll-forwarded|cluster-poll --clients 10 --rounds 20 --forward"
  )
else
  scenarios=(
    "cluster-1k-100|cluster --subs 1000 --messages 1000 --rate 100"
    "cluster-1k-unpaced|cluster --subs 1000 --messages 1000 --publishers 16"
    "cluster-10k-10|cluster --subs 10000 --messages 100 --rate 10"
    "cluster-poll-direct|cluster-poll --clients 50 --rounds 200"
    "cluster-poll-forwarded|cluster-poll --clients 50 --rounds 200 --forward"
  )
fi

for entry in "${scenarios[@]}"; do
  name=${entry%%|*} args=${entry#*|}
  if [[ -n $only && $name != *"$only"* ]]; then continue; fi
  scenario=${args%% *} rest=${args#* }
  extra=(); if [[ $scenario == cluster ]]; then extra=("${redis_pid_args[@]}"); fi
  for round in $(seq 1 "$rounds"); do
    for server in $servers; do
      echo "== $name, round $round, $server" >&2
      start_nodes "$server"
      # Smoke runs fail on any loss; the references refuse forwarded polls by design, and Node's adapter may
      # reorder a publisher's messages sent through different nodes, so those two are not checked for them.
      strict=()
      if [[ $smoke == 1 && ( $server == herald || ( $name != *forwarded* && $name != *alternate* ) ) ]]; then
        strict=(--strict)
      fi
      # shellcheck disable=SC2086 # $rest is a word list on purpose
      if ! "${gen_cpu[@]}" "$profile_dir/herald-bench" --server "$server" --json "$results" "${strict[@]}" \
        "$scenario" --nodes "$nodes_arg" --pids "${node_pids[0]},${node_pids[1]}" "${extra[@]}" $rest \
        | tee -a "$out/runs.txt"; then
        echo "herald-bench failed ($name, $server)" >&2
        failed=1
      fi
      stop_nodes
      sleep 1
    done
  done
done

"$profile_dir/herald-bench" report "$results" | tee "$out/report.md"
{
  # Why the references refused the forwarded polls (the first error of each run).
  jq -r 'select(.scenario == "cluster-poll" and .metrics.first_error != null)
    | "refused (\(.server), \(.variant)): \(.metrics.first_error)"' "$results" | sed -E 's/: client [0-9]+: /: /' \
    | sort | uniq -c
  echo
  echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)'), $(date -u +%FT%TZ)"
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "redis: $(redis-server --version | awk '{print $3}') at $redis_url$([[ -n $own_redis ]] && echo ' (private, started by the script)')"
  if [[ $servers != herald ]]; then bash scripts/bench-setup.sh | grep -E '^\[bench-setup\] (node|socketioxide) [0-9]'; fi
} | tee -a "$out/report.md"
if [[ $smoke == 1 ]]; then exit "$failed"; fi
