# shellcheck shell=bash
# bench/lib/figures.sh — what bench/run reads off a run besides pgbench's own tps and latency: the
# target's CPU time and peak memory, the p99 latency, how many reads Postgres itself answered, and
# whether the target served stale rows. Sourced by bench/run.

# tree_pids ROOT: ROOT and all its descendants (Pgpool-II is a process per client; the others are one
# process each).
tree_pids() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END {
      keep[root] = 1; n = 1
      while (n) { n = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; n++ } }
      for (p in keep) print p
    }'
}

# cpu_ticks ROOT: utime+stime+cutime+cstime summed over ROOT's process tree, in clock ticks. A child
# that exits moves its time into its parent's cutime, so the sum stays whole across exits.
cpu_ticks() {
  local p stat rest total=0
  local -a f
  for p in $(tree_pids "$1"); do
    stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    rest=${stat##*) } # fields from 3 (state) on; comm may contain spaces
    read -ra f <<<"$rest"
    total=$((total + f[11] + f[12] + f[13] + f[14])) # fields 14-17
  done
  echo "$total"
}

# pss_kb ROOT: proportional set size of ROOT's process tree in KiB. PSS splits shared pages among the
# processes mapping them, so Pgpool-II's shared-memory cache counts once, not once per child.
pss_kb() {
  local p files=()
  for p in $(tree_pids "$1"); do files+=("/proc/$p/smaps_rollup"); done
  cat "${files[@]}" 2>/dev/null | awk '/^Pss:/ { s += $2 } END { print s + 0 }'
}

# Peak memory is sampled (every 0.5 s) while a run goes on: start_sampling ROOT, then
# stop_sampling prints the largest PSS seen, in MiB.
SAMPLER_PID=""
start_sampling() {
  local root=$1 out="$TMP/peak-kb"
  echo 0 >"$out"
  (
    peak=0
    while :; do
      kb=$(pss_kb "$root")
      ((kb > peak)) && { peak=$kb; echo "$peak" >"$out"; }
      sleep 0.5
    done
  ) &
  SAMPLER_PID=$!
}

stop_sampling() {
  [[ -n $SAMPLER_PID ]] || return 0
  kill "$SAMPLER_PID" 2>/dev/null
  wait "$SAMPLER_PID" 2>/dev/null || true
  SAMPLER_PID=""
  awk '{ printf "%.0f", $1 / 1024 }' "$TMP/peak-kb"
}

# p99_ms PREFIX: the 99th percentile of the latencies in pgbench's per-transaction logs PREFIX.*
# (a sample of the transactions, --sampling-rate), which it then compresses.
p99_ms() {
  local files=("$1".*)
  [[ -e ${files[0]} ]] || { echo "-"; return; }
  awk '{ print $3 }' "${files[@]}" | sort -n | awk '{ v[NR] = $1 } END {
    if (!NR) { print "-"; exit }
    i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f", v[i] / 1000 }'
  gzip -1 -f "${files[@]}"
}

# Postgres counts every statement it executes (pg_stat_statements, reset before each run). A read a
# cache answered never reaches it; Pgpool-II's hits in extended mode still send Parse and Bind (so
# count as calls) but return no rows. Each read of every workload returns exactly one row, so the
# rows Postgres returned for reads of pgbench_accounts is the number of reads it answered.
# upstream_counts -> "rows_of_reads calls_of_updates" since the last reset.
upstream_counts() {
  psql_at "$PG_PORT" -F' ' -c "SELECT coalesce(sum(rows) FILTER (WHERE query ~* '^select .* from pgbench_accounts'), 0),
      coalesce(sum(calls) FILTER (WHERE query ~* '^update pgbench_accounts'), 0) FROM pg_stat_statements"
}

# hit_ratio TRANSACTIONS WORKLOAD: the share of the run's reads that Postgres did not answer (the
# target's cache did); "-" under 100 reads. Every transaction of a workload reads once, except the
# mixed workload's updates.
hit_ratio() {
  local txns=$1 wid=$2 rows updates
  read -r rows updates <<<"$(upstream_counts)"
  [[ $wid == mixed-* ]] || updates=0
  [[ $wid == tpcb ]] && updates=0
  awk -v n="$txns" -v u="$updates" -v r="$rows" 'BEGIN {
    reads = n - u; if (reads < 100) print "-"; else printf "%.4f", 1 - r / reads }'
}

# stale_rows TARGET MODE: after a mixed run, every account the mixed workload could read, read through
# TARGET with the workload's own statement (so a cache answers it from the entries the run left),
# and compared with Postgres: a pgbench script in which each client reads its share of the keys and
# then writes any row that differs into bench_stale (the INSERT ... SELECT is a write, so every
# target forwards it, and Postgres compares with its current row). Prints the number of stale rows,
# or "-" when the check could not run through the target.
stale_rows() {
  local target=$1 mode=$2
  local out="$RAW_DIR/stale-$target-$mode.txt"
  psql_at "$PG_PORT" -c 'TRUNCATE bench_stale'
  if pgbench -h 127.0.0.1 -p "${TARGET_PORT[$target]}" -U postgres -c "$CLIENTS" -j "$THREADS" \
    -t $((KEYS / CLIENTS)) -D i=0 --no-vacuum -M "$mode" -f "$TMP/stale.sql" bench >"$out" 2>&1; then
    psql_at "$PG_PORT" -c 'SELECT count(*) FROM bench_stale'
  else
    record_failure "mixed-$mode" "$target" "the stale-row check" "$out"
    echo "-"
  fi
}
