\set k random(0, 99)
SELECT count(*), sum(abalance), avg(abalance) FROM pgbench_accounts WHERE aid BETWEEN :k * 10000 + 1 AND :k * 10000 + 5000;
