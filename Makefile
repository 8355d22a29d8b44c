# The README's two commands: `make demo` and `make test`. Each installs what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT := out

.PHONY: demo test test-fast install schema lint clean

# mk/*.mk: vllm (the engine venv), stack, monitoring, browser, k8s, and guidellm (`make guidellm`: GuideLLM 0.8.1 in
# .venv-guidellm, only for benchmarks/load_gen.py's side-by-side comparison; neither test nor demo needs it).
-include mk/*.mk

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# The main job: run the engine-hang game day (its own simulator lab on 127.0.0.1, ~20 s); start the reference stack
# (ENGINE=vllm: two real vLLM CPU replicas, ~2 min to start on 2 cores; ENGINE=sim: the vLLM-exact simulator, the
# quick path) behind HAProxy, Prometheus and Alertmanager; replay bounded load through its gateway; and grade the
# reference deployment with the load, the drill's journal and the live Prometheus as evidence, in every report
# format; then the nine examples as a fleet and the capacity plan. The stack is always taken down again.
# A not_ready verdict or a failed drill (exit 1) is a result, not a build failure; bad input (exit 2) is.
ENGINE ?= vllm
DEMO_STATE := .forge/demo-stack
DEMO_MODEL := .forge/models/tiny-llama
DEMO_EVIDENCE := --load-results $(OUT)/load-results.jsonl --chaos-journal $(OUT)/chaos-engine-hang.json
DEMO_DEPS := install stack-deps $(if $(filter vllm,$(ENGINE)),vllm)
demo: $(DEMO_DEPS)
	@case "$(ENGINE)" in vllm|sim) ;; *) echo "make demo: ENGINE=$(ENGINE) — use vllm or sim" >&2; exit 2;; esac
	@mkdir -p $(OUT)
	@if [ "$(ENGINE)" = vllm ] && [ ! -f $(DEMO_MODEL)/config.json ]; then $(MAKE) --no-print-directory vllm-model; fi
	@echo "game day: engine-hang (a replica's generation frozen under load; the progress watchdog must catch it) ..."
	@$(BIN)/forge chaos run engine-hang --journal $(OUT)/chaos-engine-hang.json > $(OUT)/chaos-engine-hang.log 2>&1; \
	  rc=$$?; tail -n 2 $(OUT)/chaos-engine-hang.log; [ $$rc -le 1 ] || exit $$rc
	@trap '$(BIN)/forge stack down --state-dir $(DEMO_STATE) >/dev/null 2>&1' EXIT; \
	  $(BIN)/forge stack up --engine $(ENGINE) --replicas 2 --supervise --stall-seconds 30 --state-dir $(DEMO_STATE) || exit 2; \
	  ports=$$($(BIN)/forge stack status --state-dir $(DEMO_STATE) --format json \
	    | $(BIN)/python -c 'import json,sys; p=json.load(sys.stdin)["plan"]["ports"]; print(p["gateway"], p["prometheus"])'); \
	  gateway=http://127.0.0.1:$${ports% *}; prometheus=http://127.0.0.1:$${ports#* }; \
	  echo "replaying 20 s of load at the declared p95 rate (5 req/s) through $$gateway ..."; \
	  $(BIN)/forge load run --target $$gateway --deploy reference-stack/deploy.yaml --rate 5 --duration 20 \
	    --shared-prefix-tokens 32 --prefix-groups 2 --out $(OUT)/load-results.jsonl --summary-json $(OUT)/load-summary.json --no-progress >/dev/null; \
	  rc=$$?; [ $$rc -le 1 ] || exit $$rc; \
	  $(BIN)/forge readiness assess reference-stack/deploy.yaml $(DEMO_EVIDENCE) --prometheus $$prometheus; \
	  rc=$$?; [ $$rc -le 1 ] || exit $$rc; \
	  for fmt in html json sarif junit markdown; do \
	    ext=$$fmt; [ $$fmt = markdown ] && ext=md; [ $$fmt = junit ] && ext=xml; \
	    $(BIN)/forge readiness assess reference-stack/deploy.yaml $(DEMO_EVIDENCE) --prometheus $$prometheus \
	      --format $$fmt --output $(OUT)/readiness.$$ext; \
	    rc=$$?; [ $$rc -le 1 ] || exit $$rc; \
	  done
	@$(BIN)/forge readiness assess readiness/examples --format html --output $(OUT)/fleet.html; \
	  rc=$$?; [ $$rc -le 1 ] || exit $$rc
	@$(BIN)/forge capacity plan reference-stack/deploy.yaml --format json > $(OUT)/capacity.json
	@echo "Reports written to $(OUT)/ — open $(OUT)/readiness.html (the reference stack on $(ENGINE), graded with the" \
	  "load it just served, its live Prometheus and the engine-hang drill's journal as evidence) and $(OUT)/fleet.html" \
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
