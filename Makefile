# The README's two commands: `make demo` and `make test`. Each installs what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT := out

.PHONY: demo test test-fast install schema lint clean

-include mk/*.mk

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# Grade the reference deployment and write every report format; the verdict itself is not a build failure
# (exit 1 = not ready), bad input (exit 2) is.
demo: install
	@mkdir -p $(OUT)
	@$(BIN)/forge readiness assess reference-stack/deploy.yaml; rc=$$?; [ $$rc -le 1 ] || exit $$rc
	@for fmt in html json sarif junit markdown; do \
	  ext=$$fmt; [ $$fmt = markdown ] && ext=md; [ $$fmt = junit ] && ext=xml; \
	  $(BIN)/forge readiness assess reference-stack/deploy.yaml --format $$fmt --output $(OUT)/readiness.$$ext; \
	  rc=$$?; [ $$rc -le 1 ] || exit $$rc; \
	done
	@$(BIN)/forge readiness assess readiness/examples --format html --output $(OUT)/fleet.html; \
	  rc=$$?; [ $$rc -le 1 ] || exit $$rc
	@$(BIN)/forge capacity plan reference-stack/deploy.yaml --format json > $(OUT)/capacity.json
	@echo "Reports written to $(OUT)/ — open $(OUT)/readiness.html (reference stack) and $(OUT)/fleet.html" \
	  "(the nine examples) in a browser."

# Tests marked `gpu` need an NVIDIA GPU: they run on the device machine (docs/exporter.md), not here.
test: install $(TEST_DEPS)
	$(BIN)/pytest -q -m "not gpu" $(PYTEST_ARGS)

# Everything but the tests that start real engines (for a quick local loop).
test-fast: install
	$(BIN)/pytest -q -m "not vllm and not gpu and not stack" $(PYTEST_ARGS)

schema: install
	$(BIN)/forge readiness schema --output readiness/deploy.schema.json

clean:
	rm -rf $(OUT) .pytest_cache
