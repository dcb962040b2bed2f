# shellcheck shell=bash
# bench/lib/targets.sh — starting the things bench/run measures, and naming them.
# Sourced by bench/run; uses its settings and helpers (log, die, as_pg, free_port, wait_for_port).
#
# Every start_* function records the PID of what it started so that cleanup stops it, and waits
# until it accepts connections (or dies with its log's tail).
#
# Every server runs in a session of its own, as under a service manager. Linux's autogroup
# scheduling (kernel.sched_autogroup_enabled) shares the CPU between sessions before it shares it
# between processes, so a server left in this script's session would split one share with pgbench
# while the others each had their own: measured on this 2-core machine, that alone cost Veneer's
# pass-through 7% of its tps on pgbench -S. PostgreSQL (pg_ctl) and PgBouncer (-d) start their own
# sessions; the rest are started through setsid (which, here, runs them in place: $! stays theirs).

find_pg_bin() {
  local d
  d=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n1)
  [[ -n $d && -x $d/initdb ]] || die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin"
  PGBIN=$d
}

start_postgres() {
  find_pg_bin
  PGDATA="$TMP/pgdata"
  free_port PG_PORT
  log "initdb ($PGBIN) into $PGDATA"
  as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C \
    >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
  {
    printf '%s\n' "${PG_SETTINGS[@]}"
    echo "port = $PG_PORT"
    echo "unix_socket_directories = '$TMP'"
  } >>"$PGDATA/postgresql.conf"
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  PG_STARTED=1
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$TMP/postgres.log" -w -t 60 start >/dev/null ||
    { tail -n 20 "$TMP/postgres.log" >&2; die "PostgreSQL did not start"; }
}

# VENEER_REV: the commit the measured Veneer was built from (with --veneer-bin, the checkout's), read
# before the run (the run itself rewrites bench/results, which must not count as a change).
VENEER_REV=unknown
build_veneer() {
  VENEER_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  git -C "$ROOT" diff --quiet HEAD -- . ':!bench/results' 2>/dev/null || VENEER_REV+=" + uncommitted changes"
  if [[ -n $VENEER_BIN ]]; then
    [[ -x $VENEER_BIN ]] || die "BENCH_VENEER_BIN=$VENEER_BIN is not executable"
    return
  fi
  log "cargo build --release -p veneer-proxy -p veneer-cache-node"
  (cd "$ROOT" && cargo build --release -p veneer-proxy -p veneer-cache-node) || die "veneer did not build"
  VENEER_BIN="$ROOT/target/release/veneer"
}

# The cache tiers the tier targets share: three veneer-cache-nodes (both node targets use them; each
# Veneer keeps its keys in a namespace of its own) and a redis-server for veneer-redis.
TIER_NODES=""
start_cache_nodes() {
  [[ -n $TIER_NODES ]] && return
  local node_bin n port pid
  node_bin="$(dirname "$VENEER_BIN")/veneer-cache-node"
  [[ -x $node_bin ]] || die "$node_bin not found (cargo build --release -p veneer-cache-node)"
  for n in 1 2 3; do
    free_port port
    log "starting veneer-cache-node $n on 127.0.0.1:$port"
    # One worker each: three nodes share the two cores with Postgres, the proxy and pgbench.
    setsid "${UNDER[@]}" "$node_bin" --listen "127.0.0.1:$port" --max-bytes $((1 << 30)) --workers 1 \
      --log-level warn >"$TMP/cache-node-$n.log" 2>&1 &
    pid=$!
    TARGET_PID[cache-node-$n]=$pid
    wait_for_port "$port" "$pid" || { tail -n 20 "$TMP/cache-node-$n.log" >&2; die "cache node $n did not start"; }
    TIER_NODES+="${TIER_NODES:+,}127.0.0.1:$port"
  done
}

# start_redis_server NAME: a private redis-server keeping nothing on disk, recorded as NAME.
start_redis_server() {
  local port
  free_port port
  log "starting redis-server ($1) on 127.0.0.1:$port"
  setsid redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
    --logfile "$TMP/$1.log" --dir "$TMP" &
  TARGET_PORT[$1]=$port
  TARGET_PID[$1]=$!
  wait_for_port "$port" "${TARGET_PID[$1]}" || { tail -n 20 "$TMP/$1.log" >&2; die "redis-server did not start"; }
}

# UNDER: a command the measured servers run under (bench/instructions: valgrind); none by default.
UNDER=()

# start_veneer TARGET FLAGS...: one Veneer process. Nothing but the bench writes to the database, and
# what it writes directly reaches Veneer through the replication stream, so the caching ones keep
# results for the whole run (--cache-default-ttl 1h).
start_veneer() {
  local target=$1 port pid
  shift
  free_port port
  log "starting Veneer ($target) on 127.0.0.1:$port"
  local extra=()
  read -r -a extra <<<"$VENEER_ARGS"
  # A target waits its turn for minutes while the others run: its stream must not stop for want of
  # clients meanwhile (replication_idle_timeout, 5 minutes by default), or each turn starts cold.
  setsid "${UNDER[@]}" "$VENEER_BIN" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$PG_PORT" \
    --upstream-tls disable --log-level warn --metrics-listen off --replication-idle-timeout 1h \
    "$@" "${extra[@]}" \
    >"$TMP/$target.log" 2>&1 &
  pid=$!
  TARGET_PORT[$target]=$port
  TARGET_PID[$target]=$pid
  wait_for_port "$port" "$pid" || { tail -n 20 "$TMP/$target.log" >&2; die "Veneer ($target) did not start"; }
}

start_pgbouncer() {
  local port
  free_port port
  echo '"postgres" ""' >"$TMP/pgbouncer-users.txt"
  cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $TMP/pgbouncer-users.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
EOF
  log "starting PgBouncer (session mode) on 127.0.0.1:$port"
  rm -f "$TMP/pgbouncer.pid"
  as_pg "${UNDER[@]}" pgbouncer -d -q "$TMP/pgbouncer.ini" ||
    { tail -n 20 "$TMP/pgbouncer.log" >&2 2>/dev/null; die "PgBouncer did not start"; }
  wait_for_pidfile "$TMP/pgbouncer.pid" || die "PgBouncer wrote no pid file"
  TARGET_PORT[pgbouncer]=$port
  TARGET_PID[pgbouncer]=$(<"$TMP/pgbouncer.pid")
  wait_for_port "$port" "${TARGET_PID[pgbouncer]}" ||
    { tail -n 20 "$TMP/pgbouncer.log" >&2; die "PgBouncer did not start"; }
}

# Pgpool-II in raw mode over the one server, with its in-memory query cache in shared memory. The
# cache must hold a whole point-read run (the 64 MB default fills within one), so it is
# $PGPOOL_CACHE; it invalidates a table's results when a write to it passes through Pgpool-II, and
# never expires them otherwise. One preforked child per client plus room for the checks, each keeping
# its backend connection (connection_cache), health and replication checks off.
start_pgpool() {
  local port pcp_port
  free_port port
  free_port pcp_port
  mkdir -p "$TMP/pgpool-oiddir"
  : >"$TMP/pcp.conf"
  cat >"$TMP/pgpool.conf" <<EOF
backend_clustering_mode = 'raw'
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$TMP'
pcp_listen_addresses = ''
pcp_port = $pcp_port
pcp_socket_dir = '$TMP'
wd_ipc_socket_dir = '$TMP'
backend_hostname0 = '127.0.0.1'
backend_port0 = $PG_PORT
backend_flag0 = 'DISALLOW_TO_FAILOVER'
enable_pool_hba = off
pool_passwd = ''
num_init_children = $((CLIENTS * 2))
max_pool = 1
child_life_time = 0
connection_cache = on
load_balance_mode = off
health_check_period = 0
sr_check_period = 0
failover_on_backend_error = off
use_watchdog = off
pid_file_name = '$TMP/pgpool.pid'
logdir = '$TMP'
log_min_messages = warning
memory_cache_enabled = on
memqcache_method = 'shmem'
memqcache_total_size = $PGPOOL_CACHE
memqcache_max_num_cache = 1000000
memqcache_expire = 0
memqcache_auto_cache_invalidation = on
memqcache_oiddir = '$TMP/pgpool-oiddir'
EOF
  [[ $EUID == 0 ]] && chown postgres: "$TMP/pgpool.conf" "$TMP/pcp.conf" "$TMP/pgpool-oiddir"
  log "starting Pgpool-II (raw mode, memqcache in shmem, $PGPOOL_CACHE) on 127.0.0.1:$port"
  as_pg setsid pgpool -n -f "$TMP/pgpool.conf" -F "$TMP/pcp.conf" >"$TMP/pgpool.log" 2>&1 &
  TARGET_PORT[pgpool]=$port
  TARGET_PID[pgpool]=$! # runuser's PID when root: resolved to pgpool's own from the pid file below
  wait_for_pidfile "$TMP/pgpool.pid" || { tail -n 20 "$TMP/pgpool.log" >&2; die "Pgpool-II did not start"; }
  TARGET_PID[pgpool]=$(tr -d '\0' <"$TMP/pgpool.pid" | awk 'NR == 1 { print $1 }')
  wait_for_port "$port" "${TARGET_PID[pgpool]}" ||
    { tail -n 20 "$TMP/pgpool.log" >&2; die "Pgpool-II did not start"; }
}

# A private redis-server holding one 200-byte value at the key redis-benchmark's GET reads.
start_redis() {
  start_redis_server redis
  redis-cli -h 127.0.0.1 -p "${TARGET_PORT[redis]}" SET 'key:__rand_int__' "$(printf 'x%.0s' {1..200})" >/dev/null ||
    die "could not store the value redis-benchmark reads"
}

# wait_for_pidfile FILE: until FILE holds a PID (daemons that fork write it once they run).
wait_for_pidfile() {
  local i
  for ((i = 0; i < 300; i++)); do
    [[ -s $1 ]] && return 0
    sleep 0.1
  done
  return 1
}

start_target() {
  case $1 in
    direct) ;;
    veneer) start_veneer veneer --cache-default-ttl 1h ;;
    veneer-table) start_veneer veneer-table --cache-default-ttl 1h --cache-row-keys false ;;
    veneer-reuse) start_veneer veneer-reuse --cache-default-ttl 1h --pool-idle-timeout 60s ;;
    passthrough) start_veneer passthrough --cache false ;;
    veneer-nodes | veneer-nodes-near)
      start_cache_nodes
      local near=()
      [[ $1 == veneer-nodes-near ]] && near=(--cache-near-bytes $((256 << 20)))
      start_veneer "$1" --cache-default-ttl 1h --cache-tier nodes --cache-nodes "$TIER_NODES" "${near[@]}"
      ;;
    veneer-redis)
      start_redis_server tier-redis
      start_veneer veneer-redis --cache-default-ttl 1h --cache-tier redis \
        --cache-nodes "redis://127.0.0.1:${TARGET_PORT[tier-redis]}"
      ;;
    pgbouncer) start_pgbouncer ;;
    pgpool) start_pgpool ;;
    redis) start_redis ;;
  esac
}

stop_targets() {
  local t
  for t in "${!TARGET_PID[@]}"; do
    kill -CONT "${TARGET_PID[$t]}" 2>/dev/null # one paused by pause_streams would not see SIGTERM
    stop_pid "${TARGET_PID[$t]}" "$t"
    # A target read from a pid file (PgBouncer, Pgpool-II) is no child of this shell: wait says 127.
    wait "${TARGET_PID[$t]}" 2>/dev/null || true
  done
}

target_label() {
  case $1 in
    direct) echo "direct" ;;
    veneer) echo "Veneer (cache)" ;;
    veneer-table) echo "Veneer (cache, table-level)" ;;
    veneer-reuse) echo "Veneer (cache, server sessions reused)" ;;
    passthrough) echo "Veneer (cache off)" ;;
    veneer-nodes) echo "Veneer, 3 cache-nodes" ;;
    veneer-nodes-near) echo "Veneer, 3 cache-nodes + near cache" ;;
    veneer-redis) echo "Veneer, Redis" ;;
    pgbouncer) echo "PgBouncer (session)" ;;
    pgpool) echo "Pgpool-II (query cache)" ;;
    redis) echo "Redis GET (200 B)" ;;
  esac
}

# What each target needs installed: "command|Debian package".
target_needs() {
  case $1 in
    pgbouncer) echo "pgbouncer|pgbouncer" ;;
    pgpool) echo "pgpool|pgpool2" ;;
    redis) echo "redis-server|redis-server" "redis-benchmark|redis-tools" "redis-cli|redis-tools" ;;
    veneer-redis) echo "redis-server|redis-server" ;;
  esac
}

# caching TARGET: whether the target answers reads from a cache of its own.
caching() { [[ $1 == pgpool ]] || streaming "$1"; }

# streaming TARGET: whether the target follows the database's replication stream (a walsender on the
# server decodes every commit for it, and the target applies it).
streaming() { [[ $1 == veneer* ]]; }

# pause_streams TARGET: stops (SIGSTOP) every streaming target but TARGET, so that a run carries only
# the stream its target would carry in production. A paused Veneer's walsender blocks once the
# socket fills; the server keeps the WAL for its slot (the bench's wal_sender_timeout is 1h).
PAUSED=""
pause_streams() {
  local t
  for t in $TARGETS; do
    if ! streaming "$t" || [[ $t == "$1" ]]; then continue; fi
    sync_marker "$t" >/dev/null # the marker's result is cached before the writes it will wait behind
    kill -STOP "${TARGET_PID[$t]}"
    PAUSED+="$t "
  done
}

# resume_streams: resumes the paused targets and waits until each has applied everything written
# meanwhile, so that no run pays for another's catch-up. A direct commit bumps a marker row; the
# marker's cached result through a Veneer changes only once its stream has applied that commit,
# which comes after every write of the run.
resume_streams() {
  local t v i
  [[ -n $PAUSED ]] || return 0
  for t in $PAUSED; do kill -CONT "${TARGET_PID[$t]}"; done
  v=$(psql_at "$PG_PORT" -c 'UPDATE bench_sync SET n = n + 1 WHERE id = 1 RETURNING n')
  for t in $PAUSED; do
    for ((i = 0; i < 1200; i++)); do
      [[ $(sync_marker "$t") == "$v" ]] && continue 2
      sleep 0.05
    done
    die "$t did not catch up with the replication stream within 60 s (see its log)"
  done
  PAUSED=""
}

# sync_marker TARGET: the marker row as TARGET serves it.
sync_marker() { psql_at "${TARGET_PORT[$1]}" -c 'SELECT n FROM bench_sync WHERE id = 1'; }

# serves WORKLOAD TARGET: whether the target runs the workload. Redis only stands beside point reads;
# Veneer with server sessions reused (opt-in: pool_idle_timeout) differs from the default only where
# connections come and go.
serves() {
  case $2 in
    redis) [[ $1 == point-* ]] ;;
    veneer-reuse) [[ $1 == churn ]] ;;
    *) true ;;
  esac
}

# Whether a target's port speaks the Postgres protocol.
speaks_postgres() { [[ $1 != redis ]]; }

check_target() { # a query through the target sees the pgbench data
  speaks_postgres "$1" || return 0
  local n
  n=$(psql_at "${TARGET_PORT[$1]}" -c 'SELECT count(*) FROM pgbench_branches') ||
    die "query through $1 failed"
  [[ $n == "$SCALE" ]] || die "through $1: pgbench_branches has '$n' rows, expected $SCALE"
}

# wait_cached TARGET: until a caching Veneer serves the bench database from its cache (catalog read,
# replication stream up).
wait_cached() {
  local i state=""
  for ((i = 0; i < 200; i++)); do
    state=$(psql_at "${TARGET_PORT[$1]}" -c 'SHOW VENEER STATUS' | awk -F'|' '$1 == "database bench" { print $2 }')
    [[ $state == cached* ]] && return 0
    sleep 0.1
  done
  die "Veneer does not cache the bench database: ${state:-no status}"
}
