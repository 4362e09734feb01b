#!/usr/bin/env bash
# Installs what generating and testing the non-Rust clients needs, when missing:
#   grpcio-tools, pytest        (PyPI, into .tools/venv)
#   TypeScript toolchain        (npm ci in clients/typescript: protoc-gen-es, connect, tsc)
#   protoc, Go 1.19, protoc-gen-go, protoc-gen-go-grpc and the Go gRPC sources (Debian)
#   chromium (Debian) and playwright-core (npm) for the dashboard test
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

# Go in GOPATH mode from Debian's packaged sources (module mode cannot resolve offline).
# golang-github-golang-protobuf-1-5-dev: grpc-go's codec needs the APIv2-backed 1.5 shim; the
# 1.3 package apt may pick by default panics on APIv2 messages.
pkgs=()
for p in protobuf-compiler golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev \
  golang-google-protobuf-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || pkgs+=("$p")
done
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "install: ${pkgs[*]} (apt)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

# The dashboard's browser test: Debian's Chromium, driven by playwright-core (which never
# downloads a browser of its own here).
if [ ! -x /usr/bin/chromium ]; then
  echo "install: chromium (apt)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d tools/dashboard-test/node_modules/playwright-core ] \
  || [ tools/dashboard-test/package-lock.json -nt tools/dashboard-test/node_modules/.package-lock.json ]; then
  echo "install: playwright-core (npm ci in tools/dashboard-test)"
  (cd tools/dashboard-test && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent --no-audit --no-fund >/dev/null)
fi
