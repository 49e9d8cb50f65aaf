# The task runner. The README names these targets; each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
RUN := .run
export STREAMGUARD_HASH_KEY ?= $(shell mkdir -p $(RUN) && { test -s $(RUN)/hash_key || $(PYTHON) -c 'import secrets; print(secrets.token_hex(32))' > $(RUN)/hash_key; } && cat $(RUN)/hash_key)

.PHONY: up down demo test faults lint schemas bench worker status

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

## up: venv with the package, a local Kafka broker, the topics (idempotent)
up: $(VENV)/.installed
	deploy/kafka/kafka.sh start
	$(VENV)/bin/streamguard topics create

## worker: start one worker in the background (make worker N=2 for another)
worker: up
	deploy/worker.sh start $(or $(N),1)

## demo: everything up, a worker, and a minute of labelled traffic with a live summary
demo: worker
	$(VENV)/bin/streamguard demo --rate 500 --seconds 60

## down: stop the workers and the broker that make started (by recorded PID)
down:
	deploy/worker.sh stop
	deploy/kafka/kafka.sh stop

status:
	deploy/worker.sh status
	deploy/kafka/kafka.sh status || true

## test: unit tests, then integration tests against a real broker the tests start themselves
test: $(VENV)/.installed
	$(VENV)/bin/pytest

## faults: the whole fault matrix (tests/faults), long scenarios included, each checked by `streamguard verify` (under an hour)
faults: $(VENV)/.installed
	$(VENV)/bin/pytest tests/faults tests/integration/test_cluster.py -m 'integration or long_fault' -v

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check streamguard tests
	$(VENV)/bin/ruff format --check streamguard tests
	$(VENV)/bin/mypy

## bench: one worker against raw Kafka, Quix Streams and Kafka Streams on the local broker (a few minutes; Java 17 and Maven build the Kafka Streams peer once); .run/bench/report.json
bench: up
	$(VENV)/bin/streamguard bench

schemas: $(VENV)/.installed
	$(VENV)/bin/streamguard schemas
