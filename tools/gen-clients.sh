#!/usr/bin/env bash
# Regenerates every checked-in artefact derived from proto/dispatch/v1:
#   clients/python/src/dispatch_client/v1/   (grpcio-tools: messages, .pyi type stubs, gRPC stubs)
#   clients/typescript/src/gen/              (buf + protoc-gen-es: messages and service descriptors)
#   clients/go/dispatchv1/                   (protoc + protoc-gen-go + protoc-gen-go-grpc)
#   docs/openapi.json                        (the REST gateway's OpenAPI document)
# The Rust client generates its code at build time (clients/rust/build.rs); nothing to check in.
#
#   tools/gen-clients.sh           regenerate in place
#   tools/gen-clients.sh --check   regenerate into a temporary copy and fail on any difference
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash tools/install.sh >/dev/null
bash tools/install-clients.sh >/dev/null

check=false
[ "${1:-}" = --check ] && check=true
if $check; then
  OUT=$(mktemp -d)
  trap 'rm -rf "$OUT"' EXIT
else
  OUT=$ROOT
fi
PROTOS=(dispatch/v1/job.proto dispatch/v1/job_service.proto dispatch/v1/worker_service.proto)

# Python: generate, then make the imports package-relative (dispatch.v1 -> dispatch_client.v1).
py=$OUT/clients/python/src/dispatch_client/v1
tmp=$(mktemp -d)
.tools/venv/bin/python -m grpc_tools.protoc -I proto --python_out="$tmp" --pyi_out="$tmp" "${PROTOS[@]}"
.tools/venv/bin/python -m grpc_tools.protoc -I proto --grpc_python_out="$tmp" \
  dispatch/v1/job_service.proto dispatch/v1/worker_service.proto
mkdir -p "$py"
find "$py" -name '*_pb2*.py*' -delete
for f in "$tmp"/dispatch/v1/*; do
  sed -e 's/^from dispatch\.v1 import /from dispatch_client.v1 import /' "$f" >"$py/$(basename "$f")"
done
rm -rf "$tmp"
printf '"""Generated from proto/dispatch/v1 by tools/gen-clients.sh. Do not edit."""\n' >"$py/__init__.py"

# TypeScript: buf generate with the local protoc-gen-es plugin.
ts=$OUT/clients/typescript/src/gen
rm -rf "$ts"
PATH="$ROOT/clients/typescript/node_modules/.bin:$PATH" \
  .tools/node/node_modules/.bin/buf generate proto --template clients/typescript/buf.gen.yaml -o "$OUT/clients/typescript"

# Go: Debian's protoc and plugins.
go=$OUT/clients/go/dispatchv1
mkdir -p "$go"
find "$go" -name '*.pb.go' -delete
protoc -I proto --go_out="$go" --go_opt=paths=source_relative \
  --go_opt=Mdispatch/v1/job.proto=dispatch/clients/go/dispatchv1 \
  --go_opt=Mdispatch/v1/job_service.proto=dispatch/clients/go/dispatchv1 \
  --go_opt=Mdispatch/v1/worker_service.proto=dispatch/clients/go/dispatchv1 \
  --go-grpc_out="$go" --go-grpc_opt=paths=source_relative \
  --go-grpc_opt=Mdispatch/v1/job.proto=dispatch/clients/go/dispatchv1 \
  --go-grpc_opt=Mdispatch/v1/job_service.proto=dispatch/clients/go/dispatchv1 \
  --go-grpc_opt=Mdispatch/v1/worker_service.proto=dispatch/clients/go/dispatchv1 \
  "${PROTOS[@]}"
mv "$go"/dispatch/v1/*.go "$go"/ && rm -rf "$go/dispatch"

# OpenAPI, from the same build-time generator the gateway serves.
mkdir -p "$OUT/docs"
cargo run -q -p dispatch -- --print-openapi >"$OUT/docs/openapi.json"

if $check; then
  status=0
  for d in clients/python/src/dispatch_client/v1 clients/typescript/src/gen clients/go/dispatchv1; do
    diff -r "$d" "$OUT/$d" >/dev/null || { echo "gen-clients: $d differs from what the proto produces"; diff -r "$d" "$OUT/$d" | head -20 || true; status=1; }
  done
  cmp -s docs/openapi.json "$OUT/docs/openapi.json" || { echo "gen-clients: docs/openapi.json is stale"; status=1; }
  [ $status = 0 ] || { echo "gen-clients: run tools/gen-clients.sh and commit the result"; exit 1; }
  echo "gen-clients: generated code matches the proto"
fi
