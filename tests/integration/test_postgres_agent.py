"""The database agent against a real PostgreSQL (Debian's, in a throwaway cluster on loopback)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import psycopg
import pytest
from nats.aio.msg import Msg

from agents.postgres import PostgresAgentConfig, PostgresCollector
from agents.runner import AgentRunner, Check, Collection
from bus import vocabulary as vocab
from bus.connection import Bus
from bus.events import HealthEvent, MetricBatch, Sample
from bus.server import EmbeddedServer
from bus.units import dec_hook
from evaluator.config import EvaluatorConfig
from evaluator.testing import Driver
from tests.conftest import wait_until
from tests.postgres_env import (
    DATABASE,
    MONITOR,
    MONITOR_PASSWORD,
    SUPERUSER,
    SUPERUSER_PASSWORD,
    Cluster,
    own_postgres,
    postgres,
    require_postgres,
)

pytestmark = pytest.mark.integration
__all__ = ["own_postgres", "postgres"]  # the fixtures, imported for pytest
Session = psycopg.AsyncConnection[tuple[object, ...]]


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "postgres-password"
    path.write_text(MONITOR_PASSWORD + "\n")
    return path


def agent_config(cluster: Cluster, password_file: Path, **settings: object) -> PostgresAgentConfig:
    servers = settings.pop("servers", None) or [
        {"name": "postgres", "dsn": cluster.dsn(), "password_file": str(password_file)}
    ]
    return msgspec.convert({"servers": servers, **settings}, PostgresAgentConfig, dec_hook=dec_hook)


def check_of(collection: Collection, target: str) -> Check:
    found = [c for c in collection.checks if c.target == target]
    assert found, f"no check of {target}; checks: {[c.target for c in collection.checks]}"
    return found[0]


def value(collection: Collection, name: str, **labels: str) -> float:
    found = [s.value for s in collection.samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, f"{len(found)} samples of {name} {labels}"
    return found[0]


def statements(collection: Collection) -> dict[str, dict[str, float]]:
    """The published top statements by query text: calls, mean, total, rows."""
    texts = {
        s.labels["queryid"]: s.labels["query"]
        for s in collection.samples
        if s.name == vocab.POSTGRES_STATEMENT_INFO
    }
    out: dict[str, dict[str, float]] = {text: {} for text in texts.values()}
    for s in collection.samples:
        if s.name.startswith("postgres.statement.") and s.name != vocab.POSTGRES_STATEMENT_INFO:
            out[texts[s.labels["queryid"]]][s.name.rsplit(".", 1)[1]] = s.value
    return out


@pytest.fixture
async def sessions(postgres: Cluster) -> AsyncIterator[list[Session]]:
    """Client sessions a test opens; closed at its end."""
    opened: list[Session] = []
    yield opened
    for conn in opened:
        await conn.close()


def others(cluster: Cluster) -> int:
    """Client sessions but the one asking (a closed session's backend takes a moment to go)."""
    ((count,),) = cluster.sql(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    assert isinstance(count, int)
    return count


def deadlocks(cluster: Cluster) -> int:
    ((count,),) = cluster.sql("SELECT sum(deadlocks)::int FROM pg_stat_database")
    assert isinstance(count, int)
    return count


async def session(postgres: Cluster, opened: list[Session]) -> Session:
    conn = await psycopg.AsyncConnection.connect(
        postgres.dsn(SUPERUSER), password=SUPERUSER_PASSWORD, autocommit=True
    )
    opened.append(conn)
    return conn


async def test_a_slow_statement_shows_in_the_top_statements_with_its_mean_time(
    postgres: Cluster, password_file: Path
) -> None:
    postgres.sql(
        "SELECT pg_stat_statements_reset()",
        "SELECT pg_sleep(0.25)",
        "SELECT pg_sleep(0.35)",
        "SELECT count(*) FROM pg_class WHERE relname = 'x'",
        f"ALTER ROLE {MONITOR} PASSWORD '{MONITOR_PASSWORD}'",  # a literal pg_stat_statements keeps
    )
    collection = await PostgresCollector(agent_config(postgres, password_file)).collect()
    assert check_of(collection, "postgres:statements").status == "ok"
    top = statements(collection)
    assert top["SELECT pg_sleep($1)"]["calls"] == 2
    assert 0.29 <= top["SELECT pg_sleep($1)"]["mean_seconds"] < 1.0
    assert 0.59 <= top["SELECT pg_sleep($1)"]["total_seconds"] < 2.0
    assert "SELECT count(*) FROM pg_class WHERE relname = $1" in top
    # the literal a utility statement kept is masked, and the agent's own queries are left out
    assert f"ALTER ROLE {MONITOR} PASSWORD '?'" in top
    labels = json.dumps([s.labels for s in collection.samples])
    assert MONITOR_PASSWORD not in labels
    assert "jarvis-monitor" not in labels
    by_mean = sorted(top, key=lambda text: top[text]["mean_seconds"], reverse=True)
    assert by_mean[0] == "SELECT pg_sleep($1)"


async def test_connections_up_to_85_percent_of_max_connections_fire_the_saturation_warning(
    postgres: Cluster,
    password_file: Path,
    sessions: list[Session],
) -> None:
    """16 sessions and the agent's own of 20: 85%, which warns after its `for` and is no critical."""
    for _ in range(16):
        await session(postgres, sessions)
    await wait_until(lambda: others(postgres) == 16)
    collection = await PostgresCollector(agent_config(postgres, password_file)).collect()
    assert value(collection, vocab.POSTGRES_CONNECTIONS_MAX) == 20
    assert value(collection, vocab.POSTGRES_CONNECTIONS_TOTAL) == 17
    assert value(collection, vocab.POSTGRES_CONNECTIONS, state="idle") == 16
    assert value(collection, vocab.POSTGRES_CONNECTIONS_PERCENT) == 85.0
    batch = MetricBatch(host="db01", agent="postgres", ts=0, interval=10, samples=collection.samples)
    driver = Driver(EvaluatorConfig())
    for t in range(0, 301, 10):  # the same reading, every cycle for the rule's 5 minutes
        driver.at(t, msgspec.structs.replace(batch, ts=t))
    alerts, _ = driver.take()
    firing = [a for a in alerts if a.status == "firing"]
    assert [(a.rule, a.severity, a.labels["server"]) for a in firing] == [
        ("postgres_connections_high", "warning", "postgres")
    ]
    assert firing[0].summary == "postgres on db01: 85% of max_connections in use"


async def test_a_session_holding_a_lock_shows_a_waiter(
    postgres: Cluster,
    password_file: Path,
    sessions: list[Session],
) -> None:
    holder, waiter = await session(postgres, sessions), await session(postgres, sessions)
    await holder.execute("CREATE TABLE IF NOT EXISTS locked (id int)")
    await holder.execute("BEGIN")
    await holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
    blocked = asyncio.create_task(waiter.execute("SELECT count(*) FROM locked"))
    try:
        # waitstart is set a moment after the wait begins
        waiting = "SELECT 1 FROM pg_locks WHERE NOT granted AND waitstart IS NOT NULL"
        await wait_until(lambda: bool(postgres.sql(waiting)), 10)
        collection = await PostgresCollector(agent_config(postgres, password_file)).collect()
    finally:
        await holder.execute("ROLLBACK")
        await asyncio.wait_for(blocked, 10)
    assert value(collection, vocab.POSTGRES_LOCKS_WAITING) == 1
    assert value(collection, vocab.POSTGRES_LOCKS_OLDEST_WAIT) > 0
    assert value(collection, vocab.POSTGRES_CONNECTIONS, state="idle in transaction") == 1
    # the holder sits idle in its transaction, which is older than the waiter's running query
    idle = value(collection, vocab.POSTGRES_OLDEST_IDLE_IN_TRANSACTION)
    running = value(collection, vocab.POSTGRES_OLDEST_QUERY)
    assert 0 < running <= idle <= value(collection, vocab.POSTGRES_OLDEST_TRANSACTION)


async def test_a_deadlock_is_counted_in_the_cycle_after_it(
    postgres: Cluster,
    password_file: Path,
    sessions: list[Session],
) -> None:
    collector = PostgresCollector(agent_config(postgres, password_file))
    first, second = await session(postgres, sessions), await session(postgres, sessions)
    await first.execute("CREATE TABLE IF NOT EXISTS pair (id int PRIMARY KEY)")
    await first.execute("INSERT INTO pair VALUES (1), (2) ON CONFLICT DO NOTHING")
    await collector.collect()  # the counters' baseline
    before = deadlocks(postgres)
    for conn, row in ((first, 1), (second, 2)):
        await conn.execute("BEGIN")
        await conn.execute("UPDATE pair SET id = id WHERE id = %s", (row,))
    crossing = [
        asyncio.create_task(first.execute("UPDATE pair SET id = id WHERE id = 2")),
        asyncio.create_task(second.execute("UPDATE pair SET id = id WHERE id = 1")),
    ]
    outcomes = await asyncio.wait_for(asyncio.gather(*crossing, return_exceptions=True), 10)
    assert sum(isinstance(o, psycopg.errors.DeadlockDetected) for o in outcomes) == 1
    for conn in (first, second):
        await conn.execute("ROLLBACK")
        if conn.info.server_version >= 150000:  # else a backend may hold its counts for 10 s
            await conn.execute("SELECT pg_stat_force_next_flush()")
    # a backend hands its counts to the statistics a moment after its transaction ends
    await wait_until(lambda: deadlocks(postgres) > before, 20)
    collection = await collector.collect()
    assert value(collection, vocab.POSTGRES_DEADLOCKS) == 1
    assert value(collection, vocab.POSTGRES_TPS) > 0
    assert 0 < value(collection, vocab.POSTGRES_CACHE_HIT_RATIO) <= 1


async def test_a_stopped_server_is_database_unreachable_within_its_for(
    own_postgres: Cluster, password_file: Path
) -> None:
    collector = PostgresCollector(agent_config(own_postgres, password_file))
    up = check_of(await collector.collect(), "postgres")
    assert up.status == "ok"
    assert up.latency is not None
    assert up.latency < 1
    await asyncio.to_thread(own_postgres.stop)
    down = await collector.collect()
    assert check_of(down, "postgres").status == "critical"
    assert check_of(down, "postgres").detail == "login failed: connection refused"
    assert value(down, vocab.POSTGRES_UP) == 0
    driver = Driver(EvaluatorConfig())
    driver.at(0, up.to_event("db01", "postgres", 0))
    for t in (10, 40, 69):
        driver.at(t, check_of(down, "postgres").to_event("db01", "postgres", t))
    alerts, _ = driver.take()
    assert [a.status for a in alerts if a.rule == "database_unreachable"] == ["pending"]
    driver.at(70)  # 60 s after the first failed login: the rule's `for`
    alerts, _ = driver.take()
    firing = [a for a in alerts if a.status == "firing"]
    assert [(a.rule, a.summary, a.starts_at) for a in firing] == [
        ("database_unreachable", "database unreachable: postgres", 70)
    ]


async def test_a_query_stuck_on_a_lock_costs_the_query_timeout_not_the_cycle(
    postgres: Cluster, password_file: Path, sessions: list[Session]
) -> None:
    """pg_stat_statements locked by another session: that reading is cut at query_timeout, and the
    server is a warning saying so, with everything else it gave (the DSN's own options kept)."""
    dsn = postgres.dsn() + "?options=-c%20search_path%3Dpublic"
    config = agent_config(
        postgres,
        password_file,
        query_timeout="300ms",
        servers=[{"name": "postgres", "dsn": dsn, "password_file": str(password_file)}],
    )
    holder = await session(postgres, sessions)
    await holder.execute("BEGIN")
    await holder.execute("LOCK TABLE pg_stat_statements IN ACCESS EXCLUSIVE MODE")
    try:
        collection = await asyncio.wait_for(PostgresCollector(config).collect(), 5)
    finally:
        await holder.execute("ROLLBACK")
    check = check_of(collection, "postgres")
    assert check.status == "warning"
    assert "reading pg_stat_statements failed: canceling statement due to statement timeout" in check.detail
    assert value(collection, vocab.POSTGRES_CONNECTIONS_MAX) == 20  # what came before the stuck query


async def test_a_wrong_password_is_a_clear_unhealthy_reason_and_the_other_server_still_reads(
    postgres: Cluster, password_file: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    config = agent_config(
        postgres,
        password_file,
        servers=[
            {"name": "postgres", "dsn": postgres.dsn(), "password_file": str(password_file)},
            {"name": "db-wrong", "dsn": postgres.dsn(), "password_file": str(wrong)},
        ],
    )
    collection = await PostgresCollector(config).collect()
    bad = check_of(collection, "db-wrong")
    assert (bad.status, bad.detail) == (
        "critical",
        f'login failed: password authentication failed for user "{MONITOR}"',
    )
    assert "not-the-password" not in json.dumps([bad.detail, bad.labels])
    assert check_of(collection, "postgres").status == "ok"


async def test_a_database_without_pg_stat_statements_is_a_warning_that_says_what_to_run(
    postgres: Cluster, password_file: Path
) -> None:
    config = agent_config(
        postgres,
        password_file,
        servers=[
            {"name": "db-bare", "dsn": postgres.dsn(database="bare"), "password_file": str(password_file)}
        ],
    )
    collection = await PostgresCollector(config).collect()
    assert check_of(collection, "db-bare").status == "ok"  # reachable all the same
    statements_check = check_of(collection, "db-bare:statements")
    assert statements_check.status == "warning"
    assert "CREATE EXTENSION pg_stat_statements" in statements_check.detail
    assert "'bare'" in statements_check.detail


async def test_the_extension_created_but_not_preloaded_is_a_warning_not_a_failure(
    password_file: Path,
) -> None:
    cluster = Cluster(require_postgres())
    try:
        await asyncio.to_thread(cluster.init, preload=False)
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(cluster.provision)
        collection = await PostgresCollector(agent_config(cluster, password_file)).collect()
    finally:
        await asyncio.to_thread(cluster.remove)
    assert check_of(collection, "postgres").status == "ok"
    statements_check = check_of(collection, "postgres:statements")
    assert statements_check.status == "warning"
    assert "shared_preload_libraries" in statements_check.detail


async def test_a_primary_shows_its_replica_s_lag_and_the_standby_its_replay_delay(
    own_postgres: Cluster, password_file: Path
) -> None:
    standby = await asyncio.to_thread(own_postgres.standby)
    try:
        await asyncio.to_thread(standby.start)
        own_postgres.sql("CREATE TABLE replicated (id int)", "INSERT INTO replicated VALUES (1)")
        replayed = "SELECT pg_last_xact_replay_timestamp() IS NOT NULL"
        await wait_until(lambda: standby.sql(replayed) == [(True,)], 30)
        config = agent_config(
            own_postgres,
            password_file,
            servers=[
                {"name": "db-primary", "dsn": own_postgres.dsn(), "password_file": str(password_file)},
                {"name": "db-standby", "dsn": standby.dsn(), "password_file": str(password_file)},
            ],
        )
        collection = await PostgresCollector(config).collect()
    finally:
        await asyncio.to_thread(standby.remove)
    assert value(collection, vocab.POSTGRES_IN_RECOVERY, server="db-primary") == 0
    assert value(collection, vocab.POSTGRES_IN_RECOVERY, server="db-standby") == 1
    (replica,) = [s.labels["replica"] for s in collection.samples if s.name == vocab.POSTGRES_REPLICATION_LAG]
    assert replica.endswith("@127.0.0.1")
    assert value(collection, vocab.POSTGRES_REPLICATION_LAG, server="db-primary") >= 0
    assert value(collection, vocab.POSTGRES_REPLICATION_LAG_BYTES, server="db-primary") >= 0
    assert value(collection, vocab.POSTGRES_REPLAY_DELAY, server="db-standby") >= 0
    assert check_of(collection, "db-standby").status == "ok"


async def test_a_cycle_reaches_nats_as_metrics_health_and_a_heartbeat(
    postgres: Cluster, password_file: Path, bus: Bus
) -> None:
    config = agent_config(postgres, password_file)
    received: list[tuple[str, bytes]] = []

    async def record(msg: Msg) -> None:
        received.append((msg.subject, msg.data))

    sub = await bus.nc.subscribe(f"{bus.subjects.prefix}.>", cb=record)
    runner = AgentRunner(PostgresCollector(config), bus, config, "db01")
    await runner.run_cycle()
    await wait_until(lambda: {s.split(".")[1] for s, _ in received} >= {"metrics", "health", "heartbeat"})
    await sub.unsubscribe()
    health = [
        msgspec.json.decode(data, type=HealthEvent)
        for subject, data in received
        if subject == f"{bus.subjects.prefix}.health.db01.postgres.postgres"
    ]
    assert [(h.agent, h.target, h.status) for h in health] == [("postgres", "postgres", "ok")]
    assert health[0].labels == {
        "server": "postgres",
        "dsn": f"{MONITOR}@127.0.0.1:{postgres.port}/{DATABASE}",
    }


@pytest.fixture
def config_file(tmp_path: Path, postgres: Cluster) -> Path:
    path = tmp_path / "jarvis.toml"
    path.write_text(
        f'[bus]\nprefix = "pgcli"\n[agents.postgres]\ninterval = "1s"\n'
        f'servers = [{{ name = "postgres", dsn = "{postgres.dsn()}" }}]\n'
    )
    return path


async def test_the_agent_command_logs_in_with_pgpassword_and_never_prints_it(
    config_file: Path, nats_server: EmbeddedServer
) -> None:
    """`jarvis-monitor agent postgres` as a user runs it: PGPASSWORD, as psql takes it."""
    env = {**os.environ, "JARVIS_NATS_URL": nats_server.url, "PGPASSWORD": MONITOR_PASSWORD}
    nc = await nats.connect(nats_server.url)
    sub = await nc.subscribe("pgcli.health.*.postgres.postgres")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jarvis_monitor",
        "-c",
        str(config_file),
        "agent",
        "postgres",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        event = msgspec.json.decode((await sub.next_msg(timeout=30)).data, type=HealthEvent)
    finally:
        await nc.close()
        process.terminate()
        output, _ = await asyncio.wait_for(process.communicate(), 20)
    assert (event.status, event.target) == ("ok", "postgres"), event.detail
    assert MONITOR_PASSWORD not in output.decode()


def test_the_agent_command_without_a_server_says_what_to_add(tmp_path: Path) -> None:
    path = tmp_path / "jarvis.toml"
    path.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "jarvis_monitor", "-c", str(path), "agent", "postgres"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no server to watch; add [agents.postgres] servers" in done.stderr


def test_samples_are_all_declared(postgres: Cluster, password_file: Path) -> None:
    """What the agent publishes against a real server is what bus/vocabulary declares."""
    collection = asyncio.run(PostgresCollector(agent_config(postgres, password_file)).collect())
    published = {s.name for s in collection.samples}
    assert published <= set(vocab.POSTGRES_METRICS)
    for sample in collection.samples:
        assert set(sample.labels) <= set(vocab.POSTGRES_METRICS[sample.name].labels), sample
    assert isinstance(collection.samples[0], Sample)
