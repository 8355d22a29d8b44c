# GuideLLM in its own virtual environment, for benchmarks/load_gen.py only (the side-by-side comparison of load
# generators, docs/load.md "Side by side"): not part of `make test` or `make demo`, and kept out of .venv because it
# pulls its own dependency tree (transformers, pydantic-settings, httpx[http2], ...). Included by the top-level
# Makefile (`-include mk/*.mk`).
GUIDELLM_VENV := .venv-guidellm
GUIDELLM_PY := $(GUIDELLM_VENV)/bin/python
GUIDELLM_VERSION := 0.8.1
# guidellm requires torch (it never runs a model here: the simulator serves); the CPU build keeps the venv at ~1 GB
# instead of ~6 GB of CUDA libraries. torch==2.13.0+cpu is found through the machine's pip config (find-links
# /opt/wheels here and in CI); elsewhere add PyTorch's CPU index, as for vLLM:
#   make guidellm GUIDELLM_PIP_EXTRA='--extra-index-url https://download.pytorch.org/whl/cpu'
GUIDELLM_TORCH ?= torch==2.13.0+cpu
GUIDELLM_PIP_EXTRA ?=

.PHONY: guidellm guidellm-clean

guidellm: $(GUIDELLM_VENV)/.installed

# The stamp is written last, so a failed or interrupted install is redone by the next `make guidellm`.
$(GUIDELLM_VENV)/.installed: mk/guidellm.mk
	$(PYTHON) -m venv $(GUIDELLM_VENV)
	$(GUIDELLM_PY) -m pip install --quiet $(GUIDELLM_PIP_EXTRA) 'guidellm==$(GUIDELLM_VERSION)' '$(GUIDELLM_TORCH)' || { \
	  echo "make guidellm: pip could not install guidellm==$(GUIDELLM_VERSION) with $(GUIDELLM_TORCH); add" \
	    "GUIDELLM_PIP_EXTRA='--extra-index-url https://download.pytorch.org/whl/cpu'" >&2; exit 1; }
	$(GUIDELLM_PY) -c 'import guidellm, importlib.metadata as m; print("guidellm venv ok:", m.version("guidellm"))'
	@touch $@

guidellm-clean:
	rm -rf $(GUIDELLM_VENV)
