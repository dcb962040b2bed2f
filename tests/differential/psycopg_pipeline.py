"""psycopg 3's executemany through Veneer and directly: pipeline mode, as psycopg sends every batch
(Parse/Bind/Describe/Execute per statement, one Sync at the end, then a Flush).

Usage: psycopg_pipeline.py DIRECT_DSN PROXY_DSN ROUNDS

Runs each scenario (sync and async, with and without autocommit, client-side and server-side binding,
results returned or not) ROUNDS times on each DSN, so that the later rounds through Veneer are cache
hits, and compares what every round returned. Any scenario that takes longer than 20 s fails (a hang
is an error, not a stuck run). Exit status 0 when every answer through Veneer equals the direct one.
"""

import asyncio
import signal
import sys

import psycopg

# Batches of several statements (forwarded: one unit until the Sync), and of one (a unit of its own,
# answered from the cache once seen outside a transaction block).
QUERIES = [
    ("select * from generate_series(1, %s)", [(0,), (1,), (2,)]),
    ("select v from pipeline_items where id = %s", [(1,), (2,), (3,)]),
    ("select * from generate_series(1, %s)", [(5,)]),
    ("select v from pipeline_items where id = %s", [(2,)]),
]


def timeout(signum, frame):
    raise TimeoutError("no answer within 20 s")


def run_sync(dsn, autocommit, client_side, returning):
    results = []
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        cursor = psycopg.ClientCursor(conn) if client_side else conn.cursor()
        for sql, params in QUERIES:
            cursor.executemany(sql, params, returning=returning)
            if returning:
                while True:
                    results.append(cursor.fetchall())
                    if not cursor.nextset():
                        break
            if not autocommit:
                conn.commit()
    return results


async def run_async(dsn, autocommit, client_side, returning):
    results = []
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit)
    async with conn:
        cursor = psycopg.AsyncClientCursor(conn) if client_side else conn.cursor()
        for sql, params in QUERIES:
            await cursor.executemany(sql, params, returning=returning)
            if returning:
                while True:
                    results.append(await cursor.fetchall())
                    if not cursor.nextset():
                        break
            if not autocommit:
                await conn.commit()
    return results


def scenario(dsn, flavor, autocommit, client_side, returning):
    signal.alarm(20)
    try:
        if flavor == "sync":
            return run_sync(dsn, autocommit, client_side, returning)
        return asyncio.run(run_async(dsn, autocommit, client_side, returning))
    finally:
        signal.alarm(0)


def main():
    direct, proxy, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    signal.signal(signal.SIGALRM, timeout)
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("create table if not exists pipeline_items (id int primary key, v text)")
        conn.execute(
            "insert into pipeline_items select g, 'item ' || g from generate_series(1, 3) g "
            "on conflict do nothing"
        )
    failures = 0
    for flavor in ("sync", "async"):
        for autocommit in (False, True):
            for client_side in (True, False):
                for returning in (False, True):
                    name = (
                        f"{flavor}, autocommit={autocommit}, "
                        f"{'client' if client_side else 'server'}-side binding, returning={returning}"
                    )
                    expected = scenario(direct, flavor, autocommit, client_side, returning)
                    for round_ in range(rounds):
                        try:
                            got = scenario(proxy, flavor, autocommit, client_side, returning)
                        except Exception as e:  # a hang or an error through Veneer
                            print(f"FAIL {name}, round {round_ + 1}: {e!r}")
                            failures += 1
                            break
                        if got != expected:
                            print(f"FAIL {name}, round {round_ + 1}: {got!r} != {expected!r}")
                            failures += 1
                            break
                    else:
                        print(f"ok   {name}: {rounds} rounds")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
