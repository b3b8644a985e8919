# Everyday commands. Each target sets up what it needs on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
N      ?= 1000000

.PHONY: help setup demo test lint format live bench soak lab broker-up broker-down broker-status \
        cluster cluster-down clean

help:
	@echo "make demo     run the papermill pipeline (notebooks 01-04) on a local Kafka"
	@echo "make test     lint + all tests (unit, integration on a real broker, nbval, browser)"
	@echo "make live     stream continuously; API on :8080, Voila on :8866 (Ctrl-C stops all)"
	@echo "make bench    benchmark the whole path (N=$(N) ticks)"
	@echo "make soak     N ticks through the real consumer process, its memory reported"
	@echo "make lab      open the notebooks in JupyterLab"
	@echo "make broker-up|broker-down|broker-status   the local Kafka broker"
	@echo "make cluster  a local 3-node Kafka cluster (ports 9092-9094); make cluster-down stops it"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/marketstream pipeline

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

live: setup
	$(BIN)/marketstream live

bench: setup
	$(BIN)/marketstream bench -n $(N)

soak: setup
	$(BIN)/marketstream soak -n $(N)

lab: setup
	$(BIN)/jupyter lab notebooks/

broker-up: setup
	$(BIN)/marketstream broker up

broker-down: setup
	$(BIN)/marketstream broker down

broker-status: setup
	$(BIN)/marketstream broker status

cluster: setup
	$(BIN)/marketstream broker up --nodes 3

cluster-down: setup
	$(BIN)/marketstream broker down

clean:
	-$(BIN)/marketstream broker down
	rm -rf output data/*.duckdb data/*.duckdb.wal data/*.csv logs
