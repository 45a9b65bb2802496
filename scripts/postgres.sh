#!/usr/bin/env bash
# A throwaway PostgreSQL server for Warden's datastore tests.
#
#   eval "$(bash scripts/postgres.sh start)"   # prints: export WARDEN_TEST_POSTGRES_URL=postgres://...
#   bash scripts/postgres.sh env               # prints the export line of the running server again
#   bash scripts/postgres.sh stop
#
# Idempotent: `start` reuses the cluster in $WARDEN_PG_DIR (default target/postgres) and only starts it
# if it is not running. If no PostgreSQL server binaries are found it runs `apt-get update` and
# `apt-get install -y postgresql` (as root). As root, the cluster runs as the `postgres` user (initdb
# refuses root). It listens on 127.0.0.1 only, on a free port, with a random password (scram-sha-256);
# the superuser `warden` may create databases (each test makes its own). Only the export line goes to
# stdout; progress goes to stderr. The URL is also written to $WARDEN_PG_DIR/env.
set -euo pipefail

cd "$(dirname "$0")/.."
DIR="${WARDEN_PG_DIR:-$PWD/target/postgres}"
DATA="$DIR/data"
SOCK="$DIR/sock"
LOG="$DIR/server.log"
USER_NAME=warden
DB_NAME=warden

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

find_bin_dir() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return 0
  fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

ensure_binaries() {
  if BIN=$(find_bin_dir); then
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "no PostgreSQL server binaries found and not root: install the \`postgresql\` package"
  log "installing postgresql (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
  BIN=$(find_bin_dir) || die "postgresql was installed but initdb/pg_ctl/postgres were not found"
}

# Runs a command as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$DIR" --shell /usr/sbin/nologin postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  local port
  for port in $(seq 54329 54429); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "no free port in 54329..54429"
}

url() {
  printf 'postgres://%s:%s@127.0.0.1:%s/%s' "$USER_NAME" "$(cat "$DIR/password")" "$(cat "$DIR/port")" "$DB_NAME"
}

print_env() {
  local line
  line="export WARDEN_TEST_POSTGRES_URL=$(url)"
  printf '%s\n' "$line" >"$DIR/env"
  printf '%s\n' "$line"
}

is_running() {
  [ -f "$DATA/PG_VERSION" ] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

init_cluster() {
  log "creating a cluster in $DATA"
  mkdir -p "$DIR"
  chmod 0700 "$DIR"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/password"
  chmod 0600 "$DIR/password"
  mkdir -p "$SOCK"
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres: "$DIR"
    # initdb reads the password file as postgres; directories above must be traversable.
  fi
  as_owner "$BIN/initdb" -D "$DATA" -U "$USER_NAME" --pwfile="$DIR/password" --auth=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 --no-sync >&2 \
    || as_owner "$BIN/initdb" -D "$DATA" -U "$USER_NAME" --pwfile="$DIR/password" --auth=scram-sha-256 \
      -E UTF8 --locale=C --no-sync >&2
  echo "CREATE DATABASE $DB_NAME;" | as_owner "$BIN/postgres" --single -D "$DATA" postgres >/dev/null
}

start() {
  ensure_binaries
  if is_running; then
    log "already running on port $(cat "$DIR/port")"
    print_env
    return 0
  fi
  [ -f "$DATA/PG_VERSION" ] || init_cluster
  free_port >"$DIR/port"
  [ "$(id -u)" = 0 ] && chown postgres: "$DIR/port"
  log "starting on 127.0.0.1:$(cat "$DIR/port")"
  as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
    -o "-p $(cat "$DIR/port") -c listen_addresses=127.0.0.1 -k $SOCK -c fsync=off" start >&2 \
    || { tail -n 20 "$LOG" >&2 || true; die "the server did not start (log: $LOG)"; }
  print_env
}

stop() {
  if ! BIN=$(find_bin_dir); then
    log "no PostgreSQL binaries; nothing to stop"
    return 0
  fi
  if is_running; then
    as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2
    log "stopped"
  else
    log "not running"
  fi
}

case "${1:-start}" in
  start) start ;;
  env)
    BIN=$(find_bin_dir) || die "no PostgreSQL binaries"
    is_running || die "not running: run \`bash scripts/postgres.sh start\`"
    print_env
    ;;
  stop) stop ;;
  *) die "usage: $0 [start|env|stop]" ;;
esac
