#!/usr/bin/env bash
# Checks `make run`'s supervision (tools/run-local.sh) on free ports in a temporary directory:
#  1. a worker killed with -9 is restarted, and the restart is said; the jobs it held finish
#     (retried once their lease expires, on the other worker or on its replacement);
#  2. SIGTERM while jobs run stops the stack in order (workers drain while dispatch still
#     answers): after a restart on the same data, those jobs are SUCCEEDED on their first
#     attempt (recorded, not run again), and the stop took less than 30 s;
#  3. dispatch dying stops the stack with a message naming it and its log.
# Usage: tools/run-check.sh (PROFILE=debug by default; binaries built by cargo build --bins).
set -euo pipefail
cd "$(dirname "$0")/.."
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export REDIS_PORT=$(free_port) NATS_PORT=$(free_port) GRPC_PORT=$(free_port) HTTP_PORT=$(free_port)
export WORKER1_METRICS_PORT=$(free_port) WORKER2_METRICS_PORT=$(free_port)
export PROFILE=${PROFILE:-debug} RUN_DIR=$(mktemp -d)
API=http://127.0.0.1:$HTTP_PORT/api
log=$RUN_DIR/run.out
stack=
fail() { echo "run-check: $*" >&2; [ -f "$log" ] && tail -n 20 "$log" >&2; exit 1; }
cleanup() { [ -n "$stack" ] && kill -TERM "$stack" 2>/dev/null && wait "$stack" 2>/dev/null; rm -rf "$RUN_DIR"; }
trap cleanup EXIT

# Polls `$1` (a shell condition) every 0.1 s for up to $2 seconds.
until_true() {
  local deadline=$((SECONDS + $2))
  until eval "$1"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}

start_stack() {
  : >"$log"
  setsid tools/run-local.sh >>"$log" 2>&1 &
  stack=$!
  until_true 'grep -q "Dispatch is running" "$log"' 300 || fail "the stack did not start"
}

state_of() { curl -s "$API/job/$1" | python3 -c 'import json,sys; j=json.load(sys.stdin)["job"]; print(j["state"], j.get("attempt", 0))'; }

create_sleep() {
  curl -s -H 'Content-Type: application/json' \
    -d "{\"queue\":\"default\",\"type\":\"sleep\",\"payload\":{\"durationMs\":$1}}" "$API/job" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"]["id"])'
}
worker_of() { curl -s "$API/job/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"].get("lease", {}).get("workerId", ""))'; }

echo "== run-check: a worker killed with -9 is restarted, and the jobs it held finish"
start_stack
jobs=()
for i in $(seq 1 8); do jobs+=("$(create_sleep 8000)"); done
for id in "${jobs[@]}"; do
  until_true '[ "$(state_of "$id")" = "JOB_STATE_RUNNING 1" ]' 20 || fail "job $id did not start"
done
victim=$(worker_of "${jobs[0]}")
[ -n "$victim" ] || fail "job ${jobs[0]} runs on no worker: $(curl -s "$API/job/${jobs[0]}")"
held=()
for id in "${jobs[@]}"; do [ "$(worker_of "$id")" = "$victim" ] && held+=("$id"); done
old=$(pgrep -f -- "--worker-id $victim " || true)
[ -n "$old" ] || fail "$victim is not running"
kill -9 "$old"
until_true 'grep -q "$victim exited (status 137); restarting it" "$log"' 10 || fail "no restart message"
until_true 'new=$(pgrep -f -- "--worker-id $victim " || true); [ -n "$new" ] && [ "$new" != "$old" ]' 10 \
  || fail "$victim was not restarted"
# Its jobs come back when their lease (30 s) expires and run again on attempt 2.
for id in "${held[@]}"; do
  until_true '[ "$(state_of "$id")" = "JOB_STATE_SUCCEEDED 2" ]' 90 || fail "job $id held by the killed $victim: $(state_of "$id")"
done
echo "run-check: the ${#held[@]} job(s) the killed $victim held finished on attempt 2"

echo "== run-check: SIGTERM while jobs run: workers drain first, the jobs are recorded"
ids=()
for i in 1 2 3 4; do
  ids+=("$(curl -s -H 'Content-Type: application/json' \
    -d '{"queue":"default","type":"sleep","payload":{"durationMs":1500}}' "$API/job" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"]["id"])')")
done
for id in "${ids[@]}"; do
  until_true '[ "$(state_of "$id")" = "JOB_STATE_RUNNING 1" ]' 20 || fail "job $id did not start"
done
t0=$SECONDS
kill -TERM "$stack"
wait "$stack" || true
stack=
took=$((SECONDS - t0))
[ $took -lt 30 ] || fail "stopping took ${took}s"
grep -q "run: stopping: workers first" "$log" || fail "no ordered stop"
[ -z "$(pgrep -f -- "$RUN_DIR" || true)" ] || fail "processes left behind: $(pgrep -af -- "$RUN_DIR")"
start_stack
for id in "${ids[@]}"; do
  s=$(state_of "$id")
  [ "$s" = "JOB_STATE_SUCCEEDED 1" ] || fail "job $id is '$s' after the restart, want SUCCEEDED on attempt 1"
done
grep -q "Data of earlier runs is kept in $RUN_DIR" "$log" || fail "the kept data is not said"

echo "== run-check: dispatch dying stops the stack, naming it"
kill -9 "$(pgrep -f -- "--grpc-addr 127.0.0.1:$GRPC_PORT")"
until_true '! kill -0 "$stack" 2>/dev/null' 30 || fail "the stack kept running without dispatch"
stack=
grep -q "run: dispatch exited (status 137); see $RUN_DIR/logs/dispatch.log" "$log" || fail "no message naming dispatch"
echo "run-check: ok (stop took ${took}s)"
