#!/usr/bin/env bash
# A PostgreSQL of your own for bnsweep's results, run in user space: no root, no system service.
#
#   deploy/slurm/postgres.sh start    create the database on first use, start the server, print its URL
#   deploy/slurm/postgres.sh stop     stop it (the data stays; `start` again later)
#   deploy/slurm/postgres.sh status   running or not, and the URL
#   deploy/slurm/postgres.sh url      the URL only: export BNSWEEP_DB="$(deploy/slurm/postgres.sh url)"
#   deploy/slurm/postgres.sh serve    start, then stay in the foreground until SIGTERM/SIGINT and
#                                     stop: for a Slurm job (`sbatch --wrap "…/postgres.sh serve"`)
#
# The URL carries no password: `postgresql+psycopg://USER@HOST:PORT/bnsweep`. The password is
# random, kept in $BNSWEEP_PG_DIR/password (mode 600), and written into ~/.pgpass (or $PGPASSFILE),
# where libpq finds it for every bnsweep command on any node that sees your home folder.
#
# The server listens on this node's cluster address and on 127.0.0.1, on a free port (the same one
# again at the next start when it is still free), and accepts password logins (SCRAM) to the
# `bnsweep` database from the cluster network only. docs/slurm.md says where to run it.
#
# Settings (environment):
#   BNSWEEP_PG_DIR      the server's folder: data, password, log (default ~/bnsweep-postgres).
#                       A shared filesystem lets `start` run on any node; node-local disk is faster
#                       but ties the database to that node.
#   BNSWEEP_PG_HOST     the address to listen on and to put in the URL (default: see node_ip)
#   BNSWEEP_IFACE       the network interface whose address to use (default: the default route's)
#   BNSWEEP_PG_ALLOW    the network allowed to log in, CIDR (default: the interface's own network)
#   BNSWEEP_PG_PORT     the port (default: the last one used if free, else a free one in 20000-32000)
#   BNSWEEP_PG_USER     the database user (default: your login name)
#   BNSWEEP_PG_BIN      the folder holding initdb and pg_ctl (default: PATH, then
#                       /usr/lib/postgresql/*/bin and /usr/pgsql-*/bin, newest first)
set -Eeuo pipefail

die() {
  echo "postgres.sh: error: $*" >&2
  exit 1
}
# A command that fails unexpectedly says which one, instead of ending the script silently.
trap 'die "line $LINENO: \`$BASH_COMMAND\` failed"' ERR

[ "$(id -u)" != 0 ] || die "refusing to run as root (PostgreSQL refuses it too): run it as the user who launches the sweep"

# A wrong setting: one line, exit 2, before anything is written.
refuse() {
  echo "postgres.sh: error: $*" >&2
  exit 2
}

pg_dir=${BNSWEEP_PG_DIR:-$HOME/bnsweep-postgres}
if [ -n "${BNSWEEP_PG_PORT:-}" ]; then
  if ! [[ $BNSWEEP_PG_PORT =~ ^[0-9]{1,5}$ ]] || ((BNSWEEP_PG_PORT < 1024 || BNSWEEP_PG_PORT > 65535)); then
    refuse "BNSWEEP_PG_PORT=$BNSWEEP_PG_PORT: expected a port from 1024 to 65535"
  fi
fi
data=$pg_dir/data
state=$pg_dir/server.env
password_file=$pg_dir/password
log=$pg_dir/postgres.log
database=bnsweep
db_user=${BNSWEEP_PG_USER:-$(id -un)}
pgpass=${PGPASSFILE:-$HOME/.pgpass}
# The socket goes to local /tmp, never to the (maybe shared, maybe long) data folder: socket paths
# are limited to 107 bytes, and a socket file on NFS or Lustre is not reachable from other nodes.
socket_dir=/tmp/bnsweep-pg-$(id -u)

has_tools() {
  local tool
  for tool in initdb pg_ctl psql createdb; do
    [ -x "$1/$tool" ] || return 1
  done
}

find_bin() {
  local candidate
  if [ -n "${BNSWEEP_PG_BIN:-}" ]; then
    has_tools "$BNSWEEP_PG_BIN" || die "BNSWEEP_PG_BIN=$BNSWEEP_PG_BIN lacks one of initdb, pg_ctl, psql, createdb"
    echo "$BNSWEEP_PG_BIN"
    return
  fi
  # pg_ctl on PATH may be a lone link (Debian/Ubuntu keep the server binaries in
  # /usr/lib/postgresql/N/bin): the folder it really lives in has the rest.
  if command -v pg_ctl >/dev/null; then
    candidate=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
    if has_tools "$candidate"; then
      echo "$candidate"
      return
    fi
  fi
  for candidate in $(ls -d /usr/lib/postgresql/*/bin /usr/pgsql-*/bin 2>/dev/null | sort -V -r); do
    if has_tools "$candidate"; then
      echo "$candidate"
      return
    fi
  done
  die "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or under /usr/lib/postgresql/*/bin: install the server package, \`module load postgresql\`, or set BNSWEEP_PG_BIN"
}

# This node's cluster address: BNSWEEP_PG_HOST, else the first global IPv4 address of BNSWEEP_IFACE
# (or of the default route's interface). Not `hostname --ip-address`: it can give 127.0.1.1.
iface() {
  local name=${BNSWEEP_IFACE:-}
  if [ -z "$name" ] && command -v ip >/dev/null; then
    name=$(ip -4 route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
  fi
  echo "$name"
}

node_cidr() { # ADDRESS/PREFIX of the chosen interface
  local name
  name=$(iface)
  [ -n "$name" ] || return 0
  command -v ip >/dev/null || return 0
  ip -4 -o addr show dev "$name" scope global 2>/dev/null | awk '{print $4; exit}'
}

node_ip() {
  local cidr
  if [ -n "${BNSWEEP_PG_HOST:-}" ]; then
    echo "$BNSWEEP_PG_HOST"
    return
  fi
  cidr=$(node_cidr)
  if [ -n "$cidr" ]; then
    echo "${cidr%/*}"
    return
  fi
  [ -z "${BNSWEEP_IFACE:-}" ] || die "interface $BNSWEEP_IFACE has no IPv4 address"
  # No `ip`, or no default route: the first non-loopback address the host reports.
  hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+\.' | grep -v '^127\.' | head -n 1 ||
    die "cannot tell this node's address: set BNSWEEP_PG_HOST or BNSWEEP_IFACE"
}

allowed_network() {
  local cidr address prefix a b c d mask net
  if [ -n "${BNSWEEP_PG_ALLOW:-}" ]; then
    echo "$BNSWEEP_PG_ALLOW"
    return
  fi
  cidr=$(node_cidr)
  [ -n "$cidr" ] || die "cannot tell this node's network: set BNSWEEP_PG_ALLOW (for example 10.1.0.0/16)"
  address=${cidr%/*} prefix=${cidr#*/}
  IFS=. read -r a b c d <<<"$address"
  # pg_hba wants the network address itself (host bits zero).
  mask=$(((0xffffffff << (32 - prefix)) & 0xffffffff))
  net=$((((a << 24) | (b << 16) | (c << 8) | d) & mask))
  echo "$((net >> 24 & 255)).$((net >> 16 & 255)).$((net >> 8 & 255)).$((net & 255))/$prefix"
}

port_free() {
  if command -v ss >/dev/null; then
    [ -z "$(ss -H -ltn "sport = :$1" 2>/dev/null)" ]
  else
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

pick_port() {
  local port tries
  for ((tries = 0; tries < 200; tries++)); do
    port=$((20000 + RANDOM % 12000))
    if port_free "$port"; then
      echo "$port"
      return
    fi
  done
  die "no free port found in 20000-32000: set BNSWEEP_PG_PORT"
}

load_state() { # HOST PORT USER NODE of the last start, when there was one
  host="" port="" user="" node=""
  if [ -r "$state" ]; then
    # shellcheck disable=SC1090
    . "$state"
  fi
}

url() {
  echo "postgresql+psycopg://$1@$2:$3/$database"
}

running() {
  [ -d "$data" ] && "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

# On a shared filesystem another node may run the server of this folder. Its process is invisible
# from here, so pg_ctl (and PostgreSQL's own lock file check) would take it for dead and start a
# second server on the same files, which corrupts them.
elsewhere() {
  [ -f "$data/postmaster.pid" ] && [ -n "$node" ] && [ "$node" != "$(hostname)" ]
}

refuse_elsewhere() {
  ! elsewhere || die "the server of $pg_dir runs on $node (its postmaster.pid is there): run this on $node, or, if $node is gone for good, delete $data/postmaster.pid first"
}

write_pgpass() { # HOST PORT: one line for this server, replacing an earlier line of this folder's
  local new_host=$1 new_port=$2 old_host=$3 old_port=$4 password tmp
  password=$(<"$password_file")
  tmp=$(mktemp "$pgpass.XXXXXX")
  chmod 600 "$tmp"
  if [ -f "$pgpass" ]; then
    grep -v -F -e "$new_host:$new_port:$database:$db_user:" ${old_host:+-e "$old_host:$old_port:$database:$db_user:"} "$pgpass" >"$tmp" || true
  fi
  echo "$new_host:$new_port:$database:$db_user:$password" >>"$tmp"
  mv "$tmp" "$pgpass"
}

# The names init() writes into $pg_dir; a folder holding anything else is someone else's.
OWN_FILES=" data password initdb.log postgres.log server.env "

init() {
  local entry why
  if [ -d "$pg_dir" ]; then
    for entry in "$pg_dir"/* "$pg_dir"/.[!.]*; do
      [ -e "$entry" ] || continue
      [[ $OWN_FILES == *" ${entry##*/} "* ]] ||
        refuse "BNSWEEP_PG_DIR=$pg_dir holds ${entry##*/}, which this script did not write: give a new or empty folder"
    done
  fi
  why=$( (umask 077 && mkdir -p "$pg_dir") 2>&1) || die "cannot create $pg_dir: ${why##*: }"
  chmod 700 "$pg_dir"
  # 48 hex digits (192 random bits): nothing that ~/.pgpass would need escaped (: and \).
  (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$password_file")
  "$bin/initdb" -D "$data" -U "$db_user" --pwfile="$password_file" --auth=scram-sha-256 \
    --encoding=UTF8 --no-locale >"$pg_dir/initdb.log" 2>&1 ||
    die "initdb failed: see $pg_dir/initdb.log"
  echo "include_if_exists = 'bnsweep.conf'" >>"$data/postgresql.conf"
}

configure() { # HOST PORT NETWORK: the listen address, port and who may log in, rewritten each start
  cat >"$data/bnsweep.conf" <<EOF
# Written by deploy/slurm/postgres.sh at each start.
listen_addresses = '$1,127.0.0.1'
port = $2
unix_socket_directories = '$socket_dir'
password_encryption = 'scram-sha-256'
EOF
  cat >"$data/pg_hba.conf" <<EOF
# Written by deploy/slurm/postgres.sh at each start: password (SCRAM) logins only, by $db_user,
# over the local socket, from this node and from the cluster network $3.
local all $db_user scram-sha-256
host all $db_user 127.0.0.1/32 scram-sha-256
host $database $db_user $3 scram-sha-256
EOF
}

start() {
  local new_host new_port network tries
  if [ ! -s "$data/PG_VERSION" ]; then
    init
    echo "postgres.sh: created a new database folder $pg_dir" >&2
  fi
  load_state
  refuse_elsewhere
  if running; then
    [ -n "$port" ] || die "a server of $data runs, but $state is missing: stop it (\`$0 stop\`) and start again"
    write_pgpass "$host" "$port" "" ""
    url "$user" "$host" "$port"
    return
  fi
  new_host=$(node_ip)
  network=$(allowed_network)
  mkdir -p -m 700 "$socket_dir"
  for ((tries = 0; tries < 5; tries++)); do
    if [ -n "${BNSWEEP_PG_PORT:-}" ]; then
      new_port=$BNSWEEP_PG_PORT
    elif [ -n "$port" ] && [ "$tries" = 0 ] && port_free "$port"; then
      new_port=$port
    else
      new_port=$(pick_port)
    fi
    configure "$new_host" "$new_port" "$network"
    if "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null; then
      break
    fi
    # Another program took the port between the check and the start: try another.
    grep -q "could not bind\|Address already in use" "$log" && [ -z "${BNSWEEP_PG_PORT:-}" ] ||
      die "the server did not start: see $log"
  done
  running || die "the server did not start on five ports: see $log"
  printf 'host=%s\nport=%s\nuser=%s\nnode=%s\n' "$new_host" "$new_port" "$db_user" "$(hostname)" >"$state"
  PGPASSWORD=$(<"$password_file") "$bin/psql" -h "$socket_dir" -p "$new_port" -U "$db_user" -d postgres \
    -tAc "select 1 from pg_database where datname = '$database'" | grep -q 1 ||
    PGPASSWORD=$(<"$password_file") "$bin/createdb" -h "$socket_dir" -p "$new_port" -U "$db_user" "$database"
  write_pgpass "$new_host" "$new_port" "$host" "$port"
  url "$db_user" "$new_host" "$new_port"
}

stop() {
  load_state
  refuse_elsewhere
  if running; then
    "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    rmdir "$socket_dir" 2>/dev/null || true # only when no other server of this user has its socket there
    echo "postgres.sh: stopped the server of $pg_dir" >&2
  else
    echo "postgres.sh: no server of $pg_dir is running" >&2
  fi
}

status() {
  load_state
  if elsewhere; then
    echo "running on $node, as far as its postmaster.pid says: $(url "$user" "$host" "$port")"
  elif running; then
    echo "running: $(url "$user" "$host" "$port")"
  elif [ -n "$port" ]; then
    echo "stopped (last at $(url "$user" "$host" "$port"))"
    exit 3
  else
    echo "not created yet: $pg_dir"
    exit 3
  fi
}

serve() {
  start
  trap 'stop; exit 0' TERM INT
  # pg_ctl's server is not our child: wait by polling, so the trap runs at once on a signal.
  while running; do
    sleep 5 &
    wait $! || true
  done
  die "the server stopped by itself: see $log"
}

command=${1:-}
case $command in
start | stop | status | serve)
  bin=$(find_bin)
  "$command"
  ;;
url)
  load_state
  [ -n "$port" ] || die "no server started yet from $pg_dir: run \`$0 start\` first"
  url "$user" "$host" "$port"
  ;;
*)
  echo "usage: $0 start|stop|status|url|serve   (settings: see the top of this file)" >&2
  exit 2
  ;;
esac
