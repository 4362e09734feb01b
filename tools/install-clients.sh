#!/usr/bin/env bash
# Installs what generating and testing the non-Rust clients needs, when missing:
#   grpcio-tools, pytest        (PyPI, into .tools/venv)
#   TypeScript toolchain        (npm ci in clients/typescript: protoc-gen-es, connect, tsc)
#   protoc, Go 1.19, protoc-gen-go, protoc-gen-go-grpc and the Go gRPC sources (Debian)
# Idempotent; called by tools/gen-clients.sh and tools/test-clients.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh >/dev/null

GRPCIO_TOOLS_VERSION=1.85.1
PYTEST_VERSION=9.2.0
sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! .tools/venv/bin/python -c 'import grpc_tools, pytest' 2>/dev/null; then
  echo "install: grpcio-tools, pytest (PyPI, .tools/venv)"
  .tools/venv/bin/pip install -q --disable-pip-version-check \
    "grpcio-tools==${GRPCIO_TOOLS_VERSION}" "pytest==${PYTEST_VERSION}"
fi

if [ ! -x clients/typescript/node_modules/.bin/protoc-gen-es ] \
  || [ clients/typescript/package-lock.json -nt clients/typescript/node_modules/.package-lock.json ]; then
  echo "install: TypeScript client dependencies (npm ci)"
  (cd clients/typescript && npm ci --silent --no-audit --no-fund >/dev/null)
fi

pkgs=()
command -v protoc >/dev/null 2>&1 || pkgs+=(protobuf-compiler)
command -v go >/dev/null 2>&1 || pkgs+=(golang-go)
command -v protoc-gen-go >/dev/null 2>&1 || pkgs+=(protoc-gen-go)
command -v protoc-gen-go-grpc >/dev/null 2>&1 || pkgs+=(protoc-gen-go-grpc)
[ -d /usr/share/gocode/src/google.golang.org/grpc ] || pkgs+=(golang-google-grpc-dev)
[ -d /usr/share/gocode/src/google.golang.org/protobuf ] || pkgs+=(golang-google-protobuf-dev)
[ -d /usr/share/gocode/src/google.golang.org/genproto/googleapis/api/annotations ] || pkgs+=(golang-google-genproto-dev)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "install: ${pkgs[*]} (apt)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
