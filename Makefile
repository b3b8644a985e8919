# Everyday commands. Each target sets up what it needs on a fresh clone.
# `make help` lists them: the text after `##` on a target's line (tests/unit/test_makefile.py
# checks that every .PHONY target has one).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
N      ?= 1000000
# What `make setup` installs, and so every target: the kit and the extras the two commands
# need. make demo's pipeline needs the kit alone, but make test (and pytest --nbval
# notebooks/ after a demo) needs the test tools (dev), the API and Voila (the live page),
# and DuckLake (the lake's tests, notebook 07): 53 s and a 1.1 GB .venv on a fresh clone,
# against 25 s and 650 MB for the kit alone (docs/benchmarks.md#the-two-commands).
# JupyterLab comes on demand, with make lab.
EXTRAS ?= dev,api,voila,lake
LAB_EXTRAS := $(EXTRAS),lab

# Relative paths (data/, logs/, output/, .cache/kafka) and .env are taken from here, whatever
# folder a command or a notebook kernel runs in (see README: Configuration).
export MARKETSTREAM_HOME ?= $(CURDIR)

.PHONY: help setup demo test lint format live bench soak lab broker-up broker-down broker-status \
        cluster cluster-down pictures clean distclean

help: ## list the targets
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## / { printf "make %-14s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

setup: $(VENV)/.extras-$(EXTRAS) ## create .venv: the kit and the extras dev,api,voila,lake (EXTRAS=...)

# The kit alone; pyproject.toml changing installs it again.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The kit with extras, e.g. .venv/.extras-dev,api,voila,lake (again after the kit is).
$(VENV)/.extras-%: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[$*]"
	touch $@

demo: setup ## run the papermill pipeline (notebooks 01-04) on a local Kafka
	$(BIN)/marketstream pipeline

test: setup ## lint + all tests (unit, integration on a real broker, nbval, browser)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: setup ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## ruff format, then ruff check --fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

live: setup ## stream continuously; API on :8080, Voila on :8866 (Ctrl-C stops all)
	$(BIN)/marketstream live

bench: setup ## benchmark the whole path (N=1000000 ticks; make bench N=200000 for less)
	$(BIN)/marketstream bench -n $(N)

soak: setup ## N ticks through the real consumer process, its memory reported
	$(BIN)/marketstream soak -n $(N)

lab: $(VENV)/.extras-$(LAB_EXTRAS) ## open the notebooks in JupyterLab (installs it on first use)
	$(BIN)/jupyter lab notebooks/

broker-up: setup ## start the local Kafka broker
	$(BIN)/marketstream broker up

broker-down: setup ## stop it (and a local cluster)
	$(BIN)/marketstream broker down

broker-status: setup ## report the local broker or cluster
	$(BIN)/marketstream broker status

cluster: setup ## a local 3-node Kafka cluster (ports 9092-9094)
	$(BIN)/marketstream broker up --nodes 3

cluster-down: setup ## stop the local cluster
	$(BIN)/marketstream broker down

# The README's pictures (docs/images/) from a fresh demo run: its own temporary broker, stores
# and topics, headless Chromium; the Grafana ones are renders of the dashboard JSON
# (tools/pictures.py says how each is made). ~1.5 minutes.
pictures: setup ## regenerate the README's pictures in docs/images/ from a fresh demo run
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
