#!/usr/bin/env bash
# Starts the servers the tests talk to, if they are not running (idempotent).
# Postgres, Redis (one server and a 3-master cluster) and NATS: the stores, queue, event and
# memory backends are tested against them.
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

# A 3-master Redis Cluster on 7001-7003 (bus ports 17001-17003) for the Redis backends' cluster
# contract suites. Nodes keep nothing on disk; a node that restarted empty is reset and the
# cluster created again, so a half-made cluster never survives a re-run.
CLUSTER_PORTS=(7001 7002 7003)
cluster_ok() {
  for p in "${CLUSTER_PORTS[@]}"; do
    redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}
if cluster_ok; then
  echo "services: redis cluster is running"
else
  echo "services: starting redis cluster"
  mkdir -p /var/lib/redis-cluster /var/log/redis
  for p in "${CLUSTER_PORTS[@]}"; do
    if ! redis-cli -p "$p" ping >/dev/null 2>&1; then
      rm -f "/var/lib/redis-cluster/nodes-$p.conf"
      redis-server --daemonize yes --bind 127.0.0.1 --port "$p" --cluster-enabled yes \
        --cluster-config-file "/var/lib/redis-cluster/nodes-$p.conf" --cluster-node-timeout 5000 \
        --save "" --appendonly no --dir /var/lib/redis-cluster --logfile "/var/log/redis/cluster-$p.log"
    fi
  done
  for p in "${CLUSTER_PORTS[@]}"; do
    for _ in $(seq 1 30); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.5; done
    redis-cli -p "$p" flushall >/dev/null
    redis-cli -p "$p" cluster reset hard >/dev/null
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CLUSTER_PORTS[@]}") --cluster-replicas 0 --cluster-yes >/dev/null
  for _ in $(seq 1 60); do cluster_ok && break; sleep 0.5; done
  if cluster_ok; then echo "services: redis cluster is up"; else echo "services: redis cluster did not come up" >&2; exit 1; fi
fi

# Databases left behind by earlier test runs (each test creates its own ns_test_* database).
psql -h 127.0.0.1 -U postgres -d postgres -Atc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'ns_test_%'" 2>/dev/null |
  while read -r db; do psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true; done
