#!/usr/bin/env bash
# Tests the generated clients in other languages against the live stack that
# tools/with-stack.sh started (it sets STACK_GRPC, STACK_HTTP, STACK_NATS), and against a second
# dispatch it starts here on the same Redis and NATS with TLS and API keys on:
#   Python: `pip install ./clients/python` into a fresh venv, then pytest clients/python/tests
#   TypeScript: tsc, then node's test runner on clients/typescript
#   Go: GOPATH build of clients/go and `go test`
#   dashboard: tools/dashboard-test in headless Chromium, on the stack and (keys on) the second
#     dispatch
# Usage: tools/with-stack.sh tools/test-clients.sh [python|typescript|go ...]
set -euo pipefail
cd "$(dirname "$0")/.."
: "${STACK_GRPC:?run through tools/with-stack.sh}"
bash tools/install-clients.sh

# A second dispatch on the stack's Redis and NATS with TLS and API keys on, for each client's
# token-and-CA test: STACK_TLS_GRPC, STACK_CA, STACK_TOKEN (producer), STACK_VIEWER_TOKEN.
bin=target/${PROFILE:-debug}
[ -x $bin/testpki ] || cargo build -q --bin testpki
secure=$(mktemp -d)
$bin/testpki "$secure" >/dev/null
STACK_TOKEN=$($bin/dispatch keys create --role producer --name clients --file "$secure/keys" 2>/dev/null)
STACK_VIEWER_TOKEN=$($bin/dispatch keys create --role viewer --name clients-viewer --file "$secure/keys" 2>/dev/null)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tls_grpc=$(free_port) tls_http=$(free_port)
$bin/dispatch --grpc-addr 127.0.0.1:$tls_grpc --http-addr 127.0.0.1:$tls_http \
  --redis-url "redis://127.0.0.1:${REDIS_PORT:?}" --nats-url "${STACK_NATS}" \
  --auth-keys "$secure/keys" --tls-cert "$secure/server.pem" --tls-key "$secure/server.key" \
  >"$secure/dispatch.log" 2>&1 &
secure_pid=$!
trap 'kill $secure_pid 2>/dev/null || true; wait $secure_pid 2>/dev/null || true; rm -rf "$secure"' EXIT
for _ in $(seq 1 300); do
  curl -sf --cacert "$secure/ca.pem" "https://127.0.0.1:$tls_http/api/openapi.json" >/dev/null && break
  kill -0 $secure_pid 2>/dev/null || { cat "$secure/dispatch.log"; echo "test-clients: the TLS dispatch did not start" >&2; exit 1; }
  sleep 0.1
done
export STACK_TLS_GRPC=127.0.0.1:$tls_grpc STACK_CA=$secure/ca.pem STACK_TOKEN STACK_VIEWER_TOKEN

echo "== TLS and keys: grpcurl -cacert and curl --cacert with a token; no token and plain text refused"
grpcurl=.tools/venv/bin/grpcurl
check() { if ! printf '%s' "$2" | grep -q -- "$3"; then echo "test-clients: $1: want '$3' in: $2" >&2; exit 1; fi; }
out=$($grpcurl -cacert "$STACK_CA" -H "authorization: Bearer $STACK_TOKEN" -d '{"queue":"default","type":"noop"}' \
  "$STACK_TLS_GRPC" dispatch.v1.JobService/CreateJob 2>&1 || true)
check "grpcurl -cacert with a token" "$out" '"id"'
out=$($grpcurl -cacert "$STACK_CA" -d '{"queue":"default","type":"noop"}' "$STACK_TLS_GRPC" \
  dispatch.v1.JobService/CreateJob 2>&1 || true)
check "grpcurl -cacert without a token" "$out" Unauthenticated
out=$(curl -s --cacert "$STACK_CA" -H "authorization: Bearer $STACK_TOKEN" "https://127.0.0.1:$tls_http/api/queues" || true)
check "curl --cacert with a token" "$out" queues
out=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$STACK_CA" "https://127.0.0.1:$tls_http/api/queues" || true)
check "curl --cacert without a token" "$out" 401
if $grpcurl -plaintext "$STACK_TLS_GRPC" list >/dev/null 2>&1; then echo "test-clients: plain-text gRPC was served" >&2; exit 1; fi
if curl -sf "http://127.0.0.1:$tls_http/api/queues" >/dev/null 2>&1; then echo "test-clients: plain HTTP was served" >&2; exit 1; fi

langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(python typescript go dashboard)

for lang in "${langs[@]}"; do
  case $lang in
    python)
      echo "== clients/python: pip install ./clients/python, pytest"
      venv=.tools/pyclient
      [ -x $venv/bin/python ] || python3 -m venv $venv
      $venv/bin/pip install -q --disable-pip-version-check --upgrade ./clients/python pytest==9.2.0
      (cd clients/python && "../../$venv/bin/python" -m pytest -q -p no:cacheprovider tests)
      ;;
    typescript)
      echo "== clients/typescript: tsc, node --test"
      (cd clients/typescript && npm run --silent build && node --test dist/test/)
      ;;
    go)
      echo "== clients/go: go vet, go test (GOPATH mode, Debian's Go packages)"
      gopath=$(mktemp -d)
      mkdir -p "$gopath/src/dispatch/clients"
      ln -s "$PWD/clients/go" "$gopath/src/dispatch/clients/go"
      rc=0
      (cd "$gopath/src/dispatch/clients/go" && export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" \
        && go vet ./... && go test -count=1 -v ./... 2>&1 | grep -E '^(=== RUN|--- |PASS|FAIL|ok|\s)' ; exit "${PIPESTATUS[0]}") || rc=$?
      rm -rf "$gopath"
      [ $rc = 0 ] || exit $rc
      ;;
    dashboard)
      echo "== dashboard: headless Chromium on the stack, then with keys on (screenshots in target/dashboard)"
      STACK_SECURE_HTTP=https://127.0.0.1:$tls_http node tools/dashboard-test/test.mjs
      ;;
    *) echo "test-clients: unknown language $lang" >&2; exit 2 ;;
  esac
done
