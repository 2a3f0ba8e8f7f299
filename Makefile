# Two commands for a newcomer: `make run` and `make test`. Everything else is here too.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LISTEN ?= 127.0.0.1:50051
METRICS_LISTEN ?= 127.0.0.1:9464
CATALOG ?= catalog/catalog.json

.PHONY: venv proto proto-check run test lint bench soak faults fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Install the package (editable) with its test and benchmark extras.
venv: $(BIN)/.installed
$(BIN)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

# Regenerate cds/v1/*_pb2*.py from protos/ (grpcio-tools is pinned in pyproject).
proto: venv
	$(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=. --pyi_out=. --grpc_python_out=. protos/cds/v1/*.proto

# Fails if the committed generated code is not what protos/ produces.
proto-check: proto
	git diff --exit-code -- cds/v1

run: venv proto
	$(BIN)/cds serve --catalog $(CATALOG) --listen $(LISTEN) --metrics-listen $(METRICS_LISTEN)

test: venv proto
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Every benchmark in one run (< 10 min on 2 cores) -> benchmarks/results/. See
# benchmarks/README.md; e.g. make bench BENCH_ARGS="--only engine,empty --profile".
BENCH_ARGS ?=
bench: venv proto
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# Minutes of steady load on a preloaded server: per minute RSS, threads, open files,
# p50/p99 and errors -> benchmarks/results/soak.{json,png}, SOAK.md. Not in `make test`.
# e.g. make soak SOAK_SECONDS=900 SOAK_ARGS="--store redis --workers 2"
SOAK_SECONDS ?= 300
SOAK_ARGS ?=
soak: venv proto
	$(BIN)/python -m benchmarks.soak --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

# Faults under steady load (Redis kill -9/SIGSTOP, a worker killed, reloads, SIGTERM),
# each with the calls that failed -> benchmarks/results/FAULTS.md, faults.json (~6 min).
# e.g. make faults FAULTS_ARGS="--only redis-freeze,sigterm". Not in `make test`.
FAULTS_ARGS ?=
faults: venv proto
	$(BIN)/python -m benchmarks.faults $(FAULTS_ARGS)

# Every RPC fuzzed (hypothesis: random, mutated and truncated bodies) against one real
# server for FUZZ_SECONDS, then the calls made and the count per status code. A failure
# is kept in .hypothesis/fuzz/ and replayed first next time. `make test` runs a fixed slice.
# FUZZ_STORE=redis: results in a redis-server of its own (needs redis-server on PATH).
FUZZ_SECONDS ?= 300
FUZZ_STORE ?= memory
fuzz: venv proto
	CDS_FUZZ_SECONDS=$(FUZZ_SECONDS) CDS_FUZZ_STORE=$(FUZZ_STORE) $(BIN)/python -m pytest -q -s \
		tests/test_fuzz_rpcs.py::test_fuzz_campaign

clean:
	rm -rf $(VENV) .pytest_cache
