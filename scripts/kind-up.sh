#!/usr/bin/env bash
# The kind path of ringlb: a 3-node kind cluster (kind-config.yaml), the three images loaded
# with `kind load docker-image`, the operator deployed and rolled out.
#
# Usage: scripts/kind-up.sh up IMG...   (what `make kind-up` runs)
#        scripts/kind-up.sh down        (`make kind-down`: delete the cluster, stop the dockerd
#                                        scripts/kind-host.sh started, if it did)
#        scripts/kind-up.sh diagnose    (nodes, pods, events, operator log: for failed runs)
#        scripts/kind-up.sh bin-dir     (a dir with the kind and kubectl this script uses, for PATH)
# Environment:
#   KIND              kind binary (default: `kind` on PATH, else built by scripts/kind-build.sh)
#   KIND_CLUSTER      cluster name (default ringlb)
#   KIND_NODE_IMAGE   node image; empty = kind's own default (kindest/node, pulled by docker);
#                     "local" = the image scripts/node-image.sh builds here (what CI uses)
#   BASE_IMAGE        base of the three images (scripts/images.sh); the local debootstrapped
#                     base ringlb/python-base:3.11-bookworm is built by scripts/base-image.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RINGLB_CACHE:-/var/cache/ringlb}"
CLUSTER="${KIND_CLUSTER:-ringlb}"
LOCAL_BASE=ringlb/python-base:3.11-bookworm
BIN_DIR="$CACHE/kind/bin"

log() { echo "kind-up: $*" >&2; }
die() { echo "kind-up: ERROR: $*" >&2; exit 1; }

# kind and a kubectl of the cluster's minor version, first on PATH
tools() {
  mkdir -p "$BIN_DIR"
  local on_path; on_path="$(command -v kind || true)"
  if [[ -n ${KIND:-} ]]; then :                       # the caller's choice
  elif [[ -n $on_path && $on_path != "$BIN_DIR/kind" ]]; then KIND=$on_path  # the user's own kind
  else KIND="$("$ROOT/scripts/kind-build.sh")"        # built here from hack/kind (cached)
  fi
  [[ $KIND == "$BIN_DIR/kind" ]] || ln -sf "$KIND" "$BIN_DIR/kind"
  local dirs kubectl_built
  dirs="$("$ROOT/scripts/k8s-build.sh" --print-dirs)"  # not piped into head: SIGPIPE under pipefail
  kubectl_built="${dirs%%$'\n'*}/kubectl"
  [[ -x $kubectl_built ]] && ln -sf "$kubectl_built" "$BIN_DIR/kubectl"
  export PATH="$BIN_DIR:$PATH"
}

cluster_exists() { "$KIND" get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; }

cmd_up() {
  (($#)) || die "usage: $0 up IMG..."
  local t0=$SECONDS image="${KIND_NODE_IMAGE:-}" args=()
  "$ROOT/scripts/kind-host.sh" docker
  if [[ $image == local ]]; then
    image="$("$ROOT/scripts/node-image.sh" build)"
  fi
  tools
  log "kind $("$KIND" version | awk '{print $2}'), node image ${image:-<kind default>}"
  if cluster_exists; then
    log "cluster $CLUSTER exists (reusing it)"
    "$KIND" export kubeconfig --name "$CLUSTER"
  else
    [[ -n $image ]] && args+=(--image "$image")
    "$KIND" create cluster --name "$CLUSTER" --config "$ROOT/kind-config.yaml" "${args[@]}" --wait 180s
  fi
  log "cluster ready after $((SECONDS - t0))s"
  local base="${BASE_IMAGE:-python:3.11-slim}"
  [[ $base == "$LOCAL_BASE" ]] && "$ROOT/scripts/base-image.sh"
  BASE_IMAGE="$base" "$ROOT/scripts/images.sh" "$@"
  # Only where ringlb's pods can run: on a multi-node cluster kind keeps the control plane's
  # NoSchedule taint (a single-node cluster has no other node, and gets them all).
  local workers
  workers="$(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[*].metadata.name}')"
  "$KIND" load docker-image --name "$CLUSTER" ${workers:+--nodes "${workers// /,}"} "$@"
  make -C "$ROOT" --no-print-directory deploy   # CRDs, RBAC, operator; waits for its rollout
  kubectl get nodes -o wide
  log "up in $((SECONDS - t0))s (context kind-$CLUSTER; PATH=$BIN_DIR:\$PATH for the kubectl used here)"
}

cmd_down() {
  if docker info >/dev/null 2>&1; then
    tools
    if cluster_exists; then "$KIND" delete cluster --name "$CLUSTER"; else log "no cluster $CLUSTER"; fi
  fi
  "$ROOT/scripts/kind-host.sh" stop-docker
}

cmd_diagnose() {
  tools
  if ! docker info >/dev/null 2>&1 || ! cluster_exists; then log "no cluster $CLUSTER to diagnose"; return 0; fi
  kubectl get nodes -o wide 2>&1 || true
  kubectl get lbrs,pods,deploy,svc,pdb -A -o wide 2>&1 || true
  kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -40 || true
  kubectl -n ringlb-system logs deploy/ringlb-operator --tail=60 2>&1 || true
  local n
  for n in $("$KIND" get nodes --name "$CLUSTER" 2>/dev/null); do
    echo "--- $n: kubelet (last 15 lines)"
    docker exec "$n" journalctl -u kubelet --no-pager -n 15 2>&1 || true
  done
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  diagnose) cmd_diagnose ;;
  bin-dir) tools >/dev/null; echo "$BIN_DIR" ;;
  *) echo "usage: $0 up IMG...|down|diagnose|bin-dir" >&2; exit 2 ;;
esac
