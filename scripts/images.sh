#!/usr/bin/env bash
# Build the three images: scripts/images.sh IMG_BALANCER IMG_REPLICA IMG_OPERATOR
# BASE_IMAGE (default python:3.11-slim) is passed to every Dockerfile as a build argument;
# BUILD_IMAGE, the balancer's compile stage, defaults to BASE_IMAGE's full sibling: python:3.11
# for python:3.11-slim, ringlb/python-build:TAG for ringlb/python-base:TAG (scripts/base-image.sh).
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: BASE_IMAGE=... $0 IMG_BALANCER IMG_REPLICA IMG_OPERATOR" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
base=${BASE_IMAGE:-python:3.11-slim}
default_build=${base%-slim}
[[ $base == ringlb/python-base:* ]] && default_build=ringlb/python-build:${base#*:}
build=${BUILD_IMAGE:-$default_build}
for pair in "balancer=$1" "replica=$2" "operator=$3"; do
  component=${pair%%=*}
  image=${pair#*=}
  if [[ $image != *:* || $image == *:latest ]]; then
    echo "images.sh: $image: tag the image with a version, never latest" >&2
    exit 2
  fi
  echo ">> $image (Dockerfile.$component, base $base$([[ $component == balancer ]] && echo ", build $build"))"
  args=(--build-arg "BASE_IMAGE=$base")
  [[ $component == balancer ]] && args+=(--build-arg "BUILD_IMAGE=$build")
  docker build "${args[@]}" -f "Dockerfile.$component" -t "$image" .
done
