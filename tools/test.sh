#!/usr/bin/env bash
# The whole test suite: installs what it needs, then format, lint, proto lint, every Rust
# test (unit and integration on real redis-server and nats-server), and a smoke test of
# `make run` driven with grpcurl.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install.sh
echo "== cargo fmt --check"; cargo fmt --all -- --check
echo "== cargo clippy"; cargo clippy --all-targets -- -D warnings
echo "== buf lint"; .tools/node/node_modules/.bin/buf lint
echo "== cargo test"; cargo build --bins  # the chaos tests run the worker binary
cargo test --workspace
echo "== loadcheck (short: 1000 jobs, a worker killed every second, NATS restarted every 3 s)"
./target/debug/loadcheck --jobs 1000 --kill-every-ms 1000 --nats-restart-every-ms 3000
echo "== smoke (make run + grpcurl)"; tools/smoke.sh
