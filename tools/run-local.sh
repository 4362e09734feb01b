#!/usr/bin/env bash
# Runs the whole system locally without Docker: Redis (AOF on), NATS with JetStream (file
# storage), dispatch and two workers, all under .run/.
#
# A worker that dies is restarted (after 1 s, doubling up to 30 s while it keeps dying) and the
# restart is said; if Redis, NATS or dispatch dies, the stack stops, naming it and its log.
# Ctrl-C or SIGTERM stops it in order: the workers drain first while dispatch still answers,
# then dispatch, then NATS and Redis. Each component runs in a session of its own, so Ctrl-C
# reaches only this script, which does the ordering.
#
# Ports default to the public contract; override with REDIS_PORT, NATS_PORT, GRPC_PORT, HTTP_PORT.
# Data and logs go to RUN_DIR (default .run/).
# PROFILE=debug builds faster than the default release build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REDIS_PORT=${REDIS_PORT:-6379}
NATS_PORT=${NATS_PORT:-4222}
GRPC_PORT=${GRPC_PORT:-50051}
HTTP_PORT=${HTTP_PORT:-8080}
WORKER1_METRICS_PORT=${WORKER1_METRICS_PORT:-9091}
WORKER2_METRICS_PORT=${WORKER2_METRICS_PORT:-9092}
PROFILE=${PROFILE:-release}

tools/install.sh
if [ "$PROFILE" = release ]; then cargo build --release --bins; else cargo build --bins; fi
BIN=$ROOT/target/$PROFILE

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$REDIS_PORT" "$NATS_PORT" "$GRPC_PORT" "$HTTP_PORT" "$WORKER1_METRICS_PORT" "$WORKER2_METRICS_PORT"; do
  if port_busy "$p"; then
    echo "run: port $p is already in use (a system redis-server or an earlier run?)." >&2
    echo "     Stop it, or pick other ports: REDIS_PORT=... NATS_PORT=... GRPC_PORT=... HTTP_PORT=... WORKER1_METRICS_PORT=... WORKER2_METRICS_PORT=... make run" >&2
    exit 1
  fi
done

RUN=${RUN_DIR:-$ROOT/.run}
kept=no
[ -d "$RUN/redis" ] && [ -n "$(ls -A "$RUN/redis" 2>/dev/null)" ] && kept=yes
mkdir -p "$RUN/redis" "$RUN/nats" "$RUN/logs"
core=()      # redis, nats, dispatch
names=()
workers=()   # worker supervisors
stopping=0
cleanup() {
  trap - INT TERM EXIT
  stopping=1
  echo; echo "run: stopping: workers first (they finish or hand back their jobs)"
  for pid in "${workers[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${workers[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ ${#core[@]} -gt 2 ]; then
    echo "run: stopping dispatch"
    kill -TERM "${core[2]}" 2>/dev/null || true
    wait "${core[2]}" 2>/dev/null || true
  fi
  echo "run: stopping NATS and Redis"
  for pid in "${core[@]:0:2}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${core[@]:0:2}"; do wait "$pid" 2>/dev/null || true; done
  echo "run: stopped"
}
trap cleanup INT TERM EXIT

# Starts a component in a session of its own (Ctrl-C does not reach it; this script stops it).
start() { # name command...
  local name=$1; shift
  setsid "$@" >>"$RUN/logs/$name.log" 2>&1 </dev/null &
  core+=($!); names+=("$name")
}

# Runs worker $1 until the stack stops, restarting it when it exits.
supervise_worker() {
  local i=$1 delay=1 started pid code metrics_port=WORKER${1}_METRICS_PORT
  local quit=0
  trap 'quit=1; [ -n "${pid:-}" ] && kill -TERM "$pid" 2>/dev/null' TERM
  trap '' INT
  while :; do
    started=$SECONDS
    setsid "$BIN/worker" --worker-id "worker-$i" --dispatch-url "http://127.0.0.1:$GRPC_PORT" \
      --nats-url "nats://127.0.0.1:$NATS_PORT" --queues default=16 \
      --metrics-addr "127.0.0.1:${!metrics_port}" >>"$RUN/logs/worker-$i.log" 2>&1 </dev/null &
    pid=$!
    code=0
    wait "$pid" || code=$?
    # A TERM while waiting interrupts `wait`: wait again until the worker has drained.
    while kill -0 "$pid" 2>/dev/null; do wait "$pid" || code=$?; done
    [ $quit = 1 ] && exit 0
    (( SECONDS - started > 60 )) && delay=1
    echo "run: worker-$i exited (status $code); restarting it in ${delay}s (log: $RUN/logs/worker-$i.log)" >&2
    sleep "$delay" & wait $! || true
    [ $quit = 1 ] && exit 0
    delay=$(( delay * 2 > 30 ? 30 : delay * 2 ))
  done
}

wait_port() {
  for _ in $(seq 1 300); do port_busy "$1" && return 0; sleep 0.1; done
  echo "run: $2 did not start on port $1; see $RUN/logs/$2.log" >&2
  exit 1
}

start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN/redis" \
  --appendonly yes --appendfsync everysec --save ""
start nats .tools/venv/bin/nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$RUN/nats"
wait_port "$REDIS_PORT" redis
wait_port "$NATS_PORT" nats

start dispatch "$BIN/dispatch" -c dispatch.sample.toml --grpc-addr "127.0.0.1:$GRPC_PORT" \
  --http-addr "127.0.0.1:$HTTP_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
  --nats-url "nats://127.0.0.1:$NATS_PORT"
wait_port "$GRPC_PORT" dispatch
wait_port "$HTTP_PORT" dispatch
for i in 1 2; do
  supervise_worker "$i" &
  workers+=($!)
done
if [ $kept = yes ]; then
  data="Data of earlier runs is kept in $RUN (Redis AOF, JetStream); to start afresh: rm -rf $RUN"
else
  data="Data is kept in $RUN between runs (Redis AOF, JetStream); to start afresh: rm -rf $RUN"
fi

cat <<MSG

Dispatch is running.
  Dashboard: http://127.0.0.1:$HTTP_PORT/
  gRPC (JobService, WorkerService, reflection, health): 127.0.0.1:$GRPC_PORT
  REST: http://127.0.0.1:$HTTP_PORT/api/...   reference: http://127.0.0.1:$HTTP_PORT/api/docs
  Metrics: http://127.0.0.1:$HTTP_PORT/metrics (dispatch), :$WORKER1_METRICS_PORT/metrics and :$WORKER2_METRICS_PORT/metrics (workers)
  Traces: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4317) before make run to export them
  Redis: redis://127.0.0.1:$REDIS_PORT      NATS: nats://127.0.0.1:$NATS_PORT (JetStream)
  Workers: worker-1, worker-2 on queue "default" (restarted when they die)    Logs: $RUN/logs/
  $data
Try:
  .tools/venv/bin/grpcurl -plaintext 127.0.0.1:$GRPC_PORT list
  curl -s -H 'Content-Type: application/json' -d '{"queue":"default","type":"noop"}' http://127.0.0.1:$HTTP_PORT/api/job
  DISPATCH_ADDR=http://127.0.0.1:$GRPC_PORT $BIN/dispatchctl queues list
Ctrl-C stops everything, workers first.
MSG
# Redis, NATS or dispatch dying stops the stack (a worker dying does not: its supervisor
# restarts it).
status=0
wait -n "${core[@]}" || status=$?
if [ $stopping = 0 ]; then
  for j in "${!core[@]}"; do
    if ! kill -0 "${core[$j]}" 2>/dev/null; then
      echo "run: ${names[$j]} exited (status $status); see $RUN/logs/${names[$j]}.log. Stopping the rest." >&2
    fi
  done
  exit 1
fi
