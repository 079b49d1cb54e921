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
.PHONY: help venv dev lint test test-tools test-hogged unit integration e2e bench bench-memory fuzz analysis affinity faults images crd deploy undeploy \
	kind-up kind-down kind-node-image kind-e2e port-forward local-up local-down local-e2e local-images clean

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[operator,analysis,test,compile]'
	touch $@

# The balancer's hot modules compiled in place with mypyc (setup.py), as the image has them;
# rebuilt when any balancer module changes (mypyc type-checks what they import, too).
$(VENV)/.compiled: $(VENV)/.installed setup.py $(wildcard balancer/ringlb_balancer/*.py ring/ringlb_ring/*.py)
	RINGLB_COMPILE=1 $(PY) setup.py -q build_ext --inplace >$(VENV)/compile.log 2>&1 || { tail -30 $(VENV)/compile.log; exit 1; }
	touch balancer/ringlb_balancer/*.so $@  # unchanged C (an edited comment) is not relinked: still current

venv: $(VENV)/.installed $(VENV)/.compiled ## create .venv with everything installed, hot modules compiled

dev: venv ## balancer on 127.0.0.1:5000 + 3 replicas + supervisor (Ctrl-C stops all)
	$(VENV)/bin/ringlb dev $(ARGS)

# The gate CI runs before make test: ruff's rules and format over the tree, mypy over every
# package, and every noqa or type: ignore with its reason on the line (after the code: "# why").
LINT_MYPY := ring/ringlb_ring balancer/ringlb_balancer operator/ringlb_operator replica/ringlb_replica harness/ringlb_harness scripts
NO_REASON := \#[[:space:]]*(noqa(:[[:space:]]*[A-Z]+[0-9]+([[:space:]]*,[[:space:]]*[A-Z]+[0-9]+)*)?|type:[[:space:]]*ignore(\[[a-z0-9, -]+\])?)[[:space:]]*$$
lint: $(VENV)/.installed ## ruff (rules, format check) and mypy over every package; CI runs it before make test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy $(LINT_MYPY)
	@if grep -rnE --include='*.py' '$(NO_REASON)' ring balancer operator replica harness scripts tests setup.py; then \
	  echo "lint: each noqa or type: ignore above needs its reason on the line"; exit 1; fi

# The differential test runs nginx beside the balancer: installed from Debian when missing
# (waiting for dpkg's lock if another apt-get runs, as kind-up's may).
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq
test-tools:
	@command -v nginx >/dev/null || { echo "installing nginx-light (the differential test's reference proxy)"; \
	  $(APT_INSTALL) nginx-light >/dev/null 2>&1 || \
	  { apt-get -o DPkg::Lock::Timeout=600 update -qq && $(APT_INSTALL) nginx-light >/dev/null; }; }

test: venv test-tools ## unit + integration tests (no cluster), under 5 minutes; installs nginx if missing
	$(PY) -m pytest -q tests/unit tests/integration tests/browser

unit: venv ## unit tests only
	$(PY) -m pytest -q tests/unit

# E2E_MARKS narrows the suite (local-e2e: "not multinode"); E2E_JOBS tests run at once, each in
# a namespace of its own; the tests marked exclusive (operator scaled or killed, a node drained
# or stopped) then run one by one. Exit status 5 is pytest's "nothing selected" (a -k in E2E_ARGS).
E2E_MARKS ?= e2e
E2E_JOBS ?= 2
e2e: venv ## end-to-end suite against the current kube-context
	$(PY) -m pytest -q -p no:randomly -n $(E2E_JOBS) -m '($(E2E_MARKS)) and not exclusive' tests/e2e $(E2E_ARGS) || [ $$? -eq 5 ]
	$(PY) -m pytest -q -p no:randomly -m '($(E2E_MARKS)) and exclusive' tests/e2e $(E2E_ARGS) || [ $$? -eq 5 ]

bench: venv ## ringlb vs nginx and HAProxy: replica table + CPU overhead table (installs tools if missing)
	$(PY) scripts/bench.py $(ARGS)

bench-memory: venv ## ringlb worker RSS while 1 GiB streams down to a slow client and up to a slow backend
	$(PY) scripts/memory.py $(ARGS)

test-hogged: venv test-tools ## make test's suite RUNS times (default 10) with every core busy beside it (~5 min a run; not in CI)
	scripts/test-hogged.sh $(or $(RUNS),10)

fuzz: venv ## long request-path fuzz of the balancer (minutes, not in CI; ARGS="--seconds 600")
	$(PY) scripts/fuzz.py $(ARGS)

analysis: venv ## the seed's analyses A-1..A-4 -> docs/analysis/
	$(PY) scripts/analysis.py $(ARGS)

affinity: venv ## A-5: cache hit rate per strategy, membership events, warm-up or not -> docs/analysis/affinity* (~13 min)
	$(PY) scripts/affinity.py $(ARGS)

faults: venv ## failed requests and outage under load: replica, balancer, supervisor faults, scale calls -> docs/faults.md (~3 min)
	$(PY) scripts/faults.py $(ARGS)

# --- images and clusters -------------------------------------------------------------------
images: ## build the three images (BASE_IMAGE=... to use a local base image)
	BASE_IMAGE=$(BASE_IMAGE) scripts/images.sh $(IMG_BALANCER) $(IMG_REPLICA) $(IMG_OPERATOR)

crd: venv ## regenerate manifests/crd/replicasets.ringlb.io.yaml from the spec model (ringlb_operator/spec.py)
	$(PY) -m ringlb_operator.crd >$@.tmp && mv $@.tmp manifests/crd/replicasets.ringlb.io.yaml

deploy: ## CRD, RBAC, namespace, operator into the current kube-context
	kubectl get crd clusterkopfpeerings.kopf.dev >/dev/null 2>&1 || kubectl create -k manifests/kopf/
	kubectl apply -k manifests/
	kubectl -n ringlb-system rollout status deployment/ringlb-operator --timeout=180s

undeploy: ## remove what deploy applied (ReplicaSets first); kopf's shared peering CRD stays
	-kubectl delete lbrs --all -A --wait --timeout=120s
	-kubectl delete clusterkopfpeering ringlb --ignore-not-found
	kubectl delete -k manifests/ --ignore-not-found

# KIND_NODE_IMAGE: empty = kind's default node image (pulled from Docker Hub);
# local = the node image scripts/node-image.sh builds on this machine (what CI uses).
# KIND: the kind binary (default: kind on PATH, else built from hack/kind by scripts/kind-build.sh).
KIND_NODE_IMAGE ?=
kind-up: ## 3-node kind cluster (kind-config.yaml) + images loaded + operator deployed
	KIND_CLUSTER=$(KIND_CLUSTER) KIND_NODE_IMAGE=$(KIND_NODE_IMAGE) BASE_IMAGE=$(BASE_IMAGE) \
	  scripts/kind-up.sh up $(IMAGES)

kind-down: ## delete the kind cluster (and stop the dockerd kind-up started, if it did)
	KIND_CLUSTER=$(KIND_CLUSTER) scripts/kind-up.sh down

kind-node-image: ## build (or load from cache) the kind node image, offline, on this machine
	scripts/node-image.sh build

kind-e2e: venv ## CI: kind-up (local node image), e2e, kind-down (down even when e2e fails)
	status=0; $(MAKE) kind-up KIND_NODE_IMAGE=local BASE_IMAGE=$(LOCAL_BASE_IMAGE) || status=$$?; \
	export PATH=$$(scripts/kind-up.sh bin-dir):$$PATH; \
	if [ $$status -eq 0 ]; then $(MAKE) e2e || status=$$?; fi; \
	if [ $$status -ne 0 ]; then KIND_CLUSTER=$(KIND_CLUSTER) scripts/kind-up.sh diagnose || true; fi; \
	$(MAKE) kind-down; exit $$status

NS ?= default
NAME ?= web
port-forward: ## balancer of ReplicaSet $(NAME) in $(NS) -> localhost:5000 (with TLS: curl --cacert, README "TLS")
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

local-e2e: venv ## local-up, images, deploy, e2e (all but the multi-node tests), local-down (down even when e2e fails)
	scripts/local-cluster.sh up
	export KUBECONFIG=$$(scripts/local-cluster.sh kubeconfig) PATH=$$(scripts/local-cluster.sh bin-dir):$$PATH; \
	status=0; { $(MAKE) local-images && $(MAKE) deploy && $(MAKE) e2e E2E_MARKS='not multinode'; } || status=$$?; \
	if [ $$status -ne 0 ]; then scripts/local-cluster.sh diagnose || true; fi; \
	scripts/local-cluster.sh down; exit $$status

clean: ## remove the venv, the compiled modules and build files (the caches in /var/cache/ringlb stay)
	rm -rf $(VENV) build balancer/ringlb_balancer/*.so
