#!/usr/bin/env bash
# A throwaway PostgreSQL for development: loopback only, a free port, scram-sha-256 with a random password.
#
#   scripts/pg-dev.sh run -- CMD [ARGS...]   start one, run CMD with FACESEARCH_STORE set to it, stop it
#                                            (exit status: CMD's), e.g.
#                                            scripts/pg-dev.sh run -- .venv/bin/facesearch-index db migrate
#   scripts/pg-dev.sh start [DIR]            start one in DIR (default: a new temporary folder) and keep it;
#                                            prints `export FACESEARCH_STORE=...` and the stop command
#   scripts/pg-dev.sh stop DIR               stop it and delete DIR
#
# Uses the PostgreSQL server binaries (initdb, pg_ctl) of $FACESEARCH_PG_BIN, else the newest
# /usr/lib/postgresql/*/bin (Debian's postgresql package), else pg_config --bindir. PostgreSQL refuses
# to run as root: as root, the folder is given to the `postgres` user and the server runs as it
# (runuser). The tests start their own servers the same way (tests/pg_fixtures.py).
set -euo pipefail

die() { echo "pg-dev.sh: $*" >&2; exit 2; }

pg_bin() {
  if [ -n "${FACESEARCH_PG_BIN:-}" ]; then
    [ -x "$FACESEARCH_PG_BIN/initdb" ] || die "FACESEARCH_PG_BIN=$FACESEARCH_PG_BIN holds no initdb"
    echo "$FACESEARCH_PG_BIN"; return
  fi
  local v
  for v in $(ls /usr/lib/postgresql 2>/dev/null | sort -rn); do
    if [ -x "/usr/lib/postgresql/$v/bin/initdb" ]; then echo "/usr/lib/postgresql/$v/bin"; return; fi
  done
  if command -v pg_config >/dev/null; then pg_config --bindir; return; fi
  die "no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql, or set FACESEARCH_PG_BIN"
}

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local dir="$1" bin password port
  bin="$(pg_bin)"
  mkdir -p "$dir"
  chmod 700 "$dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
  password="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  (umask 077; echo "$password" >"$dir/pwfile")
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir/pwfile"; fi
  as_owner "$bin/initdb" -D "$dir/data" -U facesearch --pwfile="$dir/pwfile" --auth-local=reject \
    --auth-host=scram-sha-256 -E UTF8 --locale=C --no-instructions >"$dir/initdb.log"
  rm -f "$dir/pwfile"
  printf '%s\n' "host all all 127.0.0.1/32 scram-sha-256" "host all all ::1/128 scram-sha-256" \
    | as_owner tee "$dir/data/pg_hba.conf" >/dev/null
  port="$(free_port)"
  as_owner "$bin/pg_ctl" start -w -t 60 -D "$dir/data" -l "$dir/server.log" \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=''" >/dev/null
  echo "postgresql://facesearch:$password@127.0.0.1:$port/postgres" >"$dir/dsn"
  chmod 600 "$dir/dsn"
}

stop() {
  local dir="$1"
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$(pg_bin)/pg_ctl" stop -w -t 60 -m fast -D "$dir/data" >/dev/null || true
  fi
  rm -rf "$dir"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  start)
    dir="${1:-$(mktemp -d /tmp/facesearch-pg-dev.XXXXXX)}"
    start "$dir"
    echo "export FACESEARCH_STORE='$(cat "$dir/dsn")'"
    echo "# stop it with: scripts/pg-dev.sh stop $dir" ;;
  stop)
    [ $# -eq 1 ] || die "usage: pg-dev.sh stop DIR"
    [ -d "$1/data" ] || die "$1 holds no pg-dev.sh server"
    stop "$1" ;;
  run)
    [ "${1:-}" = "--" ] && shift
    [ $# -ge 1 ] || die "usage: pg-dev.sh run -- CMD [ARGS...]"
    dir="$(mktemp -d /tmp/facesearch-pg-dev.XXXXXX)"
    trap 'stop "$dir"' EXIT
    start "$dir"
    set +e
    FACESEARCH_STORE="$(cat "$dir/dsn")" "$@"
    status=$?
    set -e
    exit "$status" ;;
  *) die "usage: pg-dev.sh run -- CMD [ARGS...] | start [DIR] | stop DIR" ;;
esac
