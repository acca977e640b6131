#!/usr/bin/env bash
# Reproduces BENCHMARKS.md's comparison in one sitting: herald, Node socket.io and socketioxide run the same
# scenarios, alternating server by server within each round so a noisy machine affects all of them alike.
#
#   bash scripts/bench.sh                   # everything, 2 rounds (~35 min on 2 cores)
#   bash scripts/bench.sh --rounds 3 --servers "herald node"
#   bash scripts/bench.sh --only fanout     # scenarios whose name contains the word (mailbox: herald's mailbox bench)
#   bash scripts/bench.sh --only "1k-unpaced 10k-10"   # several words: scenarios whose name contains any of them
#   bash scripts/bench.sh --only fanout-1k --servers herald --transports "websocket sse"
#   bash scripts/bench.sh --only events --servers "herald node" --rounds 3   # client events routed to a webhook
#   bash scripts/bench.sh --only bridges --servers herald   # broker bridges into one room (herald only; needs the
#                                           # shared RabbitMQ, Mosquitto, NATS, Redis and Postgres: scripts/services.sh)
#   bash scripts/bench.sh --only "idle-1k storm-1k" --servers herald   # 1000 clients, JWT and webhook auth
#   bash scripts/bench.sh --only floor      # the raw write() floor alone (herald-bench floor, no server)
#   bash scripts/bench.sh --smoke           # CI: herald only, tiny sizes, debug build, fails on any loss
#
# The fan-out scenarios marked `plain` also run against herald with its plain clients, in the same round: the
# subscribers are herald's plain WebSocket (`--transport plain-ws`) and event-stream (`--transport sse`) clients,
# the sizes and publishes the same. --transports picks which of websocket (socket.io), plain-ws and sse run;
# the reference servers offer socket.io only.
#
# Results: target/bench/results.jsonl (one JSON line per run) and target/bench/report.md (the tables), under
# $CARGO_TARGET_DIR when it is set.
# The server is pinned to CPU 0 and the load generator to CPU 1 when the machine has two or more.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
smoke=0 rounds=2 servers="herald node socketioxide" only="" out=$target_dir/bench
transports="websocket plain-ws sse"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) smoke=1; servers=herald; rounds=1; shift ;;
    --rounds) rounds=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --transports) transports=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
done

if [[ $smoke == 1 ]]; then
  profile_dir=$target_dir/debug
  cargo build -q -p herald -p herald-bench
else
  profile_dir=$target_dir/release
  cargo build -q --release -p herald -p herald-bench
fi
if [[ $servers != herald ]]; then bash scripts/bench-setup.sh; fi

mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
if [[ $(nproc) -ge 2 ]]; then server_cpu=(taskset -c 0) gen_cpu=(taskset -c 1); else server_cpu=() gen_cpu=(); fi
port=${BENCH_PORT:-3790}
export BENCH_API_KEY=bench-api-key-0123456789 BENCH_JWT_SECRET=bench-jwt-secret-0123456789abcdef

server_pid=""
# start_server SERVER SCENARIO: the `events` scenarios need the `bid` route to herald-bench's backend on
# 127.0.0.1:3791 (bench/herald-events.yml; EVENTS_URL for Node). The `bridges` ones need herald's bridges, named
# after a new BENCH_RUN id (which herald-bench reads too) so that no run hears another's messages. The `-webhook`
# ones authenticate through the webhook herald-bench runs on 127.0.0.1:3791 (bench/herald-webhook.yml).
start_server() {
  local herald_config=bench/herald.yml events_url=""
  if [[ $2 == events* ]]; then herald_config=bench/herald-events.yml events_url=http://127.0.0.1:3791/events/bid; fi
  if [[ $2 == *-webhook ]]; then herald_config=bench/herald-webhook.yml; fi
  if [[ $2 == bridges* ]]; then
    export BENCH_RUN="$(date +%s)$RANDOM"
    herald_config=$out/herald-bridges.yml
    sed "s/@RUN@/$BENCH_RUN/g" bench/herald-bridges.yml >"$herald_config"
  fi
  case "$1" in
    herald) "${server_cpu[@]}" "$profile_dir/herald" --config "$herald_config" --port "$port" >"$out/server.log" 2>&1 & ;;
    node) EVENTS_URL=$events_url PORT=$port "${server_cpu[@]}" node bench/reference/node/server.mjs >"$out/server.log" 2>&1 & ;;
    socketioxide) PORT=$port "${server_cpu[@]}" bench/reference/socketioxide/target/release/herald-ref-socketioxide \
        >"$out/server.log" 2>&1 & ;;
    *) echo "unknown server $1" >&2; exit 64 ;;
  esac
  server_pid=$!
  for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$port/healthcheck" >/dev/null; then return; fi
    sleep 0.1
  done
  echo "$1 did not start:" >&2; cat "$out/server.log" >&2; exit 1
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT

# name | herald-bench arguments [| plain: also with herald's plain clients]
if [[ $smoke == 1 ]]; then
  scenarios=(
    "idle|idle --conns 200 --settle-secs 1"
    "storm|storm --conns 500 --concurrency 50"
    "idle-webhook|idle --conns 200 --settle-secs 1 --webhook 127.0.0.1:3791"
    "storm-webhook|storm --conns 500 --concurrency 50 --webhook 127.0.0.1:3791"
    "fanout-room|fanout --subs 100 --messages 200 --publishers 4|plain"
    "fanout-room-paced|fanout --subs 100 --messages 100 --rate 200|plain"
    "fanout-personal|fanout --subs 200 --personal --messages 2000 --rate 2000 --publishers 4"
    "events|events --clients 20 --secs 2 --warmup 0.5 --drain-secs 3"
    "bridges-amqp|bridges --kind amqp --subs 2 --messages 300 --warmup 20"
    "bridges-mqtt|bridges --kind mqtt --subs 2 --messages 300 --warmup 20"
    "bridges-nats|bridges --kind nats --subs 2 --messages 300 --warmup 20"
    "bridges-redis|bridges --kind redis --subs 2 --messages 300 --warmup 20"
    "bridges-postgres|bridges --kind postgres --subs 2 --messages 300 --warmup 20"
  )
  strict=(--strict)
else
  # The server's open-file limit on this machine is 20 000 (hard), so 18 000 is the largest idle run.
  scenarios=(
    "idle-10k|idle --conns 10000"
    "idle-18k|idle --conns 18000"
    "storm|storm --conns 15000 --concurrency 500"
    # Auth through the site's webhook (bench/herald-webhook.yml), which herald-bench runs and counts connections
    # to; the JWT rows of the same size to read them against.
    "idle-1k|idle --conns 1000"
    "idle-1k-webhook|idle --conns 1000 --webhook 127.0.0.1:3791"
    "storm-1k|storm --conns 1000 --concurrency 500"
    "storm-1k-webhook|storm --conns 1000 --concurrency 500 --webhook 127.0.0.1:3791"
    "fanout-1k-unpaced|fanout --subs 1000 --messages 2000 --publishers 16|plain"
    "fanout-1k-50|fanout --subs 1000 --messages 500 --rate 50|plain"
    "fanout-1k-100|fanout --subs 1000 --messages 1000 --rate 100|plain"
    "fanout-10k-unpaced|fanout --subs 10000 --messages 200 --publishers 16|plain"
    "fanout-10k-10|fanout --subs 10000 --messages 100 --rate 10|plain"
    "fanout-1k-polling|--transport polling fanout --subs 1000 --messages 500 --rate 50"
    "fanout-personal-10k|fanout --subs 10000 --personal --messages 100000 --rate 10000 --publishers 32"
    "events-closed-loop|events --clients 100 --secs 10"
    "events-paced|events --clients 100 --rate 2000 --secs 10"
    "bridges-amqp|bridges --kind amqp --subs 4 --messages 50000"
    # Mosquitto drops what it queues for one client beyond max_queued_messages (1000, PUBACKed all the same):
    # the window stays under it.
    "bridges-mqtt|bridges --kind mqtt --subs 4 --messages 50000 --window 500"
    "bridges-nats|bridges --kind nats --subs 4 --messages 500000"
    "bridges-redis|bridges --kind redis --subs 4 --messages 500000"
    "bridges-postgres|bridges --kind postgres --subs 4 --messages 50000"
  )
  strict=()
fi

# selected NAME: whether --only names the scenario (any of its words is part of the name).
selected() {
  [[ -z $only ]] && return 0
  local word
  for word in $only; do
    if [[ $1 == *"$word"* ]]; then return 0; fi
  done
  return 1
}

# The floor: what the machine itself charges to write a frame to 1000 loopback sockets (no server: a sender
# thread pinned to CPU 0, where the servers run, and a reader on CPU 1). The fan-out rows are read against it.
floor_args="floor --subs 1000 --messages 500 --rate 100"
if [[ $smoke == 1 ]]; then floor_args="floor --subs 20 --messages 30 --rate 0"; fi
floor_round() {
  echo "== floor-1k-100, round $1" >&2
  # shellcheck disable=SC2086 # a word list on purpose
  "$profile_dir/herald-bench" --server floor --json "$results" $floor_args
}
# With the fan-out of its sizes and pace in the sitting, the floor runs right before each of its rounds, and the
# report reads each round against its own floor: this machine's speed drifts over minutes, the floor with it.
floor_beside=fanout-1k-100
if [[ $smoke == 1 ]] || ! selected "$floor_beside"; then floor_beside=; fi
if selected floor-1k-100 && [[ -z $floor_beside ]]; then
  for round in $(seq 1 "$rounds"); do floor_round "$round"; done
fi

for entry in "${scenarios[@]}"; do
  IFS='|' read -r name args plain <<<"$entry"
  if ! selected "$name"; then continue; fi
  # Which subscribers: socket.io over WebSocket (the arguments' own transport), and herald's plain clients.
  if [[ $plain == plain ]]; then runs=$transports; else runs=websocket; fi
  for round in $(seq 1 "$rounds"); do
    if [[ $name == "$floor_beside" ]] && selected floor-1k-100; then floor_round "$round"; fi
    for server in $servers; do
      # Only herald and the Node reference route client events to a webhook (bench/reference/README.md).
      if [[ $name == events* && $server == socketioxide ]]; then continue; fi
      # The broker bridges are herald's alone, and so is auth through a webhook.
      if [[ $name == bridges* && $server != herald ]]; then continue; fi
      if [[ $name == *-webhook && $server != herald ]]; then continue; fi
      for transport in $runs; do
        # Only herald has plain clients.
        if [[ $transport != websocket && $server != herald ]]; then continue; fi
        with=()
        if [[ $plain == plain ]]; then with=(--transport "$transport"); fi
        echo "== $name${with[*]:+ (${with[*]})}, round $round, $server" >&2
        start_server "$server" "$name"
        # shellcheck disable=SC2086 # $args is a word list on purpose
        "${gen_cpu[@]}" "$profile_dir/herald-bench" --addr "127.0.0.1:$port" --pid "$server_pid" --server "$server" \
          --json "$results" "${strict[@]}" "${with[@]}" $args
        stop_server
        sleep 1
      done
    done
  done
done

# Mailboxes are herald's alone (the reference servers deliver live only): appends/s and a 10k replay, through
# the store trait, embedded and on Redis when one answers on 127.0.0.1:6379.
mailbox_selected() {
  [[ -z $only ]] && return 0
  local word
  for word in $only; do
    if [[ mailbox == *"$word"* ]]; then return 0; fi
  done
  return 1
}
if [[ $smoke == 0 && " $servers " == *" herald "* ]] && mailbox_selected; then
  echo "== mailbox, embedded" >&2
  cargo bench -q -p herald --bench mailbox | tee "$out/mailbox.txt"
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "== mailbox, Redis" >&2
    cargo bench -q -p herald --bench mailbox -- --redis redis://127.0.0.1:6379/ | tee -a "$out/mailbox.txt"
  fi
fi

"$profile_dir/herald-bench" report "$results" | tee "$out/report.md"
{
  echo
  echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)'), $(date -u +%FT%TZ)"
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
  if [[ $servers != herald ]]; then bash scripts/bench-setup.sh | grep -E '^\[bench-setup\] (node|socketioxide) [0-9]'; fi
} | tee -a "$out/report.md"
