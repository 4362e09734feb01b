#!/usr/bin/env bash
# Tests the generated clients in other languages against the live stack that
# tools/with-stack.sh started (it sets STACK_GRPC, STACK_HTTP, STACK_NATS):
#   Python: `pip install ./clients/python` into a fresh venv, then pytest clients/python/tests
#   TypeScript: tsc, then node's test runner on clients/typescript
#   Go: GOPATH build of clients/go and `go test`
# Usage: tools/with-stack.sh tools/test-clients.sh [python|typescript|go ...]
set -euo pipefail
cd "$(dirname "$0")/.."
: "${STACK_GRPC:?run through tools/with-stack.sh}"
bash tools/install-clients.sh
langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(python typescript go)

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
    *) echo "test-clients: unknown language $lang" >&2; exit 2 ;;
  esac
done
