#!/usr/bin/env bash
# Builds the local base images without any container registry: debootstrap
# (minbase bookworm + packages) -> tar -> `docker import`.
#   ringlb/python-base:3.11-bookworm   python3, python3-venv, ca-certificates: what the
#                                      images run on
#   ringlb/python-build:3.11-bookworm  the same + gcc and python3-dev: the balancer image's
#                                      build stage, which compiles its hot modules with mypyc
# (The registry equivalents are python:3.11-slim and python:3.11; scripts/images.sh pairs them.)
#
# The host's CA bundle is copied into the images (the package registries are
# reached through a proxy whose CA only the host trusts), and PIP_CERT /
# SSL_CERT_FILE / REQUESTS_CA_BUNDLE point at it, so `pip install` inside image
# builds works. Dockerfiles on this base should create a venv:
#   RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install ...
#
# Idempotent: skips an image that exists; the rootfs tarballs are cached in
#   ${RINGLB_CACHE:-/var/cache/ringlb}/base/
# Usage: scripts/base-image.sh [--force]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RINGLB_CACHE:-/var/cache/ringlb}"
SUITE=bookworm
MIRROR="${RINGLB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_CA=/etc/ssl/certs/ca-certificates.crt

log() { echo "base-image: $*" >&2; }
FORCE=0; [[ "${1:-}" == "--force" ]] && FORCE=1

if ! docker info >/dev/null 2>&1; then
  log "docker is not reachable; starting dockerd via scripts/local-cluster.sh docker"
  "$ROOT/scripts/local-cluster.sh" docker
fi

# build_image IMAGE TARBALL PACKAGES: debootstrap (or reuse the cached tarball), then import.
build_image() {
  local image=$1 tarball=$2 packages=$3 t0=$SECONDS work r
  if [[ $FORCE == 0 ]] && docker image inspect "$image" >/dev/null 2>&1; then
    log "$image already exists (skipping)"
    return 0
  fi
  if [[ $FORCE == 1 || ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null || { log "debootstrap missing: apt-get install debootstrap"; exit 1; }
    [[ -s "$HOST_CA" ]] || { log "$HOST_CA missing: apt-get install ca-certificates"; exit 1; }
    mkdir -p "$CACHE/base"
    work="$(mktemp -d "$CACHE/base/rootfs.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    log "debootstrap $SUITE (minbase + $packages) ..."
    debootstrap --variant=minbase --include="$packages" \
      "$SUITE" "$work/rootfs" "$MIRROR" > "$tarball.log" 2>&1 \
      || { tail -20 "$tarball.log" >&2; exit 1; }
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
    tar --numeric-owner -C "$r" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$work"; trap - EXIT
    log "rootfs tarball cached: $tarball ($(du -h "$tarball" | cut -f1)) in $((SECONDS - t0))s"
  else
    log "using cached rootfs tarball $tarball"
  fi

  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
    --change 'CMD ["/usr/bin/python3"]' \
    - "$image" < "$tarball" >/dev/null
  log "imported $image in $((SECONDS - t0))s"
}

build_image ringlb/python-base:3.11-bookworm "$CACHE/base/python-base-3.11-$SUITE.tar" \
  python3,python3-venv,ca-certificates
build_image ringlb/python-build:3.11-bookworm "$CACHE/base/python-build-3.11-$SUITE.tar" \
  python3,python3-venv,python3-dev,gcc,libc6-dev,ca-certificates
