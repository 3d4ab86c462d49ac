#!/usr/bin/env bash
# Compile the image's hash-pinned locks, docker/requirements-<variant>.lock, from pyproject.toml
# and docker/requirements-<variant>.in, with the project's development venv's versions as
# constraints, so the image runs the versions the tests ran.
#   docker/compile-locks.sh [cu130] [cu126] [cpu]     (default: all three)
# cu130 comes from PyPI alone. cu126 and cpu come partly from download.pytorch.org (PyTorch
# publishes those builds nowhere else), so run this where that host is reachable.
# Environment:
#   BNSWEEP_PYTHON  the development venv's python (default: .venv/bin/python); its `pip freeze`
#                   gives the constraints
#   UV              uv (default: uv on PATH; `pip install uv` brings it)
#   SSL_CERT_FILE   behind a TLS-intercepting proxy, the CA bundle uv is to trust
set -euo pipefail

die() {
  echo "compile-locks.sh: error: $*" >&2
  exit 2
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
uv="${UV:-uv}"
python="${BNSWEEP_PYTHON:-.venv/bin/python}"
variants=("$@")
[[ ${#variants[@]} -gt 0 ]] || variants=(cu130 cu126 cpu)
# A wrong variant is named first, before what the compile needs.
for variant in "${variants[@]}"; do
  [[ -f "docker/requirements-${variant}.in" ]] ||
    die "no docker/requirements-${variant}.in: the variants are the docker/requirements-*.in files"
done
command -v "${uv}" >/dev/null || die "${uv} not found: pip install uv (or set UV to its path)"
[[ -x "${python}" ]] || die "${python} is not the project's venv python: set BNSWEEP_PYTHON"

for variant in "${variants[@]}"; do
  [[ -f "docker/requirements-${variant}.in" ]] ||
    die "no docker/requirements-${variant}.in: the variants are the docker/requirements-*.in files"
  if grep -q "download.pytorch.org" "docker/requirements-${variant}.in"; then
    getent hosts download.pytorch.org >/dev/null ||
      die "${variant}: download.pytorch.org does not resolve from here; PyTorch publishes its ${variant} wheels only there"
  fi
done

# The image runs a cluster: its driver writes to PostgreSQL, its head serves `ray job submit`.
# These extras of pyproject.toml are in the lock (tests/docker/test_docker_files.py reads them).
image_extras=(--extra postgres --extra cluster)

# A fixed path (build/ is ignored by git), so the locks' "via -c …" comments do not change.
constraints=build/venv-freeze.txt
mkdir -p build
"${python}" -m pip freeze --exclude-editable >"${constraints}"

for variant in "${variants[@]}"; do
  # unsafe-best-match: torch comes from PyTorch's index and everything else from PyPI, each
  # package at the version the constraints name. --emit-index-url writes PyTorch's index into
  # the lock, where the Dockerfile's `pip install` finds it.
  "${uv}" pip compile pyproject.toml "${image_extras[@]}" "docker/requirements-${variant}.in" \
    --constraints "${constraints}" \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --index-strategy unsafe-best-match \
    --generate-hashes --emit-index-url \
    --custom-compile-command "docker/compile-locks.sh ${variant}" \
    --output-file "docker/requirements-${variant}.lock"
done
