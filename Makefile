# ringlb — every target a user or CI needs. `make help` lists them.
VERSION ?= 0.1.0
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BASE_IMAGE ?= python:3.11-slim
REGISTRY ?= ringlb
IMG_BALANCER ?= $(REGISTRY)/balancer:$(VERSION)
IMG_REPLICA ?= $(REGISTRY)/replica:$(VERSION)
IMG_OPERATOR ?= $(REGISTRY)/operator:$(VERSION)
IMAGES := $(IMG_BALANCER) $(IMG_REPLICA) $(IMG_OPERATOR)
KIND_CLUSTER ?= ringlb

.DEFAULT_GOAL := help
.PHONY: help venv dev test unit integration e2e bench analysis images deploy undeploy \
	kind-up kind-down port-forward local-up local-down local-e2e local-images clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[operator,analysis,test]'
	touch $@

venv: $(VENV)/.installed ## create .venv with everything installed

dev: venv ## balancer on 127.0.0.1:5000 + 3 replicas + supervisor (Ctrl-C stops all)
	$(VENV)/bin/ringlb dev $(ARGS)

test: venv ## unit + integration tests (no cluster), under 5 minutes
	$(PY) -m pytest -q tests/unit tests/integration

unit: venv ## unit tests only
	$(PY) -m pytest -q tests/unit

e2e: venv ## end-to-end suite against the current kube-context
	$(PY) -m pytest -q -p no:randomly tests/e2e

bench: venv ## balancer vs nginx, side by side (installs nginx and wrk if missing)
	$(PY) scripts/bench.py $(ARGS)

analysis: venv ## the seed's analyses A-1..A-4 -> docs/analysis/
	$(PY) scripts/analysis.py $(ARGS)
