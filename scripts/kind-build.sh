#!/usr/bin/env bash
# Builds the kind CLI pinned in hack/kind/go.mod from the Go module proxy, cached by version:
#   ${RINGLB_CACHE:-/var/cache/ringlb}/kind/<version>/bin/kind
# Usage: scripts/kind-build.sh          build if missing, print the binary's path
#        scripts/kind-build.sh --print  print the path only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RINGLB_CACHE:-/var/cache/ringlb}"
VERSION="$(awk '$1=="require" && $2=="sigs.k8s.io/kind" {print $3}' "$ROOT/hack/kind/go.mod")"
[[ -n $VERSION ]] || { echo "kind-build: cannot read the kind version from hack/kind/go.mod" >&2; exit 1; }
BIN="$CACHE/kind/$VERSION/bin/kind"
if [[ ${1:-} == --print ]]; then echo "$BIN"; exit 0; fi
if [[ ! -x $BIN ]]; then
  command -v go >/dev/null || { echo "kind-build: go is not installed" >&2; exit 1; }
  echo "kind-build: compiling kind $VERSION ..." >&2
  t0=$SECONDS
  mkdir -p "$(dirname "$BIN")"
  (cd "$ROOT/hack/kind" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${RINGLB_GOFLAGS:--p=2 -buildvcs=false}" \
    go build -trimpath -ldflags "-s -w" -o "$BIN.tmp.$$" sigs.k8s.io/kind)
  mv "$BIN.tmp.$$" "$BIN"
  echo "kind-build: kind $VERSION compiled in $((SECONDS - t0))s -> $BIN" >&2
fi
echo "$BIN"
