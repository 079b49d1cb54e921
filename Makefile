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
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[operator,analysis,test]'
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

# --- images and clusters -------------------------------------------------------------------
images: ## build the three images (BASE_IMAGE=... to use a local base image)
	BASE_IMAGE=$(BASE_IMAGE) scripts/images.sh $(IMG_BALANCER) $(IMG_REPLICA) $(IMG_OPERATOR)

deploy: ## CRD, RBAC, namespace, operator into the current kube-context
	kubectl apply -k manifests/
	kubectl -n ringlb-system rollout status deployment/ringlb-operator --timeout=180s

undeploy: ## remove what deploy applied (ReplicaSets first, while the operator can finalize them)
	-kubectl delete lbrs --all -A --wait --timeout=120s
	kubectl delete -k manifests/ --ignore-not-found

kind-up: ## kind cluster + images loaded + operator deployed
	kind create cluster --name $(KIND_CLUSTER) --config kind-config.yaml
	$(MAKE) images
	kind load docker-image --name $(KIND_CLUSTER) $(IMAGES)
	$(MAKE) deploy

kind-down: ## delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)

NS ?= default
NAME ?= web
port-forward: ## balancer of ReplicaSet $(NAME) in $(NS) -> localhost:5000
	kubectl -n $(NS) port-forward service/$(NAME)-balancer 5000:5000

LOCAL_BASE_IMAGE := ringlb/python-base:3.11-bookworm
local-up: ## single-node Kubernetes built from source on this machine
	scripts/local-cluster.sh up

local-down: ## stop every process local-up started and remove its state
	scripts/local-cluster.sh down

local-images: ## build the images on a debootstrapped base and load them into local-up's cluster
	scripts/base-image.sh
	$(MAKE) images BASE_IMAGE=$(LOCAL_BASE_IMAGE)
	scripts/local-cluster.sh load-images $(IMAGES)

local-e2e: venv ## local-up, images, deploy, e2e, local-down (down even when e2e fails)
	scripts/local-cluster.sh up
	export KUBECONFIG=$$(scripts/local-cluster.sh kubeconfig) PATH=$$(scripts/local-cluster.sh bin-dir):$$PATH; \
	status=0; { $(MAKE) local-images && $(MAKE) deploy && $(MAKE) e2e; } || status=$$?; \
	if [ $$status -ne 0 ]; then scripts/local-cluster.sh diagnose || true; fi; \
	scripts/local-cluster.sh down; exit $$status
