#!/usr/bin/env bash
# Makes sure the services herald's tests talk to are up, starting each one that is not answering with the command
# this machine kind documents, and failing with its name when it cannot:
#   Redis      127.0.0.1:6379  the Redis mailbox store, the cluster and emitter tests, the Redis bridge
#   RabbitMQ   127.0.0.1:5672  the AMQP bridge (guest/guest)
#   Mosquitto  127.0.0.1:1883  the MQTT bridge
#   NATS       127.0.0.1:4222  the NATS bridge (with JetStream)
#   PostgreSQL 127.0.0.1:5432  the Postgres bridge (trust auth, user postgres)
# redis-server must also be on the PATH: tests/js/chaos.test.mjs runs its own.
#
# Usage: bash scripts/services.sh [redis] [rabbitmq] [mosquitto] [nats] [postgres]   (default: all)
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
redis_up() { (exec 3<>"/dev/tcp/127.0.0.1/6379" && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; }

# wait_for NAME CHECK... : polls CHECK for up to 60 s (RabbitMQ takes a while to boot).
wait_for() {
  local name="$1"; shift
  for _ in $(seq 1 600); do
    "$@" && { echo "[services] $name is up"; return 0; }
    sleep 0.1
  done
  echo "[services] $name did not come up" >&2
  return 1
}

# ensure NAME BINARY CHECK START: starts NAME with START unless CHECK passes; BINARY must be installed.
ensure() {
  local name="$1" binary="$2" check="$3" start="$4"
  if eval "$check"; then
    echo "[services] $name answers"
    return 0
  fi
  if ! command -v "$binary" >/dev/null 2>&1; then
    echo "[services] $name is not answering and $binary is not installed; the tests that need $name fail without it" >&2
    return 1
  fi
  echo "[services] starting $name: $start"
  eval "$start" || { echo "[services] could not start $name" >&2; return 1; }
  wait_for "$name" eval "$check"
}

start_redis() {
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

wanted=("$@")
[ ${#wanted[@]} -eq 0 ] && wanted=(redis rabbitmq mosquitto nats postgres)
failed=()
for service in "${wanted[@]}"; do
  case "$service" in
    redis) ensure Redis redis-server redis_up start_redis || failed+=(Redis) ;;
    rabbitmq) ensure RabbitMQ rabbitmq-server "port_open 5672" "rabbitmq-server -detached" || failed+=(RabbitMQ) ;;
    mosquitto) ensure Mosquitto mosquitto "port_open 1883" "mosquitto -d -c /etc/mosquitto/mosquitto.conf" || failed+=(Mosquitto) ;;
    nats) ensure NATS nats-server "port_open 4222" \
      "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log" \
      || failed+=(NATS) ;;
    postgres) ensure PostgreSQL pg_ctlcluster "port_open 5432" \
      'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' || failed+=(PostgreSQL) ;;
    *) echo "[services] unknown service: $service" >&2; exit 2 ;;
  esac
done
if ! command -v redis-server >/dev/null 2>&1; then
  echo "[services] redis-server is not installed; the Redis mailbox and chaos tests need it (Debian: apt-get install redis-server)" >&2
  failed+=(redis-server)
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "[services] not available: ${failed[*]}" >&2
  exit 1
fi
