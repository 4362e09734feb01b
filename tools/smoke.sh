#!/usr/bin/env bash
# Smoke test of `make run` as a user meets it: starts tools/run-local.sh on free ports, then
# checks with grpcurl that the services are listed, a validation error shows its field
# violations, a noop job succeeds within 1 s and the
# README's fail job ends FAILED on attempt 3; runs the examples of README.md, docs/api.md and
# docs/clients.md as written (tools/doccheck.py); and fuzzes the REST gateway with schemathesis
# from /api/openapi.json (no 5xx, every response as documented). Stops the stack afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
# Without a stack, start one (tools/with-stack.sh runs tools/run-local.sh on free ports).
[ -n "${STACK_GRPC:-}" ] || exec tools/with-stack.sh "$0" "$@"
ADDR=$STACK_GRPC
call() { .tools/venv/bin/grpcurl -plaintext -d "$2" "$ADDR" "dispatch.v1.JobService/$1"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

services=$(.tools/venv/bin/grpcurl -plaintext "$ADDR" list)
for s in dispatch.v1.JobService dispatch.v1.WorkerService grpc.health.v1.Health; do
  grep -qx "$s" <<<"$services" || { echo "smoke: $s not listed"; exit 1; }
done
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# A validation error shows its field violations in grpcurl (the error details are served by
# reflection).
bad=$(call CreateJob '{"queue":"","type":""}' 2>&1 || true)
grep -q '"fieldViolations":\[{"field":"queue"' <<<"$bad" && ! grep -q "not recognized" <<<"$bad" \
  || { echo "smoke: grpcurl does not show the field violations:"; echo "$bad"; exit 1; }

id=$(call CreateJob '{"queue":"default","type":"noop","payload":{"objectId":"x"}}' | field 'd["job"]["id"]')
state=""
for _ in $(seq 1 20); do
  state=$(call GetJob "{\"id\":\"$id\"}" | field 'd["job"]["state"]')
  [ "$state" = JOB_STATE_SUCCEEDED ] && break
  sleep 0.05
done
[ "$state" = JOB_STATE_SUCCEEDED ] || { echo "smoke: noop job is $state after 1 s"; exit 1; }

id=$(call CreateJob '{"queue":"default","type":"fail","payload":{"probability":1},"options":{"maxAttempts":3,"backoff":{"initial":"0.1s"}}}' | field 'd["job"]["id"]')
for _ in $(seq 1 100); do
  out=$(call GetJob "{\"id\":\"$id\"}")
  state=$(field 'd["job"]["state"]' <<<"$out")
  [ "$state" = JOB_STATE_FAILED ] && break
  sleep 0.1
done
attempt=$(field 'd["job"]["attempt"]' <<<"$out")
[ "$state" = JOB_STATE_FAILED ] && [ "$attempt" = 3 ] || { echo "smoke: fail job is $state on attempt $attempt"; exit 1; }

# The examples of the README, docs/api.md and docs/clients.md as written (tools/doccheck.py).
if ! python3 tools/doccheck.py README.md docs/api.md docs/clients.md >"$work/docs.out" 2>&1; then
  cat "$work/docs.out"; echo "smoke: an example in the docs failed"; exit 1
fi
grep -q '"state":"JOB_STATE_SUCCEEDED","result":{"url":"s3://x"}' "$work/docs.out" \
  || { cat "$work/docs.out"; echo "smoke: docs/api.md HTTP worker did not complete its job"; exit 1; }
tail -1 "$work/docs.out"

# schemathesis against the generated OpenAPI document.
if ! (cd "$work" && timeout 600 "$OLDPWD/.tools/venv/bin/schemathesis" run \
    "http://127.0.0.1:$HTTP_PORT/api/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-40}" --seed "${SCHEMATHESIS_SEED:-1}" \
    --request-timeout 10 --generation-database none --no-color >"$work/st.out" 2>&1); then
  cat "$work/st.out"; echo "smoke: schemathesis found a problem"; exit 1
fi
grep -E "test cases|generated" "$work/st.out" | tail -1
echo "smoke: 4 passed, 0 failed"
