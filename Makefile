# Everything a fresh machine needs: `make run` (the main job, local) and `make test` (all checks).
# Both create .venv and install what they use; system packages come from apt when we are root.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STATE_DIR ?= .letterbox-state
# System packages the suite runs for real (see ../shared/PEERS.md); installed once per machine.
APT_PACKAGES ?= swaks libnet-ssleay-perl libauthen-sasl-perl openssl curl isync \
  pdns-server pdns-backend-sqlite3 bind9 bind9-utils dnsutils pebble python3-spf
PYTEST_ARGS ?=

.PHONY: all venv system-deps lint format crds run test unit e2e k8s-binaries clean

all: test

$(VENV)/.installed: pyproject.toml
	@echo "==> creating $(VENV) and installing letterbox with its test tools"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

system-deps:
	@if [ -n "$(strip $(APT_PACKAGES))" ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" != 0 ]; then echo "error: need root to install: $$missing" >&2; exit 1; fi; \
	    echo "==> apt-get install $$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

crds: venv
	$(BIN)/letterbox crds --output crds

# The main job, locally: render the mail pod config from examples/ with the operator's own code,
# then run the mail pod on localhost ports (generated material kept in $(STATE_DIR)). Ctrl-C stops.
run: venv
	$(BIN)/letterbox up --state-dir $(STATE_DIR) examples/

# etcd, kube-apiserver and kube-controller-manager for the e2e tests: built once with Go into
# ~/.cache/letterbox (the first build takes about 7 minutes on 2 cores), then reused.
# KUBEBUILDER_ASSETS or LETTERBOX_K8S_BIN pointing at existing binaries skips the build.
k8s-binaries:
	tests/harness/k8s-binaries.sh >/dev/null

e2e: venv k8s-binaries
	$(BIN)/pytest -m e2e $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: venv system-deps lint k8s-binaries
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(STATE_DIR) .mypy_cache .ruff_cache .pytest_cache
