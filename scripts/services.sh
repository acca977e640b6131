#!/usr/bin/env bash
# Makes sure the services herald's tests talk to are up: Redis on 127.0.0.1:6379 (the Redis mailbox store's
# contract test and the two-node tests), and redis-server on the PATH (the chaos tests run their own). Starts it when it is not answering, with the command this machine
# kind documents; a machine without redis-server gets a clear error.
#
# Usage: bash scripts/services.sh
set -uo pipefail

REDIS_HOST=127.0.0.1
REDIS_PORT=6379

redis_up() { (exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT" && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; }

# tests/js/chaos.test.mjs starts (and kills) a redis-server of its own.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "[services] redis-server is not installed; the Redis mailbox and chaos tests need it." >&2
  echo "[services] Install it (Debian: apt-get install redis-server)." >&2
  exit 1
fi
if redis_up; then
  echo "[services] Redis answers on $REDIS_HOST:$REDIS_PORT"
  exit 0
fi
echo "[services] starting Redis on $REDIS_HOST:$REDIS_PORT"
mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
  --dir /var/lib/redis --logfile /var/log/redis/ci.log
for _ in $(seq 1 50); do
  redis_up && { echo "[services] Redis is up"; exit 0; }
  sleep 0.1
done
echo "[services] Redis did not come up on $REDIS_HOST:$REDIS_PORT; see /var/log/redis/ci.log" >&2
exit 1
