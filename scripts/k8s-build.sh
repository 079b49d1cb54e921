#!/usr/bin/env bash
# Builds the Kubernetes server binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy) and etcd from the Go module proxy, into a
# cache outside the checkout keyed by version:
#   ${RINGLB_CACHE:-/var/cache/ringlb}/k8s/<version>/bin/
#   ${RINGLB_CACHE:-/var/cache/ringlb}/etcd/<version>/bin/
# A second run finds the binaries and skips compiling.
#
# Usage: scripts/k8s-build.sh [k8s|etcd|all]     (default: all)
#        scripts/k8s-build.sh --print-dirs        (prints the two bin dirs)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RINGLB_CACHE:-/var/cache/ringlb}"
export GOTOOLCHAIN=local
export GOFLAGS="${RINGLB_GOFLAGS:--p=2 -buildvcs=false}"
export CGO_ENABLED=0

K8S_VERSION="$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$ROOT/hack/k8s/go.mod")"
ETCD_VERSION="$(awk '$1=="go.etcd.io/etcd/server/v3" {print $2; exit} $1=="require" && $2=="go.etcd.io/etcd/server/v3" {print $3; exit}' "$ROOT/hack/etcd/go.mod")"
[[ -n "$K8S_VERSION" && -n "$ETCD_VERSION" ]] || { echo "k8s-build: cannot read versions from hack/*/go.mod" >&2; exit 1; }

K8S_BIN="$CACHE/k8s/$K8S_VERSION/bin"
ETCD_BIN="$CACHE/etcd/$ETCD_VERSION/bin"
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubeadm)

log() { echo "k8s-build: $*" >&2; }

have_all() {
  local dir=$1; shift
  local b
  for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

build_k8s() {
  if have_all "$K8S_BIN" "${K8S_CMDS[@]}"; then
    log "kubernetes $K8S_VERSION: cached in $K8S_BIN (skipping compile)"
    return 0
  fi
  command -v go >/dev/null || { log "go is not installed"; exit 1; }
  local v=${K8S_VERSION#v} major minor
  major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
  local ld="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  local tmp="$CACHE/k8s/$K8S_VERSION/bin.tmp.$$"
  mkdir -p "$tmp"
  # one `go build` of all missing main packages, so shared packages compile once
  local pkgs=() missing=() c
  for c in "${K8S_CMDS[@]}"; do
    [[ -x "$K8S_BIN/$c" ]] && continue
    missing+=("$c"); pkgs+=("k8s.io/kubernetes/cmd/$c")
  done
  log "kubernetes $K8S_VERSION: compiling ${missing[*]} (GOFLAGS=$GOFLAGS) ..."
  local t0=$SECONDS
  (cd "$ROOT/hack/k8s" && go mod download && \
    go build -tags=selinux,notest -trimpath -ldflags "$ld" -o "$tmp/" "${pkgs[@]}")
  mkdir -p "$K8S_BIN"; mv "$tmp"/* "$K8S_BIN"/; rmdir "$tmp"
  log "kubernetes $K8S_VERSION: compiled in $((SECONDS - t0))s -> $K8S_BIN"
  "$K8S_BIN/kube-apiserver" --version >&2
}

build_etcd() {
  if have_all "$ETCD_BIN" etcd; then
    log "etcd $ETCD_VERSION: cached in $ETCD_BIN (skipping compile)"
    return 0
  fi
  command -v go >/dev/null || { log "go is not installed"; exit 1; }
  local tmp="$CACHE/etcd/$ETCD_VERSION/bin.tmp.$$"
  mkdir -p "$tmp"
  log "etcd $ETCD_VERSION: compiling ..."
  local t0=$SECONDS
  (cd "$ROOT/hack/etcd" && go mod download && \
    go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=release-$ETCD_VERSION" \
      -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$ETCD_BIN"; mv "$tmp" "$ETCD_BIN"
  log "etcd $ETCD_VERSION: compiled in $((SECONDS - t0))s -> $ETCD_BIN"
  "$ETCD_BIN/etcd" --version >&2
}

case "${1:-all}" in
  k8s) build_k8s ;;
  etcd) build_etcd ;;
  all) t0=$SECONDS; build_k8s; build_etcd; log "total $((SECONDS - t0))s" ;;
  --print-dirs) echo "$K8S_BIN"; echo "$ETCD_BIN" ;;
  *) echo "usage: $0 [k8s|etcd|all|--print-dirs]" >&2; exit 2 ;;
esac
