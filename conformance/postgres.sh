#!/usr/bin/env bash
# postgres.sh - a throw-away PostgreSQL server for the tests, loopback only.
#
#   conformance/postgres.sh start <dir>   initdb (first time) + start; prints
#                                         `export` lines on stdout, so
#                                         eval "$(conformance/postgres.sh start DIR)"
#   conformance/postgres.sh stop <dir>    stops the server started in <dir>
#   conformance/postgres.sh status <dir>  prints the export lines if it runs
#
# The cluster lives in <dir>/pgdata, listens on 127.0.0.1:<free port> and on a
# unix socket in <dir> (mode 0700), with trust authentication for loopback
# and the socket only (pg_hba.conf has no other line), fsync on, encoding
# UTF8 with the C collation (byte order, like SQLite's BINARY). PostgreSQL
# refuses to run as root: as root it runs as the unprivileged user
# ${BPF_TEST_PG_USER:-bpfreg-test} (created by conformance/install-deps.sh),
# which gets <dir>; as any other user it runs as that user.
#
# Printed variables:
#   BPF_TEST_POSTGRES      postgres://bpfreg@127.0.0.1:PORT/postgres (role
#                          bpfreg: LOGIN CREATEDB, not a superuser)
#   BPF_TEST_POSTGRES_PID  the postmaster's PID
#   BPF_TEST_PSQL          the psql of the same PostgreSQL version
# Diagnostics go to stderr; the server log is <dir>/postgres.log.
# `stop` stops only the postmaster of <dir>/pgdata (pg_ctl stop -m fast, then
# -m immediate if that did not finish); it leaves <dir> for the caller to
# remove.
set -euo pipefail

ROLE=bpfreg
SUPERUSER=postgres
PG_TEST_USER="${BPF_TEST_PG_USER:-bpfreg-test}"

log() { echo "postgres.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Directory of initdb/pg_ctl: PATH first (symlinks resolved, so psql and
# postgres of the same version sit next to them), else the newest
# /usr/lib/postgresql/<ver>/bin (Debian does not put them on PATH).
find_pg_bin() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return
  fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]] \
    || die "initdb/pg_ctl not found (run conformance/install-deps.sh)"
  echo "$d"
}

# AS: prefix that runs a command as the server's OS user.
AS=()
if [[ $(id -u) -eq 0 ]]; then
  id -u "$PG_TEST_USER" >/dev/null 2>&1 \
    || die "user $PG_TEST_USER does not exist (run conformance/install-deps.sh as root)"
  AS=(runuser -u "$PG_TEST_USER" --)
fi

# Runs a command as the server's user from inside <dir> (a cwd the user
# cannot read makes initdb and postgres complain).
as_user() { (cd "$DIR" && "${AS[@]}" "$@"); }

# A port in 20000-32767 (below Linux's ephemeral range) with no listener on
# 127.0.0.1. Racy by nature: start retries on another port if the bind fails.
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 12768))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free port found"
}

# True while PID runs (a zombie waiting for init to reap it has stopped).
alive() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n "$state" && "$state" != Z ]]
}

pid_of() { head -n1 "$PGDATA/postmaster.pid" 2>/dev/null || true; }

running() { [[ -f "$PGDATA/postmaster.pid" ]] && as_user "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

print_exports() {
  local port
  port=$(cat "$DIR/port")
  echo "export BPF_TEST_POSTGRES=postgres://$ROLE@127.0.0.1:$port/postgres"
  echo "export BPF_TEST_POSTGRES_PID=$(pid_of)"
  echo "export BPF_TEST_PSQL=$PG_BIN/psql"
}

init_cluster() {
  log "initdb in $PGDATA (as $(as_user id -un))"
  as_user "$PG_BIN/initdb" -D "$PGDATA" -U "$SUPERUSER" --auth=trust \
    -E UTF8 --no-locale >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
  # Loopback only: TCP on 127.0.0.1 and the socket in <dir>, nothing else.
  as_user tee "$PGDATA/pg_hba.conf" >/dev/null <<'EOF'
# conformance/postgres.sh: a test cluster, loopback only
local all all              trust
host  all all 127.0.0.1/32 trust
EOF
  as_user tee -a "$PGDATA/postgresql.conf" >/dev/null <<EOF

# --- conformance/postgres.sh -------------------------------------------------
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
unix_socket_permissions = 0700
fsync = on
synchronous_commit = on
full_page_writes = on
# Every test server holds a pool of its own, and tests run in parallel.
max_connections = 400
EOF
}

start_server() {
  local port
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    echo "$port" >"$DIR/port"
    log "starting on 127.0.0.1:$port"
    if as_user "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$DIR/postgres.log" -w -t 60 \
      -o "-p $port" start >&2; then
      "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 30 \
        || die "the server on port $port does not accept connections"
      return
    fi
    log "start on port $port failed; log tail:"
    tail -n 5 "$DIR/postgres.log" >&2 || true
  done
  die "PostgreSQL did not start (see $DIR/postgres.log)"
}

create_role() {
  local port psql
  port=$(cat "$DIR/port")
  psql=("$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$SUPERUSER" -d postgres)
  if [[ -z $("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'") ]]; then
    "${psql[@]}" -c "CREATE ROLE $ROLE LOGIN CREATEDB"
  fi
  # The bench settles the cluster (CHECKPOINT) before it times a cold start.
  if [[ -n $("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'pg_checkpoint'") ]]; then
    "${psql[@]}" -c "GRANT pg_checkpoint TO $ROLE"
  fi
  if [[ -z $("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$ROLE'") ]]; then
    "${psql[@]}" -c "CREATE DATABASE $ROLE OWNER $ROLE"
  fi
}

cmd="${1:-}"
[[ $# -eq 2 && "$cmd" =~ ^(start|stop|status)$ ]] || {
  echo "usage: $0 start|stop|status <dir>" >&2
  exit 2
}
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
PGDATA="$DIR/pgdata"
PG_BIN=$(find_pg_bin)

case "$cmd" in
  start)
    if ((${#AS[@]})); then
      chown "$PG_TEST_USER:" "$DIR"
      chmod 0700 "$DIR"
      as_user test -w "$DIR" \
        || die "$PG_TEST_USER cannot write $DIR (a parent directory is not searchable?)"
    fi
    if running; then
      log "already running (PID $(pid_of))"
      print_exports
      exit 0
    fi
    [[ -f "$PGDATA/PG_VERSION" ]] || init_cluster
    start_server
    create_role
    log "ready (PID $(pid_of))"
    print_exports
    ;;
  stop)
    if ! running; then
      log "not running in $DIR"
      exit 0
    fi
    pid=$(pid_of)
    log "stopping PID $pid"
    as_user "$PG_BIN/pg_ctl" -D "$PGDATA" stop -m fast -w -t 60 >&2 \
      || as_user "$PG_BIN/pg_ctl" -D "$PGDATA" stop -m immediate -w -t 30 >&2 \
      || die "pg_ctl stop failed for PID $pid"
    if alive "$pid"; then
      die "PID $pid still runs after pg_ctl stop"
    fi
    log "stopped"
    ;;
  status)
    if running; then
      print_exports
    else
      log "not running in $DIR"
      exit 1
    fi
    ;;
esac
