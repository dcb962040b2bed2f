# shellcheck shell=bash
# bench/lib/common.sh — what every bench script needs: messages, ports, processes, the server's
# settings. Sourced; expects PGBIN (psql_at) once the server is found.

# Server settings (defaults otherwise: fsync and synchronous_commit stay on).
PG_SETTINGS=(
  "listen_addresses = '127.0.0.1'"
  "wal_level = logical"
  "shared_buffers = 256MB"
  "max_connections = 100"
  "shared_preload_libraries = 'pg_stat_statements'"
  # A Veneer not under test is paused (pause_streams) and sends no replies meanwhile. Not 0: with the
  # timeout off, a walsender also polls its socket for replies after every message it sends.
  "wal_sender_timeout = '1h'"
)

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# Run a command as the postgres user when we are root (Postgres and Pgpool-II refuse root).
as_pg() {
  if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

USED_PORTS=" "
# free_port VAR: a loopback TCP port nobody listens on, not handed out before.
free_port() {
  local candidate tries=0
  while ((tries++ < 500)); do
    candidate=$((20000 + RANDOM % 12000)) # below the ephemeral range
    [[ $USED_PORTS == *" $candidate "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
      USED_PORTS+="$candidate "
      printf -v "$1" '%s' "$candidate"
      return 0
    fi
  done
  die "no free port found"
}

# wait_for_port PORT PID: until something accepts on PORT (PID must stay alive).
wait_for_port() {
  local i
  for ((i = 0; i < 300; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# stop_pid PID NAME: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
  local i
  kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  log "$2 (pid $1) did not stop on SIGTERM; killing it"
  kill -KILL "$1" 2>/dev/null || true
}

psql_at() { # psql_at PORT SQL...: run SQL on the bench database, unaligned output
  local port=$1
  shift
  "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d bench "$@" </dev/null
}

