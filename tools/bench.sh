#!/usr/bin/env bash
# make bench: installs what is missing, builds the release binaries, then runs tools/bench
# (target/release/bench) against a stack it starts itself: redis-server (no persistence, as
# the peers were measured), nats-server with JetStream file storage, dispatch, and one worker
# process with the built-in handlers. Extra arguments go to the bench, e.g.
#   make bench ARGS="--jobs 50000"      tools/bench.sh --help
# Against a running stack: tools/bench.sh --grpc-url http://127.0.0.1:50051 \
#   --nats-url nats://127.0.0.1:4222 --redis-url redis://127.0.0.1:6379 --queue default
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install.sh
cargo build --release --bins
exec ./target/release/bench "$@"
