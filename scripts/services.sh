#!/usr/bin/env bash
# Starts the servers the tests talk to, if they are not running (idempotent).
# Postgres is required today; Redis and NATS are started too because the queue and event
# backends use them.
set -euo pipefail

up() { # name, check command, start command
  local name=$1 check=$2 start=$3
  if eval "$check" >/dev/null 2>&1; then
    echo "services: $name is running"
    return
  fi
  echo "services: starting $name"
  eval "$start" || true
  for _ in $(seq 1 30); do
    if eval "$check" >/dev/null 2>&1; then echo "services: $name is up"; return; fi
    sleep 1
  done
  echo "services: $name did not come up" >&2
  return 1
}

up postgres "pg_isready -h 127.0.0.1 -p 5432" \
  'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main start'
up redis "redis-cli -h 127.0.0.1 -p 6379 ping" \
  'mkdir -p /var/lib/redis /var/log/redis && redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log'
up nats "bash -c '</dev/tcp/127.0.0.1/4222'" \
  'mkdir -p /var/lib/nats-server && start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log'

# Databases left behind by earlier test runs (each test creates its own ns_test_* database).
psql -h 127.0.0.1 -U postgres -d postgres -Atc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'ns_test_%'" 2>/dev/null |
  while read -r db; do psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true; done
