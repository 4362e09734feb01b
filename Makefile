# The two commands: `make run` (the whole system locally) and `make test` (every test).
.PHONY: run test install smoke bench

run:
	tools/run-local.sh

test:
	tools/test.sh

install:
	tools/install.sh

smoke:
	tools/smoke.sh

# Throughput, latency and memory on a stack the bench starts itself (docs/performance.md).
bench:
	tools/bench.sh $(ARGS)
