#!/usr/bin/env bash
# The whole test suite: installs what it needs, then format, lint, proto lint and breaking-change
# check, the drift check of the generated clients, every Rust test (unit and integration on real
# redis-server and nats-server; lifecycle and protocol again on a Redis Cluster, and against
# Redis and NATS that demand passwords and TLS), a short
# loadcheck on one Redis and on a cluster, a smoke run of the benchmark, `make run`'s
# supervision (tools/run-check.sh), and on one
# `make run` stack: the smoke test (grpcurl, the docs' curl examples, schemathesis), the
# Python, TypeScript and Go clients' tests, and the dashboard driven in headless Chromium
# (screenshots in target/dashboard).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install.sh
tools/install-clients.sh
echo "== cargo fmt --check"; cargo fmt --all -- --check
echo "== cargo clippy"; cargo clippy --all-targets -- -D warnings
echo "== buf lint"; .tools/node/node_modules/.bin/buf lint
echo "== buf breaking (against main)"; .tools/node/node_modules/.bin/buf breaking --against '.git#branch=main'
echo "== cargo test"; cargo build --bins  # the chaos tests run the worker binary
cargo test --workspace
echo "== lifecycle and protocol suites on a 3-master Redis Cluster"
DISPATCH_TEST_REDIS=cluster cargo test -p dispatch --test lifecycle --test protocol
echo "== lifecycle and protocol suites against Redis over TLS with an ACL user and NATS over TLS with a user and password"
DISPATCH_TEST_SECURE=1 cargo test -p dispatch --test lifecycle --test protocol
echo "== loadcheck (short: 1000 jobs, a worker killed every second, NATS restarted every 3 s)"
./target/debug/loadcheck --jobs 1000 --kill-every-ms 1000 --nats-restart-every-ms 3000
echo "== loadcheck on a 3-master Redis Cluster (1000 jobs, a worker killed every second)"
DISPATCH_TEST_REDIS=cluster ./target/debug/loadcheck --jobs 1000 --kill-every-ms 1000
echo "== bench smoke (2,000 jobs batched, 500 singly, 2 s at 200/s, memory: every job must succeed; no timing asserted)"
./target/debug/bench --runs 1 --jobs 2000 --single-jobs 500 --latency-s 2 --rate 200 --mem-jobs 1000 --timeout-s 120
echo "== bench smoke with keys and TLS everywhere (--secure; every job must succeed)"
./target/debug/bench --runs 1 --secure --jobs 1000 --single-jobs 200 --latency-s 1 --rate 200 --warmup 100 --timeout-s 120
echo "== make run: a killed worker restarts, stopping is ordered and loses no finished job, a dead dispatch stops the stack"
tools/run-check.sh
echo "== generated clients match the proto"; tools/gen-clients.sh --check
echo "== on a make-run stack: smoke (grpcurl, curl examples, schemathesis), the clients, the dashboard in headless Chromium"
tools/with-stack.sh bash -c 'tools/smoke.sh && tools/test-clients.sh'
