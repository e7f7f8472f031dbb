# Two commands: `make run` (server on the embedded database) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench install

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) sh scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/fhir-server serve

test: $(STAMP)
	$(BIN)/ruff check fhir_server tests bench scripts
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check fhir_server tests bench scripts

bench: $(STAMP)
	$(BIN)/python bench/bench_rest.py
