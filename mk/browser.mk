# Headless Chromium for the HTML report's screenshot test (tests/test_report_screenshot.py) and `make screenshot`
# (docs/img/report.png in the README). Included by the top-level Makefile (`-include mk/*.mk`).
# Debian's `chromium` package; installed only when no chromium is on PATH, so a machine with its own keeps it. The
# stamp is written last, so an interrupted install is retried by the next make.
BROWSER_STAMP := .forge/stamps/apt-chromium
# Same value as mk/monitoring.mk (which sets it when it is read first); here for when it is not.
APT_AS_ROOT ?= $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: browser screenshot

browser: $(BROWSER_STAMP)

$(BROWSER_STAMP): mk/browser.mk
	@mkdir -p $(dir $@)
	@if command -v chromium >/dev/null 2>&1; then \
	  echo "chromium present: $$(command -v chromium)"; \
	else \
	  $(APT_AS_ROOT) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(APT_AS_ROOT) apt-get install -y --no-install-recommends chromium; \
	fi
	chromium --version 2>/dev/null | head -1
	@touch $@

# Regenerate docs/img/report.png: the reference deployment graded with load evidence, drill journals and a
# baseline (out/load-results.jsonl and out/chaos-engine-hang.json of `make demo` when present, else samples),
# rendered to HTML and photographed by headless Chromium (the code of the screenshot test).
screenshot: install $(BROWSER_STAMP)
	$(BIN)/python tests/test_report_screenshot.py docs/img/report.png

TEST_DEPS += $(BROWSER_STAMP)
