#!/usr/bin/env bash
# Runs a command against a fresh stack: tools/run-local.sh (Redis, NATS with JetStream, dispatch,
# two Rust workers on queue "default") on free loopback ports in a temporary directory, stopped
# afterwards whatever the command's outcome. The command sees:
#   STACK_GRPC=127.0.0.1:PORT  STACK_HTTP=http://127.0.0.1:PORT  STACK_NATS=nats://127.0.0.1:PORT
#   (and REDIS_PORT, NATS_PORT, GRPC_PORT, HTTP_PORT, WORKER1_METRICS_PORT, WORKER2_METRICS_PORT)
# Usage: tools/with-stack.sh COMMAND [ARG...]     PROFILE=debug by default.
set -euo pipefail
cd "$(dirname "$0")/.."
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export REDIS_PORT=$(free_port) NATS_PORT=$(free_port) GRPC_PORT=$(free_port) HTTP_PORT=$(free_port)
export WORKER1_METRICS_PORT=$(free_port) WORKER2_METRICS_PORT=$(free_port)
export PROFILE=${PROFILE:-debug}
export STACK_GRPC=127.0.0.1:$GRPC_PORT STACK_HTTP=http://127.0.0.1:$HTTP_PORT STACK_NATS=nats://127.0.0.1:$NATS_PORT
log=$(mktemp)
export RUN_DIR=$(mktemp -d)
setsid tools/run-local.sh >"$log" 2>&1 &
stack=$!
trap 'kill -TERM -- -$stack 2>/dev/null || true; wait $stack 2>/dev/null || true; rm -rf "$log" "$RUN_DIR"' EXIT
for _ in $(seq 1 1800); do
  grep -q "Dispatch is running" "$log" && break
  kill -0 $stack 2>/dev/null || { cat "$log"; tail -n 20 "$RUN_DIR"/logs/*.log; echo "with-stack: the stack did not start" >&2; exit 1; }
  sleep 0.1
done
grep -q "Dispatch is running" "$log" || { cat "$log"; echo "with-stack: the stack did not start in 3 min" >&2; exit 1; }
set +e
"$@"
rc=$?
set -e
if [ $rc != 0 ]; then
  echo "with-stack: '$*' exited $rc; dispatch log tail:" >&2
  tail -20 "$RUN_DIR/logs/dispatch.log" >&2 || true
fi
exit $rc
