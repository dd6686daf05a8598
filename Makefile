# The two commands a new user needs: `make demo` and `make test`. Both bootstrap .venv.
PY := .venv/bin/python
# Test processes: twice the cores, at most 8 (end-to-end tests spend much of their time waiting
# on the processes they start: on 2 cores, 4 processes ran the suite in 4m23s, 3 in 5m06s).
# Modules stay whole on one process (--dist loadscope), so a module's shared control plane,
# service or Ray cluster starts once.
TEST_WORKERS ?= $(shell n=$$(( $$(nproc) * 2 )); [ $$n -gt 8 ] && n=8; echo $$n)
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

.PHONY: demo test test-fast lint format bootstrap bench bench-peers

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(PY) examples/demo.py

test: bootstrap
	$(PY) -m ruff check src tests examples benchmarks
	$(PYTEST) $(PYTEST_ARGS)

# The unit tier: everything that runs in this process (no daemon, server, cluster or build).
test-fast: bootstrap
	$(PYTEST) -m "not e2e" $(PYTEST_ARGS)

# Style, types (mypy on src/; see [tool.mypy] for the modules still to be typed) and the
# layering contracts of .importlinter (the server and the model handlers import no
# control-plane package; the catalog imports nothing above it).
lint: bootstrap
	$(PY) -m ruff check src tests examples benchmarks
	$(PY) -m ruff format --check src tests examples benchmarks
	$(PY) -m mypy
	.venv/bin/lint-imports

format: bootstrap
	$(PY) -m ruff format src tests examples benchmarks
	$(PY) -m ruff check --fix src tests examples benchmarks

bench: bootstrap
	$(PY) benchmarks/server_throughput.py

bench-peers: bootstrap
	$(PY) benchmarks/bench_peers.py $(BENCH_ARGS)
