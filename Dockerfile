# Builds the binaries; the image runs dispatch by default, `worker` for workers, and has
# `dispatchctl` (docker compose exec dispatch dispatchctl queues list).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/dispatch /src/target/release/worker /src/target/release/dispatchctl /usr/local/bin/
COPY dispatch.sample.toml /etc/dispatch/dispatch.toml
EXPOSE 50051 8080 9091
# On 0.0.0.0 dispatch wants API keys (mount a keys file, DISPATCH_AUTH__KEYS_FILE=/path) or
# DISPATCH_AUTH__INSECURE=true on a private network; see docs/security.md.
CMD ["dispatch", "-c", "/etc/dispatch/dispatch.toml", "--grpc-addr", "0.0.0.0:50051", "--http-addr", "0.0.0.0:8080"]
