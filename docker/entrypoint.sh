#!/usr/bin/env bash
# Entry point of the bnsweep image.
#   head         Ray head: GCS, dashboard + job server, Ray client server; runs sweep drivers.
#   worker       Ray worker node joining RAY_HEAD_ADDRESS with the GPUs the container was given.
#   healthcheck  exit 0 when this node reaches the cluster's GCS with its token.
#   anything else is run as given (e.g. `bnsweep query …`, `bash`).
# Extra arguments after `head` / `worker` go to `ray start` (e.g. `--num-cpus=8`).
set -euo pipefail

die() {
  echo "bnsweep-entrypoint: error: $*" >&2
  exit 2
}

# Token authentication is the only thing between the job server and arbitrary code execution,
# so a node refuses to start without it rather than coming up open.
require_token_auth() {
  [[ "${RAY_AUTH_MODE:-}" == "token" ]] ||
    die "RAY_AUTH_MODE must be 'token' (got '${RAY_AUTH_MODE:-}'); this image never runs Ray without authentication"
  if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
    [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]] ||
      die "no Ray token: set RAY_AUTH_TOKEN_PATH to a token file (compose mounts the ray_auth_token secret)"
    [[ -s "${RAY_AUTH_TOKEN_PATH}" && -r "${RAY_AUTH_TOKEN_PATH}" ]] ||
      die "Ray token file ${RAY_AUTH_TOKEN_PATH} is missing, empty or unreadable for uid $(id -u)"
  fi
}

# The driver runs inside `ray job submit` jobs, which inherit the head's environment. Building
# BNSWEEP_DB here from the password secret keeps the password out of the compose file, the image
# and the job's command line (which Ray shows in `ray job list` and the dashboard).
export_database_url() {
  [[ -n "${BNSWEEP_DB:-}" || -z "${POSTGRES_PASSWORD_FILE:-}" ]] && return 0
  [[ -r "${POSTGRES_PASSWORD_FILE}" ]] ||
    die "PostgreSQL password file ${POSTGRES_PASSWORD_FILE} is missing or unreadable for uid $(id -u)"
  local password
  # Percent-encoding lets any character appear in the password without breaking the URL.
  password="$(python -c 'import sys, urllib.parse; print(urllib.parse.quote(open(sys.argv[1]).read().strip(), safe=""))' "${POSTGRES_PASSWORD_FILE}")"
  export BNSWEEP_DB="postgresql+psycopg://${POSTGRES_USER:-bnsweep}:${password}@${POSTGRES_HOST:-postgres}:5432/${POSTGRES_DB:-bnsweep}"
}

command="${1:-head}"
[[ $# -gt 0 ]] && shift

case "${command}" in
  head)
    require_token_auth
    export_database_url
    # The dashboard listens on all interfaces *inside* the container so that the published port
    # reaches it; compose publishes that port on 127.0.0.1 only. The head gets no GPUs: it runs
    # the drivers, and trials belong on the workers.
    exec ray start --head --block \
      --port=6379 \
      --dashboard-host=0.0.0.0 --dashboard-port=8265 \
      --ray-client-server-port=10001 \
      --num-gpus=0 \
      --disable-usage-stats \
      "$@"
    ;;
  worker)
    require_token_auth
    [[ -n "${RAY_HEAD_ADDRESS:-}" ]] || die "RAY_HEAD_ADDRESS is not set (host:port of the head's GCS, e.g. ray-head:6379)"
    exec ray start --block --address="${RAY_HEAD_ADDRESS}" --disable-usage-stats "$@"
    ;;
  healthcheck)
    # `ray start` records the GCS address in /tmp/ray/ray_current_cluster on head and workers
    # alike; a wrong or missing token makes this fail, too.
    exec ray health-check
    ;;
  *)
    exec "${command}" "$@"
    ;;
esac
