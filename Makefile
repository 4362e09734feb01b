# The two commands: `make run` (the whole system locally) and `make test` (every test).
.PHONY: run test install smoke

run:
	tools/run-local.sh

test:
	tools/test.sh

install:
	tools/install.sh

smoke:
	tools/smoke.sh
