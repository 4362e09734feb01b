#!/usr/bin/env bash
# make bench: installs what is missing, builds the release binaries, then runs tools/bench
# (target/release/bench) against a stack it starts itself: redis-server (no persistence, as
# the peers were measured), nats-server with JetStream file storage, dispatch, and one worker
# process with the built-in handlers. Extra arguments go to the bench, e.g.
#   make bench ARGS="--jobs 50000"      tools/bench.sh --help
# Against a running stack: tools/bench.sh --grpc-url http://127.0.0.1:50051 \
#   --nats-url nats://127.0.0.1:4222 --redis-url redis://127.0.0.1:6379 --queue default
# Against another commit, alternating (see docs/performance.md):
#   tools/bench.sh --baseline-rev c72fec4 [bench flags]
# builds that commit's release binaries once (a git worktree in target/baseline/src, its own
# target dir target/baseline/target; binaries copied to target/baseline/<rev>) and passes
# --baseline with them.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install.sh
cargo build --release --bins
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --baseline-rev) rev=$(git rev-parse --short "$2"); shift 2 ;;
    --baseline-rev=*) rev=$(git rev-parse --short "${1#*=}"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -n "${rev:-}" ]; then
  out=target/baseline/$rev
  if [ ! -x "$out/bench" ]; then
    echo "bench: building $rev for the baseline (once; kept in $out)"
    rm -rf target/baseline/src
    git worktree prune
    git worktree add -f --detach target/baseline/src "$rev" >/dev/null
    (cd target/baseline/src && CARGO_TARGET_DIR=../target cargo build --release --bins)
    mkdir -p "$out"
    cp target/baseline/target/release/{bench,dispatch,worker} "$out/"
    git worktree remove --force target/baseline/src
  fi
  args+=(--baseline "$out")
fi
exec ./target/release/bench "${args[@]}"
