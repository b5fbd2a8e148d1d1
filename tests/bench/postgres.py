"""Database agent benchmark: client CPU per cycle against a bare psycopg loop of the same queries.

`python -m tests.bench postgres`. Needs Debian's PostgreSQL: a throwaway cluster on loopback
(tests/postgres_env.py) with 500 distinct statements in pg_stat_statements, so the top-statements
query has real work. The server runs in its own processes, so the CPU measured is the client's.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import psycopg

from agents import postgres_queries as q
from agents.postgres import PostgresAgentConfig, PostgresCollector
from agents.runner import AgentRunner
from bus.events import HealthEvent
from bus.testing import RecordingPublisher
from bus.units import dec_hook
from tests.postgres_env import MONITOR_PASSWORD, Cluster, bin_dir

CYCLES = 60
ROUNDS = 3
STATEMENTS = 500


def _fill(cluster: Cluster) -> None:
    """Distinct statements (a table each) so pg_stat_statements holds STATEMENTS entries."""
    statements = [f"CREATE TABLE IF NOT EXISTS t{n} (id int, v text)" for n in range(STATEMENTS)]
    statements += [f"SELECT count(*) FROM t{n} WHERE id > 3" for n in range(STATEMENTS)]
    cluster.sql(*statements)


def _same_queries(version: int, top: int) -> list[tuple[str, dict[str, Any] | None]]:
    """What the agent asks a primary each cycle, statements included, in its order."""
    return [
        ("SELECT 1", None),
        (q.STATES, None),
        (q.ACTIVITY, None),
        (q.lock_wait_sql(version), None),
        (q.DATABASES, None),
        (q.REPLICAS, None),
        (q.STATEMENTS_READY, None),
        (q.statements_sql(version), {"n": top}),
    ]


def _bare_loop(dsn: str, version: int, top: int, fresh: bool) -> Callable[[], Awaitable[object]]:
    """The same queries with psycopg alone: a fresh login each cycle as the agent does, or one kept."""
    kept: list[psycopg.AsyncConnection[Any]] = []
    queries = _same_queries(version, top)

    async def run(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
        rows = []
        for sql, params in queries:
            cursor = await conn.execute(sql, params)
            rows.append(await cursor.fetchall())
        return rows

    async def cycle() -> object:
        if not fresh:
            if not kept:
                kept.append(
                    await psycopg.AsyncConnection.connect(dsn, password=MONITOR_PASSWORD, autocommit=True)
                )
            return await run(kept[0])
        conn = await psycopg.AsyncConnection.connect(dsn, password=MONITOR_PASSWORD, autocommit=True)
        try:
            return await run(conn)
        finally:
            await conn.close()

    return cycle


async def _cpu_ms(cycle: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Median client CPU and wall milliseconds of one cycle, after a warm-up."""
    for _ in range(3):
        await cycle()
    cpu, wall = [], []
    for _ in range(CYCLES):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        await cycle()
        cpu.append((time.process_time() - cpu_start) * 1000)
        wall.append((time.perf_counter() - wall_start) * 1000)
    return statistics.median(cpu), statistics.median(wall)


async def run() -> list[tuple[str, str, str]]:
    found = bin_dir()
    if found is None:
        return [("database agent", "skipped: PostgreSQL is not installed (apt-get install postgresql)", "-")]
    cluster = Cluster(found, max_connections=50)
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(cluster.provision)
        await asyncio.to_thread(_fill, cluster)
        return await _measure(cluster)
    finally:
        await asyncio.to_thread(cluster.remove)


async def _measure(cluster: Cluster) -> list[tuple[str, str, str]]:
    dsn = cluster.dsn()
    config = msgspec.convert(
        {"interval": "10s", "statements_every": "0s", "servers": [{"name": "postgres", "dsn": dsn}]},
        PostgresAgentConfig,
        dec_hook=dec_hook,
    )
    collector = PostgresCollector(config)
    publisher = RecordingPublisher()
    runner = AgentRunner(collector, publisher, config, "bench")
    with psycopg.connect(dsn, password=MONITOR_PASSWORD) as probe:
        version = probe.info.server_version
    os.environ["PGPASSWORD"] = MONITOR_PASSWORD  # the agent reads it as psql does
    await runner.run_cycle()
    statuses = [e.status for e in publisher.events("*", HealthEvent) if isinstance(e, HealthEvent)]
    assert statuses == ["ok", "ok"], statuses  # a benchmark of failed logins would measure the wrong thing
    samples = len(publisher.published[0][1].samples)  # type: ignore[union-attr]

    async def agent_cycle() -> None:
        await runner.run_cycle()  # log in, read, build the batch, encode and "publish" it and the checks
        publisher.clear()

    fresh = _bare_loop(dsn, version, config.top_statements, fresh=True)
    kept = _bare_loop(dsn, version, config.top_statements, fresh=False)
    rounds: dict[str, list[tuple[float, float]]] = {"fresh": [], "kept": [], "agent": []}
    for _ in range(ROUNDS):  # alternating, so a load spike on the shared machine hits all three
        rounds["fresh"].append(await _cpu_ms(fresh))
        rounds["kept"].append(await _cpu_ms(kept))
        rounds["agent"].append(await _cpu_ms(agent_cycle))
    best = {name: min(values) for name, values in rounds.items()}
    base_cpu, base_wall = best["fresh"]
    agent_cpu, agent_wall = best["agent"]
    return [
        (
            "bare psycopg: the same 8 queries, a fresh login (baseline)",
            f"{base_cpu:.2f} ms CPU, {base_wall:.1f} ms wall",
            "-",
        ),
        ("bare psycopg: the same 8 queries, one kept session", f"{best['kept'][0]:.2f} ms CPU", "-"),
        (
            f"database agent cycle: {samples} samples, 2 checks, published",
            f"{agent_cpu:.2f} ms CPU = {agent_cpu / base_cpu:.2f} x baseline, {agent_wall:.1f} ms wall",
            "< 1.5 x baseline",
        ),
    ]


async def main() -> None:
    for measure, result, target in await run():
        print(f"{measure:<60} {result:<48} target {target}")


if __name__ == "__main__":
    asyncio.run(main())
