# The two commands a new user needs: `make demo` and `make test`. Both bootstrap .venv.
PY := .venv/bin/python

.PHONY: demo test lint format bootstrap bench

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(PY) examples/demo.py

test: bootstrap
	$(PY) -m ruff check src tests examples benchmarks
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: bootstrap
	$(PY) -m ruff check src tests examples benchmarks
	$(PY) -m ruff format --check src tests examples benchmarks

format: bootstrap
	$(PY) -m ruff format src tests examples benchmarks
	$(PY) -m ruff check --fix src tests examples benchmarks

bench: bootstrap
	$(PY) benchmarks/server_throughput.py

bench-peers: bootstrap
	$(PY) benchmarks/bench_peers.py $(BENCH_ARGS)
