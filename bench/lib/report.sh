# shellcheck shell=bash
# bench/lib/report.sh — bench/results/latest.md and latest.png from the runs bench/run recorded in
# $TMP/results.tsv (one line per run: round, workload, target, tps, mean latency ms, p99 ms,
# transactions, CPU s, CPU µs/tx, peak PSS MiB, hit ratio, stale rows; "-" where a figure does not
# apply). Sourced by bench/run.

# stats WID TARGET -> "tps lat p99 tps_min tps_max cpu_s cpu_us peak_mib hit stale": means over the
# rounds (peak: the largest; stale: the sum), "-" where no round has the figure. Fails if the target
# never ran the workload.
stats() {
  awk -F'\t' -v w="$1" -v t="$2" '
    function mean(sum, count, fmt) { return count ? sprintf(fmt, sum / count) : "-" }
    $2 == w && $3 == t {
      n++; tps += $4; lat += $5
      if (n == 1 || $4 < lo) lo = $4
      if (n == 1 || $4 > hi) hi = $4
      if ($6 != "-") { np++; p99 += $6 }
      if ($8 != "-") { nc++; cpu += $8; us += $9 }
      if ($10 != "-" && $10 > peak) peak = $10
      if ($11 != "-") { nh++; hit += $11 }
      if ($12 != "-") { ns++; stale += $12 }
    }
    END {
      if (!n) exit 1
      printf "%.1f %.3f %s %.1f %.1f %s %s %s %s %s\n", tps / n, lat / n, mean(p99, np, "%.3f"), lo, hi,
        mean(cpu, nc, "%.1f"), mean(us, nc, "%.1f"), (peak ? peak : "-"), mean(hit, nh, "%.4f"),
        (ns ? stale : "-")
    }' "$TMP/results.tsv"
}

# tps_of WID TARGET: the mean tps, or nothing when the target did not run the workload.
tps_of() { { stats "$1" "$2" 2>/dev/null || true; } | awk '{ print $1 }'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b <= 0) print "–"; else printf "%.2f×", a / b }'; }

machine_line() {
  local model mem
  model=$(awk -F': *' '/^model name/{print $2; exit}' /proc/cpuinfo)
  mem=$(awk '/^MemTotal/{printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
  printf '%s CPUs (nproc), %s, %s RAM, Linux %s; run %s' \
    "$(nproc)" "${model:-unknown CPU}" "$mem" "$(uname -r)" "$(date -u '+%Y-%m-%d %H:%M UTC')"
}

versions_line() {
  local v rev
  v="PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), pgbench $(pgbench --version | awk '{print $3}')"
  has_target pgbouncer && v+=", PgBouncer $(pgbouncer --version | awk 'NR == 1 {print $2}')"
  has_target pgpool && v+=", Pgpool-II $(pgpool --version 2>&1 | awk '{print $3}')"
  has_target redis && v+=", Redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
  if has_target veneer || has_target veneer-table || has_target veneer-reuse || has_target passthrough; then
    v+=", Veneer at $VENEER_REV"
  fi
  echo "$v"
}

server_settings_text() { # the settings after listen_addresses, joined by ", "
  local out="" kv
  for kv in "${PG_SETTINGS[@]:1}"; do out+="${kv// = /=}, "; done
  echo "${out%, }"
}

# One table per workload, a row per target.
workload_table() {
  local wid=$1 t s tps lat p99 lo hi cpu us peak hit stale spread dtps btps ptps
  dtps=$(tps_of "$wid" direct)
  btps=$(tps_of "$wid" pgbouncer)
  ptps=$(tps_of "$wid" pgpool)
  echo '| target | tps | mean ms | p99 ms | × direct | × PgBouncer | × Pgpool-II | CPU s | CPU µs/tx | peak PSS MiB | served from cache | stale rows | spread |'
  echo '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|'
  for t in $TARGETS; do
    s=$(stats "$wid" "$t") || continue
    read -r tps lat p99 lo hi cpu us peak hit stale <<<"$s"
    spread="–"
    ((ROUNDS > 1)) && spread=$(awk -v a="$lo" -v b="$hi" -v m="$tps" 'BEGIN { printf "%.1f %%", (b - a) / m * 100 }')
    [[ $hit != - ]] && hit=$(awk -v h="$hit" 'BEGIN { printf "%.1f %%", h * 100 }')
    printf '| %s | %.0f | %.3f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
      "$(target_label "$t")" "$tps" "$lat" "$p99" "$(ratio "$tps" "$dtps")" "$(ratio "$tps" "$btps")" \
      "$(ratio "$tps" "$ptps")" "$cpu" "$us" "$peak" "$hit" "$stale" "$spread" | sed 's/| - /| – /g'
  done
}

# failures_of WID: the runs of the workload that a target could not complete, as a list.
failures_of() {
  local w t what n=0
  while IFS=$'\t' read -r w t what; do
    [[ $w == "$1" ]] || continue
    echo "- ✗ **$(target_label "$t")**: $what"
    n=$((n + 1))
  done <"$TMP/failures.tsv"
  ((n == 0)) || echo
}

# One row per workload, one column per target: tps and its ratio to direct (the README shows this).
summary_table() {
  local wid label t tps dtps
  printf '| workload |'
  for t in $TARGETS; do printf ' %s |' "$(target_label "$t")"; done
  printf '\n|---|'
  for t in $TARGETS; do printf -- '---:|'; done
  echo
  while IFS='|' read -r wid label _; do
    dtps=$(tps_of "$wid" direct)
    printf '| %s |' "$label"
    for t in $TARGETS; do
      tps=$(tps_of "$wid" "$t")
      if [[ -n $tps ]]; then
        printf ' %.0f (%s) |' "$tps" "$(ratio "$tps" "$dtps")"
      elif grep -q "^$wid	$t	" "$TMP/failures.tsv"; then
        printf ' failed |'
      else
        printf ' – |'
      fi
    done
    echo
  done < <(workloads)
}

# verdict LABEL A B MIN: "- ✓ LABEL: A/B× (target ≥ MIN×)" or ✗; nothing when a figure is missing.
verdict() {
  [[ -n $2 && -n $3 ]] || return 0
  awk -v l="$1" -v a="$2" -v b="$3" -v m="$4" 'BEGIN {
    r = a / b; printf "- %s %s: %.2f× (target ≥ %s×)\n", (r >= m ? "✓" : "✗"), l, r, m }'
}

# The targets the issues set, checked against this run's means.
target_checks() {
  local wid label args v best peer
  while IFS='|' read -r wid label args; do
    v=$(tps_of "$wid" veneer)
    best=""
    for peer in pgbouncer pgpool; do
      local p
      p=$(tps_of "$wid" "$peer")
      [[ -n $p ]] && awk -v p="$p" -v b="${best:-0}" 'BEGIN { exit !(p > b) }' && best=$p
    done
    verdict "Veneer (cache) over the best peer, $label" "$v" "$best" 1
    case $wid in
      point-*)
        verdict "Veneer (cache) over direct, $label" "$v" "$(tps_of "$wid" direct)" 1.5
        verdict "Veneer (cache) over Redis GET, $label" "$v" "$(tps_of "$wid" redis)" 0.8 ;;
      heavy-simple) verdict "Veneer (cache) over Pgpool-II, $label" "$v" "$(tps_of "$wid" pgpool)" 1.2 ;;
      heavy-prepared) verdict "Veneer (cache) over Pgpool-II, $label" "$v" "$(tps_of "$wid" pgpool)" 4 ;;
    esac
    if [[ $wid == point-* || $wid == tpcb ]]; then
      local pass
      pass=$(tps_of "$wid" passthrough)
      verdict "Veneer (cache off) over PgBouncer, $label" "$pass" "$(tps_of "$wid" pgbouncer)" 1
      verdict "Veneer (cache off) over direct, $label" "$pass" "$(tps_of "$wid" direct)" \
        "$([[ $wid == tpcb ]] && echo 0.95 || echo 0.85)"
    fi
    if [[ $wid == mixed-* ]]; then
      local t s stale
      for t in $TARGETS; do
        caching "$t" || continue
        s=$(stats "$wid" "$t") || continue
        stale=$(awk '{ print $10 }' <<<"$s")
        [[ $stale == - ]] && continue
        if ((stale == 0)); then
          echo "- ✓ $(target_label "$t") served no stale row after $label"
        else
          echo "- ✗ **$(target_label "$t") served $stale stale rows** after $label"
        fi
      done
    fi
  done < <(workloads)
}

# latest.png: tps per workload (groups) and target (bars), log scale, with gnuplot when installed.
write_chart() {
  local png="$RESULTS_DIR/latest.png" data="$RAW_DIR/chart.dat" wid label args t n=0
  command -v gnuplot >/dev/null || { log "gnuplot not installed: no chart"; rm -f "$png"; return 0; }
  {
    printf 'workload'
    for t in $TARGETS; do printf '\t"%s"' "$(target_label "$t")"; done
    echo
    while IFS='|' read -r wid label args; do
      printf '%s' "$wid"
      for t in $TARGETS; do printf '\t%s' "$(tps_of "$wid" "$t" | grep . || echo NaN)"; done
      echo
    done < <(workloads)
  } >"$data"
  n=$(wc -w <<<"$TARGETS")
  gnuplot <<EOF || { log "gnuplot failed: no chart"; rm -f "$png"; }
set terminal pngcairo size 1400,700 font "sans,10"
set output "$png"
set title "tps per workload and target ($CLIENTS clients, $(nproc) CPUs; log scale)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set logscale y
set ylabel "transactions per second"
set grid ytics
set key outside right top
set xtics rotate by -20
plot for [i=2:$((n + 1))] "$data" using i:xtic(1) title columnheader(i)
EOF
}

write_report() {
  local wid label
  {
    echo "# Veneer benchmark"
    echo
    echo "Generated by \`bench/run\`. Machine: $(machine_line)."
    echo
    echo "$(versions_line)."
    echo "pgbench scale $SCALE, $CLIENTS clients (\`-c $CLIENTS -j $THREADS\`), ${DURATION} s per run," \
      "$ROUNDS round(s), \`--random-seed=$SEED\`; targets interleaved (order rotated each round)."
    echo "Server: $(server_settings_text); all else default (fsync and synchronous_commit on)."
    echo "Before every run, directly: CHECKPOINT and pg_stat_statements_reset() (TPC-B also: VACUUM"
    echo "branches and tellers, TRUNCATE history)."
    echo
    echo "- tps and mean latency: pgbench's figures (without initial connection time), means over rounds."
    echo "  p99: from pgbench's per-transaction logs (\`--sampling-rate $LOG_SAMPLING\`)."
    echo "  Redis GET: \`redis-benchmark -t get -c $CLIENTS --threads $THREADS\` of a 200-byte value, the"
    echo "  floor of a networked in-memory lookup here; its × direct compares with the same row's direct."
    echo "- CPU s, CPU µs/tx, peak PSS: the target's processes (all of Pgpool-II's) during the run: utime+stime"
    echo "  (children's included), per transaction, and the largest proportional set size sampled every 0.5 s."
    echo "- served from cache: the share of the run's reads that Postgres did not answer, from"
    echo "  pg_stat_statements (rows returned by reads of pgbench_accounts against reads issued)."
    echo "- stale rows: after each mixed run, every account read through the target with the workload's"
    echo "  statement and compared with Postgres's row."
    echo "- spread: (max − min) / mean tps over rounds."
    echo "- Caches (Veneer's, Pgpool-II's) are warmed with each read workload for ${CACHE_WARMUP} s first;"
    echo "  Veneer runs with \`--cache-default-ttl 1h\` (its replication stream sees every write)."
    echo
    echo "### Summary: tps (× direct)"
    echo
    summary_table
    echo
    while IFS='|' read -r wid label _; do
      echo "### $label"
      echo
      workload_table "$wid"
      echo
      failures_of "$wid"
    done < <(workloads)
    if [[ -n $LAG_LINE ]]; then
      local probes p50 p99 max
      read -r probes p50 p99 max <<<"$LAG_LINE"
      echo "**Invalidation lag** while TPC-B (-M $TPCB_MODE, $CLIENTS clients) runs directly on Postgres at" \
        "$(printf '%.0f' "$LAG_TPS") tps: from a direct commit's return to the first fresh read of the" \
        "changed row through Veneer (cache), over $probes probes: p50 $p50 ms, p99 $p99 ms, max $max ms" \
        "(target p99 ≤ 20 ms, issue 4)."
      echo
    fi
    echo "### Targets"
    echo
    target_checks
    echo
    [[ -f $RESULTS_DIR/latest.png ]] && echo "![tps per workload and target](latest.png)" && echo
    echo "Raw pgbench outputs and logs, the scripts and the server and proxy logs: \`bench/results/latest/\`."
  } >"$REPORT"
}
