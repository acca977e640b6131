#!/usr/bin/env bash
# The soak of issue 14: herald with bench/soak.yml against herald-bench's `soak` scenario for DURATION seconds
# (default 600): 5000 churning WebSocket and polling clients with slow readers among them, 200 mailbox devices
# that come and go and ack everything, and publishes through the HTTP API. Fails when a mailbox entry was lost,
# something is left pending, file handles or sockets leaked, or RSS drifted over 10 % (herald-bench --strict).
#
#   bash scripts/soak.sh                    # 10 minutes
#   bash scripts/soak.sh 60                 # a short run
#   bash scripts/soak.sh 600 --clients 8000 # more options go to `herald-bench soak` (see its --help)
#
# Output in target/soak/ (under $CARGO_TARGET_DIR when set): summary.txt, soak.jsonl (the metrics and RSS/fd
# samples), server.log (herald's JSON log, one line per closed session with its reason).
# herald is pinned to CPU 0 and the generator to CPU 1 when the machine has two or more.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-600}
shift || true
target_dir=${CARGO_TARGET_DIR:-target}
out=$target_dir/soak
cargo build -q --release -p herald -p herald-bench
mkdir -p "$out"

# As many open files as the hard limit allows, for herald and the generator alike (both inherit it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "[soak.sh] open-file limit $(ulimit -n); $(nproc) CPUs; load: $(uptime | sed 's/.*load average: //')" >&2
if [[ $(nproc) -ge 2 ]]; then server_cpu=(taskset -c 0) gen_cpu=(taskset -c 1); else server_cpu=() gen_cpu=(); fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
  2>/dev/null || echo 3791)
data=$(mktemp -d -t herald-soak.XXXXXX)
server_pid=""
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid" 2>/dev/null || true; fi
  rm -rf "$data"
}
trap cleanup EXIT

"${server_cpu[@]}" "$target_dir/release/herald" --config bench/soak.yml --port "$port" --data-dir "$data" \
  2>"$out/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:$port/healthcheck" >/dev/null; then break; fi
  sleep 0.1
done
if ! curl -sf "http://127.0.0.1:$port/healthcheck" >/dev/null; then
  echo "[soak.sh] herald did not start:" >&2; cat "$out/server.log" >&2; exit 1
fi

# With gdb at hand, RSS is also read right after malloc_trim(0) in herald (pausing it ~1 s, three times): glibc
# keeps freed memory, so this tells what herald still uses from what it merely used once.
trim=()
if command -v gdb >/dev/null; then trim=(--gdb-trim); fi
export BENCH_API_KEY=soak-api-key-0123456789 BENCH_JWT_SECRET=soak-jwt-secret-0123456789abcdef
export RUST_LIB_BACKTRACE=0  # a failed check is one line, not a backtrace
set +e
"${gen_cpu[@]}" "$target_dir/release/herald-bench" --addr "127.0.0.1:$port" --pid "$server_pid" --site soak \
  --json "$out/soak.jsonl" --strict soak --duration "$duration" "${trim[@]}" "$@" | tee "$out/summary.txt"
status=${PIPESTATUS[0]}
set -e

mailbox_file=$(du -k "$data/mailbox.redb" 2>/dev/null | cut -f1 || echo '?')
alive=yes
kill -0 "$server_pid" 2>/dev/null || alive="no (it exited or crashed during the run)"
stopped=$(date +%s.%N)
kill -TERM "$server_pid" 2>/dev/null || true
set +e
wait "$server_pid"
server_status=$?
set -e
server_pid=""
{
  echo "herald alive at the end: $alive; after SIGTERM it exited with $server_status in $(echo "$(date +%s.%N) - $stopped" | bc 2>/dev/null || echo '?') s"
  echo "mailbox store file at the end: ${mailbox_file} KiB"
  echo "sessions closed, by reason (herald's log):"
  grep '"message":"session closed"' "$out/server.log" | grep -o '"reason":"[^"]*"' | sort | uniq -c | sort -rn || true
  echo "herald's other log lines, by message (top 10):"
  grep -v '"message":"session closed"' "$out/server.log" | grep -o '"message":"[^"]*"' | sort | uniq -c | sort -rn | head -10 || true
  echo "load after the run: $(uptime | sed 's/.*load average: //')"
} | tee -a "$out/summary.txt"
exit "$status"
