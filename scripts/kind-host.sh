#!/usr/bin/env bash
# Host side of the kind path, for CI and this machine: Debian packages, and a running dockerd
# (started here if none runs: CI machines start with nothing running).
#
# Usage: scripts/kind-host.sh prereqs | docker | stop-docker | status
#   prereqs      apt-get install what the kind path needs (docker.io, debootstrap, jq, ...)
#   docker       make sure dockerd runs. On a VM whose capability bounding set lacks
#                CAP_SYS_RESOURCE (this sandbox), `docker run --privileged` fails; dockerd is then
#                started with hack/node-image/runc-drop-sys-resource as its default runtime.
#                A user's machine with a normal dockerd needs none of this.
#   stop-docker  stop dockerd if this script started it (pid file), else leave it alone
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RINGLB_CACHE:-/var/cache/ringlb}"
STATE="$CACHE/kind/state"
PIDFILE="$STATE/dockerd.pid"
SHIM_SRC="$ROOT/hack/node-image/runc-drop-sys-resource"
SHIM="$STATE/runc-drop-sys-resource"
RUNTIME_NAME=ringlb-runc
APT_PKGS=(docker.io containerd runc debootstrap jq iptables ca-certificates curl gcc libc6-dev
          iproute2 util-linux)

log() { echo "kind-host: $*" >&2; }
die() { echo "kind-host: ERROR: $*" >&2; exit 1; }

prereqs() {
  local missing=() p
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [[ $EUID == 0 ]] || die "need root to apt-get install ${missing[*]}"
  mkdir -p "$CACHE"
  log "installing missing apt packages: ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$CACHE/apt-kind.log" 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$CACHE/apt-kind.log" 2>&1 \
      || { tail -20 "$CACHE/apt-kind.log" >&2; die "apt-get install failed"; }
  fi
}

has_cap_sys_resource() { # bit 24 of the bounding set
  local bnd; bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  (( (16#$bnd >> 24) & 1 ))
}

our_dockerd() { [[ -s $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

runtime_ok() { # dockerd runs privileged containers here: either caps are complete or our runtime is the default
  has_cap_sys_resource && return 0
  [[ "$(docker info --format '{{.DefaultRuntime}}' 2>/dev/null)" == "$RUNTIME_NAME" ]]
}

start_docker() {
  mkdir -p "$STATE"
  local args=()
  if ! has_cap_sys_resource; then
    install -m 0755 "$SHIM_SRC" "$SHIM"
    args+=(--add-runtime "$RUNTIME_NAME=$SHIM" --default-runtime "$RUNTIME_NAME")
    log "CAP_SYS_RESOURCE is not in this machine's bounding set: default runtime $RUNTIME_NAME ($SHIM)"
  fi
  [[ -S /var/run/docker.sock ]] && rm -f /var/run/docker.sock
  if [[ -s /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then rm -f /var/run/docker.pid; fi
  modprobe br_netfilter 2>/dev/null || true
  setsid dockerd "${args[@]}" >>"$STATE/dockerd.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local i
  for ((i = 0; i < 60; i++)); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 "$STATE/dockerd.log" >&2; die "dockerd did not come up"; }
  log "started dockerd (pid $(cat "$PIDFILE"), log $STATE/dockerd.log)"
}

stop_docker() {
  our_dockerd || { rm -f "$PIDFILE"; return 0; }
  local pid i; pid=$(cat "$PIDFILE")
  kill -TERM "$pid"
  for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && { log "dockerd did not stop, SIGKILL"; kill -KILL "$pid"; }
  rm -f "$PIDFILE"
  log "stopped dockerd (pid $pid)"
}

ensure_docker() {
  if docker info >/dev/null 2>&1; then
    runtime_ok && return 0
    our_dockerd || die "dockerd runs without the $RUNTIME_NAME runtime that privileged containers need on this machine; restart it with: dockerd --add-runtime $RUNTIME_NAME=$SHIM_SRC --default-runtime $RUNTIME_NAME"
    log "restarting our dockerd with the $RUNTIME_NAME runtime"
    stop_docker
  fi
  start_docker
}

case "${1:-}" in
  prereqs) prereqs ;;
  docker) { docker info >/dev/null 2>&1 && runtime_ok; } || { prereqs; ensure_docker; } ;;
  stop-docker) stop_docker ;;
  status) docker info --format 'dockerd {{.ServerVersion}}, default runtime {{.DefaultRuntime}}' ;;
  *) echo "usage: $0 prereqs|docker|stop-docker|status" >&2; exit 2 ;;
esac
