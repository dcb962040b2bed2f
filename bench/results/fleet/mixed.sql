\set aid random_zipfian(1, 100000, 1.1)
\set r random(1, 100)
\if :r <= 5
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
\else
SELECT abalance FROM pgbench_accounts WHERE aid = :aid \gset
\endif
