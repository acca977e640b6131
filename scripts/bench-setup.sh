#!/usr/bin/env bash
# Installs and builds the reference servers herald-bench runs beside herald (bench/reference/README.md):
# the official socket.io server on Node.js (npm install) and socketioxide (cargo build --release). Quick when
# both are already done: npm is skipped while node_modules is newer than package.json, and cargo only checks
# freshness. Prints the versions actually installed.
#
# Usage: bash scripts/bench-setup.sh        (from any directory)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
node_dir="$root/bench/reference/node"
sio_dir="$root/bench/reference/socketioxide"

for tool in node npm cargo; do
  command -v "$tool" >/dev/null 2>&1 || { echo "[bench-setup] $tool is not installed" >&2; exit 1; }
done

stamp="$node_dir/node_modules/.package-lock.json"
if [[ -f "$stamp" && -f "$node_dir/node_modules/socket.io/package.json" && -f "$node_dir/node_modules/@socket.io/redis-adapter/package.json" \
  && "$stamp" -nt "$node_dir/package.json" ]]; then
  echo "[bench-setup] node: node_modules is up to date"
else
  echo "[bench-setup] node: npm install"
  (cd "$node_dir" && npm install --no-audit --no-fund --loglevel=error)
fi

echo "[bench-setup] socketioxide: cargo build --release"
cargo build --release --quiet --manifest-path "$sio_dir/Cargo.toml" --target-dir "$sio_dir/target"

version_of() { node -p "require(process.argv[1]).version" "$node_dir/node_modules/$1/package.json"; }
locked() { awk -v want="$1" '$0 == "name = \"" want "\"" { getline; gsub(/version = |"/, ""); print; exit }' "$sio_dir/Cargo.lock"; }

echo "[bench-setup] node $(node --version | tr -d v): socket.io $(version_of socket.io), engine.io $(version_of engine.io), ws $(version_of ws), jsonwebtoken $(version_of jsonwebtoken); cluster: @socket.io/redis-adapter $(version_of @socket.io/redis-adapter), redis $(version_of redis)"
echo "[bench-setup] socketioxide $(locked socketioxide), engineioxide $(locked engineioxide), axum $(locked axum), tokio $(locked tokio), jsonwebtoken $(locked jsonwebtoken)"
echo "[bench-setup] node server:         node $node_dir/server.mjs"
echo "[bench-setup] socketioxide server: $sio_dir/target/release/herald-ref-socketioxide"
