#!/usr/bin/env bash
# Runs the whole system locally without Docker: Redis (AOF on), NATS with JetStream (file
# storage), dispatch and two workers, all under .run/. Ctrl-C or SIGTERM stops everything.
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
mkdir -p "$RUN/redis" "$RUN/nats" "$RUN/logs"
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "run: stopping"
  # Workers and dispatch first (they drain), then NATS and Redis.
  for pid in "${pids[@]:2}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:2}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:0:2}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

wait_port() {
  for _ in $(seq 1 300); do port_busy "$1" && return 0; sleep 0.1; done
  echo "run: $2 did not start on port $1; see $RUN/logs/$2.log" >&2
  exit 1
}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN/redis" \
  --appendonly yes --appendfsync everysec --save "" >"$RUN/logs/redis.log" 2>&1 &
pids+=($!)
.tools/venv/bin/nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$RUN/nats" >"$RUN/logs/nats.log" 2>&1 &
pids+=($!)
wait_port "$REDIS_PORT" redis
wait_port "$NATS_PORT" nats

"$BIN/dispatch" -c dispatch.sample.toml --grpc-addr "127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$HTTP_PORT" \
  --redis-url "redis://127.0.0.1:$REDIS_PORT" --nats-url "nats://127.0.0.1:$NATS_PORT" \
  >"$RUN/logs/dispatch.log" 2>&1 &
pids+=($!)
wait_port "$GRPC_PORT" dispatch
wait_port "$HTTP_PORT" dispatch
for i in 1 2; do
  metrics_port=WORKER${i}_METRICS_PORT
  "$BIN/worker" --worker-id "worker-$i" --dispatch-url "http://127.0.0.1:$GRPC_PORT" \
    --nats-url "nats://127.0.0.1:$NATS_PORT" --queues default=16 \
    --metrics-addr "127.0.0.1:${!metrics_port}" >"$RUN/logs/worker-$i.log" 2>&1 &
  pids+=($!)
done

cat <<MSG

Dispatch is running.
  gRPC (JobService, WorkerService, reflection, health): 127.0.0.1:$GRPC_PORT
  REST: http://127.0.0.1:$HTTP_PORT/api/...   reference: http://127.0.0.1:$HTTP_PORT/api/docs
  Metrics: http://127.0.0.1:$HTTP_PORT/metrics (dispatch), :$WORKER1_METRICS_PORT/metrics and :$WORKER2_METRICS_PORT/metrics (workers)
  Traces: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4317) before make run to export them
  Redis: redis://127.0.0.1:$REDIS_PORT      NATS: nats://127.0.0.1:$NATS_PORT (JetStream)
  Workers: worker-1, worker-2 on queue "default"    Logs: $RUN/logs/
Try:
  .tools/venv/bin/grpcurl -plaintext 127.0.0.1:$GRPC_PORT list
  curl -s -H 'Content-Type: application/json' -d '{"queue":"default","type":"noop"}' http://127.0.0.1:$HTTP_PORT/api/job
Ctrl-C stops everything.
MSG
# Exit (and clean up) when any component dies.
wait -n "${pids[@]}" || true
echo "run: a component exited; see $RUN/logs/" >&2
