#!/usr/bin/env bash
# Build the three images: scripts/images.sh IMG_BALANCER IMG_REPLICA IMG_OPERATOR
# BASE_IMAGE (default python:3.11-slim) is passed to every Dockerfile as a build argument.
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: BASE_IMAGE=... $0 IMG_BALANCER IMG_REPLICA IMG_OPERATOR" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
base=${BASE_IMAGE:-python:3.11-slim}
for pair in "balancer=$1" "replica=$2" "operator=$3"; do
  component=${pair%%=*}
  image=${pair#*=}
  if [[ $image != *:* || $image == *:latest ]]; then
    echo "images.sh: $image: tag the image with a version, never latest" >&2
    exit 2
  fi
  echo ">> $image (Dockerfile.$component, base $base)"
  docker build --build-arg "BASE_IMAGE=$base" -f "Dockerfile.$component" -t "$image" .
done
