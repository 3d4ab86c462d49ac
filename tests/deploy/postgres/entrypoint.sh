#!/bin/sh
# Initialise the data folder on the first start (user, password and database from the official
# image's variables), then run the server as postgres, listening on every interface of the
# container with password authentication.
set -eu
PGDATA=/var/lib/postgresql/data
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-${user}}"
[ -r "${POSTGRES_PASSWORD_FILE:-}" ] || {
  echo "postgres-entrypoint: error: POSTGRES_PASSWORD_FILE '${POSTGRES_PASSWORD_FILE:-}' is unreadable" >&2
  exit 2
}
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }

mkdir -p "${PGDATA}" /var/run/postgresql
chown postgres:postgres "${PGDATA}" /var/run/postgresql
chmod 0700 "${PGDATA}"
if [ ! -s "${PGDATA}/PG_VERSION" ]; then
  pwfile="$(mktemp)"
  # initdb reads the first line; the secret may end without a newline. UTF-8, as in the official
  # image: a minimal base has no locales, and initdb would pick SQL_ASCII.
  head -n 1 "${POSTGRES_PASSWORD_FILE}" >"${pwfile}"
  chown postgres "${pwfile}"
  as_postgres initdb --pgdata="${PGDATA}" --username="${user}" --pwfile="${pwfile}" \
    --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "${pwfile}"
  echo "host all all all scram-sha-256" >>"${PGDATA}/pg_hba.conf"
  if [ "${db}" != postgres ]; then
    as_postgres postgres --single -D "${PGDATA}" postgres <<SQL >/dev/null
CREATE DATABASE "${db}" OWNER "${user}";
SQL
  fi
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
  postgres -D "${PGDATA}" -c listen_addresses='*'
