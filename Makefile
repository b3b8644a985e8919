# Everyday commands. Each target sets up what it needs on a fresh clone.
# `make help` lists them: the text after `##` on a target's line (tests/unit/test_makefile.py
# checks that every .PHONY target has one).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
N      ?= 1000000
# `make setup` installs the kit and every extra: the API and the Voila page (make live),
# JupyterLab (make lab), the test tools (make test), DuckLake (MARKET_STORE=ducklake).
EXTRAS ?= dev,api,voila,lab,lake
# Each target installs only what it runs, on first use: the kit alone for the demo
# (pip install -e ., 25 s and 650 MB here), the extras a target needs on top of it
# (all of them: 28 s and 450 MB more; docs/benchmarks.md#the-two-commands). A command run
# outside make that needs a missing extra names it (marketstream.cli.require_extra).
LIVE_EXTRAS  := api,voila
LAB_EXTRAS   := lab,lake
TEST_EXTRAS  := dev,api,voila,lake
BENCH_EXTRAS := api,lake

# Relative paths (data/, logs/, output/, .cache/kafka) and .env are taken from here, whatever
# folder a command or a notebook kernel runs in (see README: Configuration).
export MARKETSTREAM_HOME ?= $(CURDIR)

.PHONY: help setup demo test lint format live bench soak lab broker-up broker-down broker-status \
        cluster cluster-down pictures clean distclean

help: ## list the targets
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## / { printf "make %-14s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

setup: $(VENV)/.extras-$(EXTRAS) ## create .venv: the kit and its extras dev,api,voila,lab,lake (EXTRAS=...)

# The kit alone (all that make demo needs); pyproject.toml changing installs it again.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The kit with extras, e.g. .venv/.extras-api,voila (installed again after the kit is).
$(VENV)/.extras-%: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[$*]"
	touch $@

demo: $(VENV)/.installed ## run the papermill pipeline (notebooks 01-04) on a local Kafka
	$(BIN)/marketstream pipeline

test: $(VENV)/.extras-$(TEST_EXTRAS) ## lint + all tests (unit, integration on a real broker, nbval, browser)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(VENV)/.extras-$(TEST_EXTRAS) ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.extras-$(TEST_EXTRAS) ## ruff format, then ruff check --fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

live: $(VENV)/.extras-$(LIVE_EXTRAS) ## stream continuously; API on :8080, Voila on :8866 (Ctrl-C stops all)
	$(BIN)/marketstream live

bench: $(VENV)/.extras-$(BENCH_EXTRAS) ## benchmark the whole path (N=1000000 ticks; make bench N=200000 for less)
	$(BIN)/marketstream bench -n $(N)

soak: $(VENV)/.installed ## N ticks through the real consumer process, its memory reported
	$(BIN)/marketstream soak -n $(N)

lab: $(VENV)/.extras-$(LAB_EXTRAS) ## open the notebooks in JupyterLab
	$(BIN)/jupyter lab notebooks/

broker-up: $(VENV)/.installed ## start the local Kafka broker
	$(BIN)/marketstream broker up

broker-down: $(VENV)/.installed ## stop it (and a local cluster)
	$(BIN)/marketstream broker down

broker-status: $(VENV)/.installed ## report the local broker or cluster
	$(BIN)/marketstream broker status

cluster: $(VENV)/.installed ## a local 3-node Kafka cluster (ports 9092-9094)
	$(BIN)/marketstream broker up --nodes 3

cluster-down: $(VENV)/.installed ## stop the local cluster
	$(BIN)/marketstream broker down

# The README's pictures (docs/images/) from a fresh demo run: its own temporary broker, stores
# and topics, headless Chromium; the Grafana ones are renders of the dashboard JSON
# (tools/pictures.py says how each is made). ~1.5 minutes.
pictures: $(VENV)/.extras-$(TEST_EXTRAS) ## regenerate the README's pictures in docs/images/ from a fresh demo run
	$(BIN)/python tools/pictures.py

# What the kit made while running: stop a local broker and PostgreSQL, then delete its outputs
# (the lake's Parquet files and its catalog, the kit's PostgreSQL data, go together).
CLEAN := output logs data/*.duckdb data/*.duckdb.wal data/*.csv data/lake .cache/postgres \
         .cache/objectstore/data \
         bench/latest.json bench/latest.html bench/profile* test-artifacts .pytest_cache
# What it fetched or keeps between runs: the Kafka jars and the local brokers' data
# (MARKETSTREAM_KAFKA_HOME's default), DuckDB's extensions (copied from their wheels), the
# wheel test's downloaded wheels.
DISTCLEAN := .cache/kafka .cache/wheels .cache/duckdb-extensions .cache/objectstore

clean: ## stop the local broker, PostgreSQL and object store; delete data/ (and the lake), logs/, output/, bench results
	-@if [ -x $(BIN)/marketstream ]; then $(BIN)/marketstream broker down; fi
	-@if [ -x $(BIN)/marketstream ]; then $(BIN)/marketstream postgres down; fi
	-@if [ -x $(BIN)/marketstream ]; then $(BIN)/marketstream objectstore down; fi
	rm -rf $(CLEAN)

distclean: clean ## also delete the Kafka jars, the local brokers' data, DuckDB extensions, cached wheels
	@echo "deleting $(DISTCLEAN) (the Kafka jars are fetched again on the next run, ~45 MB)"
	rm -rf $(DISTCLEAN)
