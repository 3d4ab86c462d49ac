#!/usr/bin/env bash
# Build the bnsweep image from the repository root, tagged with the package's version so that the
# tag, compose.yaml's default and pyproject.toml never disagree (a test checks the last two).
#   docker/build-image.sh [docker build options…]
# Environment:
#   BNSWEEP_TORCH       cu130 (default, tag bnsweep:<version>), cu126 or cpu (tag
#                       bnsweep:<version>-<variant>); the lock docker/requirements-<variant>.lock
#                       must exist (docker/compile-locks.sh makes it)
#   BNSWEEP_BASE_IMAGE  base image (default debian:bookworm-slim)
#   BNSWEEP_UID         uid of the image's user (default 10001; never 0)
#   BNSWEEP_IMAGE       the tag, instead of the one above
#   DOCKER              the docker CLI (default: docker on PATH)
# Site CA certificates: put them in docker/site-ca/*.crt first (docker/site-ca/README.md).
# Prints the tag on its last line.
set -euo pipefail

die() {
  echo "build-image.sh: error: $*" >&2
  exit 2
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "${root}/pyproject.toml")"
[[ -n "${version}" ]] || die "no 'version = \"…\"' line in ${root}/pyproject.toml"

torch="${BNSWEEP_TORCH:-cu130}"
[[ -f "${root}/docker/requirements-${torch}.in" ]] ||
  die "BNSWEEP_TORCH=${torch}: expected cu130, cu126 or cpu (a docker/requirements-<torch>.in)"
[[ -f "${root}/docker/requirements-${torch}.lock" ]] ||
  die "no docker/requirements-${torch}.lock: run docker/compile-locks.sh ${torch} where download.pytorch.org is reachable"
if [[ "${torch}" == cu130 ]]; then
  default_tag="bnsweep:${version}"
else
  default_tag="bnsweep:${version}-${torch}"
fi
tag="${BNSWEEP_IMAGE:-${default_tag}}"

"${DOCKER:-docker}" build \
  --file "${root}/docker/Dockerfile" \
  --build-arg "TORCH=${torch}" \
  --build-arg "BASE_IMAGE=${BNSWEEP_BASE_IMAGE:-debian:bookworm-slim}" \
  --build-arg "BNSWEEP_UID=${BNSWEEP_UID:-10001}" \
  --tag "${tag}" \
  "$@" \
  "${root}"
echo "${tag}"
