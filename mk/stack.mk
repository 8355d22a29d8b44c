# The reference stack's gateway and alerting (`forge stack up`): HAProxy and Alertmanager from Debian packages.
# Included by the top-level Makefile (`-include mk/*.mk`). Prometheus itself comes from mk/monitoring.mk's
# stamp (the `prometheus` package, for promtool): this stamp depends on it instead of installing it twice.
# Installed only when a binary is missing (a machine with its own HAProxy keeps it); the stamp is written last,
# so an interrupted install is retried by the next make.
STACK_STAMP := .forge/stamps/apt-stack
# Same values as mk/monitoring.mk (which sets them when it is read first); here for when it is not.
PROMTOOL_STAMP ?= .forge/stamps/apt-prometheus
APT_AS_ROOT ?= $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: stack-deps

stack-deps: $(STACK_STAMP)

$(STACK_STAMP): mk/stack.mk $(PROMTOOL_STAMP)
	@mkdir -p $(dir $@)
	@missing=""; \
	command -v haproxy >/dev/null 2>&1 || missing="$$missing haproxy"; \
	command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 \
	  || missing="$$missing prometheus-alertmanager"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(APT_AS_ROOT) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(APT_AS_ROOT) apt-get install -y --no-install-recommends $$missing; \
	else echo "haproxy, prometheus, alertmanager present"; fi
	haproxy -v | head -1
	prometheus --version 2>&1 | head -1
	{ command -v prometheus-alertmanager >/dev/null && prometheus-alertmanager --version || alertmanager --version; } 2>&1 | head -1
	@touch $@

TEST_DEPS += $(STACK_STAMP)
