# Alert rules: promtool for their tests, and regeneration of the committed rule files. Included by the
# top-level Makefile (`-include mk/*.mk`).

# promtool comes from Debian's `prometheus` package (tests/test_alerts_promtool.py runs `promtool check rules`
# and `promtool test rules`). Installed only when promtool is missing, so a machine with its own Prometheus
# keeps it; the stamp is written last, so an interrupted install is retried by the next make.
PROMTOOL_STAMP := .forge/stamps/apt-prometheus
# apt-get needs root: CI containers run as root, elsewhere go through sudo.
APT_AS_ROOT := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: promtool alerts-build alerts-test

promtool: $(PROMTOOL_STAMP)

$(PROMTOOL_STAMP): mk/monitoring.mk
	@mkdir -p $(dir $@)
	@if command -v promtool >/dev/null 2>&1; then \
	  echo "promtool present: $$(command -v promtool)"; \
	else \
	  $(APT_AS_ROOT) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(APT_AS_ROOT) apt-get install -y --no-install-recommends prometheus; \
	fi
	promtool --version | head -1
	@touch $@

# Regenerate alerts/forge-rules.yaml (generic SLOs) and alerts/reference-stack-rules.yaml (the reference stack's
# deploy.yaml); a test fails while either differs from a fresh generation. Same as `forge alerts build`.
alerts-build: install
	$(BIN)/python -m forge.alerts.cli build --out alerts/
	$(BIN)/python -m forge.alerts.cli build --deploy reference-stack/deploy.yaml --out alerts/

alerts-test: install $(PROMTOOL_STAMP)
	promtool check rules alerts/forge-rules.yaml alerts/reference-stack-rules.yaml
	cd alerts/tests && promtool test rules *.test.yaml
	$(BIN)/pytest -q tests/test_alerts.py tests/test_alerts_promtool.py

TEST_DEPS += $(PROMTOOL_STAMP)
