#!/usr/bin/env bash
# Builds the local base image ringlb/python-base:3.11-bookworm without any
# container registry: debootstrap (minbase bookworm + python3, python3-venv,
# ca-certificates) -> tar -> `docker import`.
#
# The host's CA bundle is copied into the image (the package registries are
# reached through a proxy whose CA only the host trusts), and PIP_CERT /
# SSL_CERT_FILE / REQUESTS_CA_BUNDLE point at it, so `pip install` inside image
# builds works. Dockerfiles on this base should create a venv:
#   RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install ...
#
# Idempotent: skips if the image exists; the rootfs tarball is cached in
#   ${RINGLB_CACHE:-/var/cache/ringlb}/base/
# Usage: scripts/base-image.sh [--force]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RINGLB_CACHE:-/var/cache/ringlb}"
IMAGE="${RINGLB_BASE_IMAGE:-ringlb/python-base:3.11-bookworm}"
SUITE=bookworm
MIRROR="${RINGLB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TARBALL="$CACHE/base/python-base-3.11-$SUITE.tar"
HOST_CA=/etc/ssl/certs/ca-certificates.crt

log() { echo "base-image: $*" >&2; }
FORCE=0; [[ "${1:-}" == "--force" ]] && FORCE=1

if ! docker info >/dev/null 2>&1; then
  log "docker is not reachable; starting dockerd via scripts/local-cluster.sh docker"
  "$ROOT/scripts/local-cluster.sh" docker
fi

if [[ $FORCE == 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE already exists (skipping)"
  exit 0
fi

t0=$SECONDS
if [[ $FORCE == 1 || ! -s "$TARBALL" ]]; then
  command -v debootstrap >/dev/null || { log "debootstrap missing: apt-get install debootstrap"; exit 1; }
  [[ -s "$HOST_CA" ]] || { log "$HOST_CA missing: apt-get install ca-certificates"; exit 1; }
  mkdir -p "$CACHE/base"
  work="$(mktemp -d "$CACHE/base/rootfs.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  log "debootstrap $SUITE (minbase + python3 python3-venv ca-certificates) ..."
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$work/rootfs" "$MIRROR" > "$CACHE/base/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/base/debootstrap.log" >&2; exit 1; }
  r="$work/rootfs"
  # Trust what the host trusts: keep it across update-ca-certificates runs too.
  mkdir -p "$r/usr/local/share/ca-certificates"
  cp "$HOST_CA" "$r/usr/local/share/ca-certificates/ringlb-host-bundle.crt"
  cp "$HOST_CA" "$r/etc/ssl/certs/ca-certificates.crt"
  # Trim: apt lists and caches, docs, man pages.
  chroot "$r" apt-get clean >/dev/null 2>&1 || true
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/usr/share/doc/* \
         "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/var/log/*.log "$r"/tmp/* || true
  # No hostname/resolv.conf baked in: the runtime provides them.
  : > "$r/etc/hostname"; rm -f "$r/etc/resolv.conf"
  tar --numeric-owner -C "$r" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$work"; trap - EXIT
  log "rootfs tarball cached: $TARBALL ($(du -h "$TARBALL" | cut -f1)) in $((SECONDS - t0))s"
else
  log "using cached rootfs tarball $TARBALL"
fi

docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
  --change 'CMD ["/usr/bin/python3"]' \
  - "$IMAGE" < "$TARBALL" >/dev/null
log "imported $IMAGE in $((SECONDS - t0))s"
