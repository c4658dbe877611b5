#!/usr/bin/env bash
# Smoke test of a real `nightshift dev` process with grpcurl (reflection v1alpha) and the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${NIGHTSHIFT_BIN:-${CARGO_TARGET_DIR:-target}/debug/nightshift}
GRPCURL=${GRPCURL:-grpcurl}
data=$(mktemp -d)
out=$(mktemp)
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The embedded embedding model, so that dev's memory service can search by meaning.
model=$(crates/memory/scripts/fetch-model.sh)
"$BIN" dev --listen 127.0.0.1:0 --data-dir "$data" -f examples/agents --metrics-listen "127.0.0.1:$metrics_port" \
  --memory-model "$model" >"$out" 2>"$data/dev.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$data" "$out"' EXIT
for _ in $(seq 1 50); do grep -q listening "$out" && break; sleep 0.2; done
addr=$(awk '/listening/ {print $5}' "$out")
[ -n "$addr" ] || { echo "smoke: dev did not start"; cat "$data/dev.log"; exit 1; }
echo "smoke: nightshift dev on $addr"

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
list=$("$GRPCURL" -plaintext "$addr" list)
for svc in nightshift.v1.ManagerService nightshift.v1.SchedulerService nightshift.v1.WorkerService \
  nightshift.v1.EventService nightshift.v1.MemoryService grpc.health.v1.Health grpc.reflection.v1alpha.ServerReflection; do
  grep -qx "$svc" <<<"$list" || fail "grpcurl list lacks $svc: $list"
done
"$GRPCURL" -plaintext "$addr" describe nightshift.v1.ManagerService | grep -q "rpc StartRun" || fail "describe ManagerService"
"$GRPCURL" -plaintext "$addr" describe nightshift.v1.AgentSpec | grep -q "system_instruction" || fail "describe AgentSpec"
"$GRPCURL" -plaintext "$addr" grpc.health.v1.Health/Check | grep -q SERVING || fail "health"
"$GRPCURL" -plaintext -d '{"agent":{"name":"system-health"}}' "$addr" \
  nightshift.v1.ManagerService/GetAgentStatus | grep -q '"name": "system-health"' || fail "GetAgentStatus via grpcurl"
err=$("$GRPCURL" -plaintext -d '{"manifest_yaml":"name: x\nmodel: {provider: openai, model: m}\ntask: {query: q}\nschedule: {interval: -5s}"}' \
  "$addr" nightshift.v1.ManagerService/CreateAgent 2>&1 || true)
grep -q InvalidArgument <<<"$err" && grep -q schedule.interval <<<"$err" || fail "INVALID_ARGUMENT naming the field: $err"

# The README's memory examples: Store two facts, Search by meaning, Recall.
"$GRPCURL" -plaintext -d '{"records":[
  {"type":"MEMORY_TYPE_LONG_TERM","scope":{"agent_id":"demo","session":"agent"},"content":"the kitten sat on the mat"},
  {"type":"MEMORY_TYPE_LONG_TERM","scope":{"agent_id":"demo","session":"agent"},"content":"quarterly revenue grew by four percent"}]}' \
  "$addr" nightshift.v1.MemoryService/Store | grep -q '"ids"' || fail "MemoryService/Store"
hit=$("$GRPCURL" -plaintext -d '{"scope":{"agent_id":"demo","session":"agent"},"query":"a cat resting","top_k":1}' \
  "$addr" nightshift.v1.MemoryService/Search) || fail "MemoryService/Search"
grep -q "kitten" <<<"$hit" || fail "Search did not find the kitten: $hit"
"$GRPCURL" -plaintext -d '{"scope":{"agent_id":"demo","session":"agent"},"type":"MEMORY_TYPE_LONG_TERM","limit":5}' \
  "$addr" nightshift.v1.MemoryService/Recall | grep -q "revenue" || fail "MemoryService/Recall"

export NIGHTSHIFT_ENDPOINT="http://$addr"
"$BIN" agent list | grep -q system-health || fail "agent list"
"$BIN" agent status system-health -o json | grep -q '"state": "active"' || fail "agent status json"
# A 1 s schedule fires in dev (runs fail: no LLM is reachable, which is fine here) and the
# event stream shows the seed's lifecycle events.
printf 'name: smoke-ticker\nmodel: {provider: openai, model: m, base_url: "http://127.0.0.1:9/v1"}\ntask: {query: q}\nschedule: {interval: 1s}\npolicy: {max_retries: 0}\n' >"$data/ticker.yaml"
"$BIN" agent apply -f "$data/ticker.yaml" >/dev/null
sleep 3.5
"$BIN" agent pause smoke-ticker >/dev/null
n=$("$BIN" runs list --agent smoke-ticker -o json | grep -c '"id"' || true)
[ "$n" -ge 2 ] || fail "expected runs from a 1 s schedule, got $n"
events=$("$BIN" events tail --agent smoke-ticker)
for t in AGENT_CREATED SCHEDULE_FIRED BACKGROUND_TASK_STARTED BACKGROUND_AGENT_STATUS AGENT_PAUSED; do
  grep -q "$t" <<<"$events" || fail "events tail lacks $t: $events"
done
# Prometheus text that promtool accepts (help texts, histogram buckets).
# A metric appears once it is first recorded: the ticker's runs end only after the LLM client has
# given up on the unreachable model (retries with backoff), so wait for them a while.
wanted="nightshift_scheduler_fired_total nightshift_worker_runs_total nightshift_memory_records_stored_total nightshift_events_published_total"
for _ in $(seq 1 60); do
  metrics=$(curl -fsS "http://127.0.0.1:$metrics_port/metrics") || fail "GET /metrics"
  missing=""
  for m in $wanted; do grep -q "$m" <<<"$metrics" || missing="$missing $m"; done
  [ -z "$missing" ] && break
  sleep 0.5
done
[ -z "$missing" ] || fail "metrics missing after 30 s:$missing"
promtool check metrics <<<"$metrics" || fail "promtool check metrics"
echo "smoke: ok"
