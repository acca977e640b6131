#!/usr/bin/env bash
# What the Prometheus metrics cost on the fan-out path (BENCHMARKS.md, "Metrics on and off"): herald with
# bench/herald.yml (metrics on, the default, nobody scraping) against the same file plus `server.metrics: false`
# (no recorder installed, every handle a no-op, /metrics 404), in the fan-out rows of scripts/bench.sh: 1000
# socket.io subscribers in one room, unpaced with 16 publishers, and 100 msg/s. Each round runs both, the order
# swapped every other round so a machine getting busier or quieter weighs on both alike.
#
#   bash scripts/bench-metrics.sh               # 3 rounds (~3 min after the release build)
#   bash scripts/bench-metrics.sh --rounds 6
#
# Results: one JSON line per run in target/bench/metrics.jsonl (under $CARGO_TARGET_DIR when it is set), then a
# table of medians with ranges. The server is pinned to CPU 0 and the load generator to CPU 1, as in bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
rounds=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N]" >&2; exit 64 ;;
  esac
done

cargo build --release -q -p herald -p herald-bench
bin=$target_dir/release
out=$target_dir/bench
mkdir -p "$out"
results=$out/metrics.jsonl
: > "$results"
off_config=$(mktemp "${TMPDIR:-/tmp}/herald-metrics-off.XXXXXX.yml")
sed 's/^server:$/server:\n  metrics: false/' bench/herald.yml > "$off_config"
grep -q '^  metrics: false$' "$off_config" || { echo "bench/herald.yml has no 'server:' line to extend" >&2; exit 1; }
if [[ $(nproc) -ge 2 ]]; then server_cpu=(taskset -c 0) gen_cpu=(taskset -c 1); else server_cpu=() gen_cpu=(); fi
port=${BENCH_PORT:-3790}
export BENCH_API_KEY=bench-api-key-0123456789 BENCH_JWT_SECRET=bench-jwt-secret-0123456789abcdef

server_pid=""
stop_server() {
  if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  server_pid=""
}
trap 'stop_server; rm -f "$off_config"' EXIT

rows=(
  "fanout --subs 1000 --messages 2000 --publishers 16"
  "fanout --subs 1000 --messages 1000 --rate 100"
)
for args in "${rows[@]}"; do
  for round in $(seq 1 "$rounds"); do
    order="on off"
    if (( round % 2 == 0 )); then order="off on"; fi
    for metrics in $order; do
      config=bench/herald.yml want=200
      if [[ $metrics == off ]]; then config=$off_config want=404; fi
      echo "== $args, round $round, metrics $metrics; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
      "${server_cpu[@]}" "$bin/herald" --config "$config" --port "$port" >"$out/server.log" 2>&1 &
      server_pid=$!
      for _ in $(seq 1 100); do
        if curl -sf "http://127.0.0.1:$port/healthcheck" >/dev/null; then break; fi
        sleep 0.1
      done
      got=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/metrics")
      [[ $got == "$want" ]] || { echo "/metrics answered $got with metrics $metrics" >&2; exit 1; }
      # shellcheck disable=SC2086 # $args is a word list on purpose
      "${gen_cpu[@]}" "$bin/herald-bench" --addr "127.0.0.1:$port" --pid "$server_pid" --server "metrics-$metrics" \
        --json "$results" $args
      stop_server
      sleep 1
    done
  done
done

python3 - "$results" <<'EOF'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
cells = {}
for run in runs:
    m = run["metrics"]
    for metric, value in [("delivered msg/s", m["msgs_per_sec"]), ("server CPU per delivery (µs)", m["server_cpu_us_per_msg"])]:
        cells.setdefault((run["variant"], metric), {}).setdefault(run["server"], []).append(value)
print("| variant | metric | metrics on | metrics off | on / off (medians) |")
print("| --- | --- | ---: | ---: | ---: |")
def cell(values, digits):
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"
for (variant, metric), by in cells.items():
    on, off = by.get("metrics-on", []), by.get("metrics-off", [])
    if on and off:
        digits = 0 if metric.startswith("delivered") else 3
        ratio = statistics.median(on) / statistics.median(off)
        print(f"| {variant} | {metric} | {cell(on, digits)} | {cell(off, digits)} | {ratio:.3f} |")
EOF
