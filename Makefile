# Everything a fresh machine needs: `make run` (the main job, local) and `make test` (all checks).
# Both create .venv and install what they use; system packages come from apt when we are root.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STATE_DIR ?= .letterbox-state
# System packages the suite runs for real (see ../shared/PEERS.md); installed once per machine.
APT_PACKAGES ?= swaks libnet-ssleay-perl libauthen-sasl-perl openssl curl isync shellcheck \
  pdns-server pdns-backend-sqlite3 bind9 bind9-utils dnsutils pebble python3-spf postsrsd postfix
PYTEST_ARGS ?=

.PHONY: all venv system-deps lint format crds run test unit e2e k8s-binaries helm-binary npm-deps clean

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
	    printf '%s\n' 'postfix postfix/main_mailer_type select Local only' \
	      'postfix postfix/mailname string localhost' | debconf-set-selections; \
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

# The CRDs, and what is generated from the same models: the chart's copy of the CRDs, its
# values schema and docs/crd-reference.md (tests fail when any of them is stale).
crds: venv
	$(BIN)/letterbox crds --output crds
	$(PY) -m tests.harness.reference

# The main job, locally: render the mail pod config from examples/ with the operator's own code,
# then run the mail pod on localhost ports (generated material kept in $(STATE_DIR)). Ctrl-C stops.
run: venv
	$(BIN)/letterbox up --state-dir $(STATE_DIR) examples/

# etcd, kube-apiserver and kube-controller-manager for the e2e tests: built once with Go into
# ~/.cache/letterbox (the first build takes about 7 minutes on 2 cores), then reused.
# KUBEBUILDER_ASSETS or LETTERBOX_K8S_BIN pointing at existing binaries skips the build.
k8s-binaries:
	tests/harness/k8s-binaries.sh >/dev/null

# helm for the chart tests: `go install helm.sh/helm/v3/cmd/helm` once into ~/.cache/letterbox
# (LETTERBOX_HELM pointing at an existing Helm 3 skips the build).
helm-binary:
	tests/harness/helm-binary.sh >/dev/null

# npm mailauth, the independent DKIM verifier of tests/integration/test_dkim_interop.py, into
# ~/.cache/letterbox/npm (LETTERBOX_NPM_DIR elsewhere); node and npm come with the machine.
NPM_DIR ?= $(or $(LETTERBOX_NPM_DIR),$(HOME)/.cache/letterbox/npm)
npm-deps:
	@test -d $(NPM_DIR)/node_modules/mailauth || { mkdir -p $(NPM_DIR) && \
	  npm install --prefix $(NPM_DIR) --no-audit --no-fund --silent mailauth@4; }

e2e: venv k8s-binaries helm-binary
	$(BIN)/pytest -m e2e $(PYTEST_ARGS)

unit: venv helm-binary
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: venv system-deps lint k8s-binaries helm-binary npm-deps
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(STATE_DIR) .mypy_cache .ruff_cache .pytest_cache
