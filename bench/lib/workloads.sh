# Workloads and data shared by bench/run and bench/fleet: the pgbench scripts (point, heavy, mixed,
# and the stale-row check) and the bench database. They use TMP, RAW_DIR, KEYS, CLIENTS, SCALE,
# PGBIN and PG_PORT from the script that sources them.

write_scripts() {
  printf '\\set aid random(1, %s)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n' \
    "$KEYS" >"$TMP/point.sql"
  printf '%s\n' '\set k random(0, 99)' \
    'SELECT count(*), sum(abalance), avg(abalance) FROM pgbench_accounts WHERE aid BETWEEN :k * 10000 + 1 AND :k * 10000 + 5000;' \
    >"$TMP/heavy.sql"
  # 95 % point reads, 5 % updates of the same Zipf-distributed keys: what row-level invalidation is
  # for. The read ends in \gset so that the stale-row check (stale.sql) sends the very same statement
  # text, and so reads the entries a cache kept from this workload.
  printf '%s\n' "\\set aid random_zipfian(1, $KEYS, 1.1)" '\set r random(1, 100)' '\if :r <= 5' \
    'UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;' '\else' \
    'SELECT abalance FROM pgbench_accounts WHERE aid = :aid \gset' '\endif' >"$TMP/mixed.sql"
  # Client c of $CLIENTS reads accounts c+1, c+1+$CLIENTS, ... (i counts its transactions, from -D i=0).
  printf '%s\n' "\\set aid :i * $CLIENTS + :client_id + 1" '\set i :i + 1' \
    'SELECT abalance FROM pgbench_accounts WHERE aid = :aid \gset' \
    'INSERT INTO bench_stale SELECT aid, :abalance, abalance FROM pgbench_accounts WHERE aid = :aid AND abalance <> :abalance;' \
    >"$TMP/stale.sql"
  cp "$TMP"/{point,heavy,mixed,stale}.sql "$RAW_DIR/"
}

init_data() {
  "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    -c 'CREATE DATABASE bench'
  log "pgbench -i -s $SCALE (directly)"
  pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench \
    >"$RAW_DIR/init.txt" 2>&1 || { cat "$RAW_DIR/init.txt" >&2; die "pgbench -i failed"; }
  # pgbench_history has no primary key. Veneer will not create its FOR ALL TABLES publication while a
  # table lacks a replica identity (UPDATE and DELETE on it would then fail); an operator gives it one.
  psql_at "$PG_PORT" -c 'ALTER TABLE pgbench_history REPLICA IDENTITY FULL' \
    -c 'CREATE EXTENSION pg_stat_statements' \
    -c 'CREATE TABLE bench_stale (aid int PRIMARY KEY, served int, actual int)' \
    -c 'CREATE TABLE bench_sync (id int PRIMARY KEY, n int)' -c 'INSERT INTO bench_sync VALUES (1, 0)'
}


# Before every run, directly: the same starting state for every target.
prepare_run() {
  if [[ $1 == tpcb ]]; then # what pgbench's own pre-run vacuum does
    psql_at "$PG_PORT" -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' \
      -c 'TRUNCATE pgbench_history'
  fi
  psql_at "$PG_PORT" -c 'CHECKPOINT' -c 'SELECT pg_stat_statements_reset()' >/dev/null
}
