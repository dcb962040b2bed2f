\set aid :i * 8 + :client_id + 1
\set i :i + 1
SELECT abalance FROM pgbench_accounts WHERE aid = :aid \gset
INSERT INTO bench_stale SELECT aid, :abalance, abalance FROM pgbench_accounts WHERE aid = :aid AND abalance <> :abalance;
