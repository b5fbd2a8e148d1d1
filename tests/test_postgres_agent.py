"""The database agent without a server: its config, its readings of rows, its failures, its rules."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from agents.postgres import PostgresAgentConfig, PostgresCollector, display_dsn, login_failure
from agents.postgres_queries import (
    Counters,
    Statement,
    connection_samples,
    mask_literals,
    query_label,
    replica_samples,
    statement_samples,
)
from bus import vocabulary as vocab
from bus.events import Sample
from bus.units import dec_hook
from evaluator.config import EvaluatorConfig
from evaluator.testing import Driver, health, metrics
from jarvis_monitor.config import ConfigError, parse_config
from jarvis_monitor.stack import enabled_agents


def config(**settings: object) -> PostgresAgentConfig:
    return msgspec.convert(settings, PostgresAgentConfig, dec_hook=dec_hook)


def problems(document: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config({"agents": {"postgres": document}})
    return raised.value.problems


# -- config -----------------------------------------------------------------------------------------


def test_a_server_whose_name_does_not_read_as_a_database_is_refused_with_a_way_out() -> None:
    """No built-in rule would report 'main' unreachable: the file is refused, naming the key."""
    found = problems({"servers": [{"name": "main", "dsn": "postgresql://jarvis@db:5432/app"}]})
    assert len(found) == 1
    assert found[0].startswith("agents.postgres.servers[0]")
    assert "'main' does not read as a database" in found[0]
    assert "postgres-main" in found[0]


def test_a_password_in_the_dsn_is_refused_and_never_echoed() -> None:
    found = problems({"servers": [{"name": "postgres", "dsn": "postgresql://jarvis:s3cret@db/app"}]})
    assert len(found) == 1
    assert "dsn holds a password" in found[0]
    assert "s3cret" not in found[0]
    keyword = problems({"servers": [{"name": "postgres", "dsn": "host=db password=s3cret dbname=app"}]})
    assert "dsn holds a password" in keyword[0]
    assert "s3cret" not in keyword[0]


def test_an_unparsable_dsn_is_refused_without_quoting_it() -> None:
    found = problems({"servers": [{"name": "postgres", "dsn": "host=db s3cret"}]})
    assert "dsn is not a libpq connection string" in found[0]
    assert "s3cret" not in found[0]


def test_two_servers_of_one_name_are_refused() -> None:
    server = {"name": "postgres", "dsn": "postgresql://jarvis@db/app"}
    found = problems({"servers": [server, server]})
    assert found == ["agents.postgres: servers: each name must be unique; given more than once: postgres"]


def test_an_unreadable_password_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from jarvis_monitor.config import load_config

    path = tmp_path / "jarvis.toml"
    missing = tmp_path / "nope"
    path.write_text(
        f'[agents.postgres]\nservers = [{{ name = "postgres", dsn = "postgresql://j@db/app", '
        f'password_file = "{missing}" }}]\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    assert raised.value.problems == [
        f"agents.postgres.servers[0].password_file: cannot read {missing}: No such file or directory"
    ]


def test_up_runs_the_database_agent_only_with_a_server_to_watch() -> None:
    assert vocab.POSTGRES_AGENT not in enabled_agents(parse_config({}))
    watched = parse_config(
        {"agents": {"postgres": {"servers": [{"name": "postgres", "dsn": "postgresql://jarvis@db/app"}]}}}
    )
    assert vocab.POSTGRES_AGENT in enabled_agents(watched)


def test_display_dsn_never_shows_a_password() -> None:
    assert (
        display_dsn("postgresql://jarvis:pw@db.example:6432/app?sslmode=require")
        == "jarvis@db.example:6432/app"
    )
    assert display_dsn("host=db dbname=app user=jarvis password=pw") == "jarvis@db/app"
    assert display_dsn("host=db s3cret") == "(unreadable dsn)"


# -- readings ---------------------------------------------------------------------------------------


def test_connections_are_counted_by_state_against_max_connections() -> None:
    samples = connection_samples("postgres", [("active", 3), ("idle", 10), ("idle in transaction", 4)], 20)
    by_name = {(s.name, s.labels.get("state")): s.value for s in samples}
    assert by_name[(vocab.POSTGRES_CONNECTIONS, "idle in transaction")] == 4
    assert by_name[(vocab.POSTGRES_CONNECTIONS_TOTAL, None)] == 17
    assert by_name[(vocab.POSTGRES_CONNECTIONS_PERCENT, None)] == 85.0
    assert all(s.labels["server"] == "postgres" for s in samples)


def test_counters_give_rates_between_cycles_and_nothing_after_a_reset() -> None:
    counters = Counters()
    assert counters.update("db", 0.0, transactions=1000, deadlocks=2, hits=900, reads=100) == []
    second = {s.name: s.value for s in counters.update("db", 10.0, 1500, 3, 1890, 110)}
    assert second == {
        vocab.POSTGRES_TPS: 50.0,
        vocab.POSTGRES_DEADLOCKS: 1,
        vocab.POSTGRES_CACHE_HIT_RATIO: 0.99,
    }
    assert counters.update("db", 20.0, 10, 0, 5, 1) == []  # pg_stat_reset: no negative rates
    idle = {s.name for s in counters.update("db", 30.0, 10, 0, 5, 1)}
    assert vocab.POSTGRES_CACHE_HIT_RATIO not in idle  # no block read at all: no ratio to give


def test_replicas_of_one_name_get_series_of_their_own() -> None:
    samples = replica_samples("db", [("walreceiver@10.0.0.5", 1.5, 4096), ("walreceiver@10.0.0.5", 0, 0)])
    replicas = [s.labels["replica"] for s in samples if s.name == vocab.POSTGRES_REPLICATION_LAG]
    assert replicas == ["walreceiver@10.0.0.5", "walreceiver@10.0.0.5#2"]


@pytest.mark.parametrize(
    ("query", "masked"),
    [
        ("ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD '?'"),
        (
            "SELECT * FROM t WHERE a = $1 AND b = 42 AND c = 1.5e3",
            "SELECT * FROM t WHERE a = $1 AND b = ? AND c = ?",
        ),
        ("SELECT E'it''s', $$body$$, $fn$x$fn$", "SELECT '?', '?', '?'"),
        ('SELECT "it\'s", t1.c2 FROM t1', 'SELECT "it\'s", t1.c2 FROM t1'),
        ("/* app='web' */ SELECT 1 -- it's 2", "/* app='web' */ SELECT ? -- it's 2"),
        ("CREATE USER u PASSWORD 'unterminated", "CREATE USER u PASSWORD '?'"),
    ],
)
def test_literals_pg_stat_statements_left_are_masked(query: str, masked: str) -> None:
    assert mask_literals(query) == masked


def test_a_statement_label_is_bounded_and_on_one_line() -> None:
    label = query_label("SELECT\n   a,\n\tb FROM t WHERE x = 'secret'" + " AND y = $1" * 100, 60)
    assert len(label) == 60
    assert label.startswith("SELECT a, b FROM t WHERE x = '?' AND y = $1")
    assert label.endswith("…")
    assert "secret" not in label


def test_each_top_statement_is_published_with_its_times_and_one_info_sample() -> None:
    statement = Statement("app", "web", "-42", calls=4, total_ms=2000, rows=8, query="SELECT pg_sleep($1)")
    samples = statement_samples("postgres", [statement], 500)
    values = {s.name: s.value for s in samples}
    assert values[vocab.POSTGRES_STATEMENT_CALLS] == 4
    assert values[vocab.POSTGRES_STATEMENT_MEAN] == 0.5
    assert values[vocab.POSTGRES_STATEMENT_TOTAL] == 2.0
    assert values[vocab.POSTGRES_STATEMENT_ROWS] == 8
    (info,) = [s for s in samples if s.name == vocab.POSTGRES_STATEMENT_INFO]
    assert info.labels == {
        "server": "postgres",
        "database": "app",
        "user": "web",
        "queryid": "-42",
        "query": "SELECT pg_sleep($1)",
    }
    assert {s.name for s in samples} <= set(vocab.POSTGRES_METRICS)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
            'password authentication failed for user "jarvis"',
            'password authentication failed for user "jarvis"',
        ),
        (
            'connection failed: connection to server at "::1", port 5432 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?\n"
            'connection to server at "127.0.0.1", port 5432 failed: FATAL:  the database system is '
            "starting up",
            "the database system is starting up",
        ),
        (
            'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?",
            "connection refused",
        ),
        (
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: fe_sendauth: '
            "no password supplied",
            "the server asks for a password and none is set (password_file, PGPASSWORD or ~/.pgpass)",
        ),
    ],
)
def test_a_login_failure_is_worded_as_libpq_says_it_without_its_boilerplate(
    message: str, reason: str
) -> None:
    assert login_failure(RuntimeError(message), 5) == reason


# -- failures against sockets on loopback -----------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts and never says a word: a PostgreSQL that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_refused_login_is_a_critical_check_and_up_0_not_an_exception() -> None:
    port = closed_port()
    collector = PostgresCollector(
        config(servers=[{"name": "postgres", "dsn": f"postgresql://j@127.0.0.1:{port}/app"}])
    )
    collection = await collector.collect()
    (check,) = collection.checks
    assert (check.target, check.status, check.detail) == (
        "postgres",
        "critical",
        "login failed: connection refused",
    )
    assert collection.samples == [Sample(vocab.POSTGRES_UP, 0.0, {"server": "postgres"})]


async def test_a_server_that_never_answers_costs_its_own_result_within_the_deadline(
    silent_server: int,
) -> None:
    """One hung server is critical after the deadline; the other server's result is still there."""
    closed = closed_port()
    collector = PostgresCollector(
        config(
            interval="2s",
            servers=[
                {"name": "db-hung", "dsn": f"postgresql://j@127.0.0.1:{silent_server}/app"},
                {"name": "db-gone", "dsn": f"postgresql://j@127.0.0.1:{closed}/app"},
            ],
        )
    )
    collection = await asyncio.wait_for(collector.collect(), 5)
    checks = {c.target: c for c in collection.checks}
    assert checks["db-hung"].status == "critical"
    assert checks["db-hung"].detail == "timed out after 1.8s logging in"
    assert checks["db-gone"].detail == "login failed: connection refused"


async def test_an_unreadable_password_file_at_run_time_is_a_critical_check(tmp_path: Path) -> None:
    """A file removed after start (a rotated secret) makes the server unhealthy, not the agent crash."""
    collector = PostgresCollector(
        config(
            servers=[
                {
                    "name": "postgres",
                    "dsn": "postgresql://j@127.0.0.1:1/app",
                    "password_file": str(tmp_path / "pw"),
                }
            ]
        )
    )
    (check,) = (await collector.collect()).checks
    assert check.status == "critical"
    assert check.detail.startswith("cannot log in: password_file: cannot read ")


# -- rules ------------------------------------------------------------------------------------------


def pg(*samples: tuple[str, float], ts: float = 0.0) -> object:
    return metrics(
        "db01", [(name, value, {"server": "postgres"}) for name, value in samples], agent="postgres", ts=ts
    )


def firing(driver: Driver) -> dict[str, str]:
    alerts, _ = driver.take()
    return {a.rule: a.summary for a in alerts if a.status == "firing"}


def test_connections_above_80_percent_for_5_minutes_warn_and_above_95_for_a_minute_is_critical() -> None:
    driver = Driver(EvaluatorConfig())
    for t in range(0, 301, 30):
        driver.at(t, pg((vocab.POSTGRES_CONNECTIONS_PERCENT, 85), ts=t))  # type: ignore[arg-type]
    assert firing(driver) == {"postgres_connections_high": "postgres on db01: 85% of max_connections in use"}
    for t in range(330, 400, 10):
        driver.at(t, pg((vocab.POSTGRES_CONNECTIONS_PERCENT, 96), ts=t))  # type: ignore[arg-type]
    assert firing(driver) == {
        "postgres_connections_critical": "postgres on db01: 96% of max_connections in use, nearly full"
    }
    # the critical alert inhibits the warning of the same server: one page, not two
    active = {a.rule: a for a in driver.engine.active(driver.now)}
    assert active["postgres_connections_high"].inhibited_by
    assert not active["postgres_connections_critical"].inhibited_by


def test_a_query_running_over_5_minutes_and_a_lock_wait_over_a_minute_fire_at_once() -> None:
    driver = Driver(EvaluatorConfig())
    driver.at(
        0,
        pg(  # type: ignore[arg-type]
            (vocab.POSTGRES_OLDEST_QUERY, 299),
            (vocab.POSTGRES_LOCKS_OLDEST_WAIT, 59),
        ),
    )
    assert firing(driver) == {}
    driver.at(
        10,
        pg(  # type: ignore[arg-type]
            (vocab.POSTGRES_OLDEST_QUERY, 309),
            (vocab.POSTGRES_LOCKS_OLDEST_WAIT, 69),
            ts=10,
        ),
    )
    assert firing(driver) == {
        "postgres_long_query": "postgres on db01: a query has been running for 309s",
        "postgres_lock_wait": "postgres on db01: a session has waited 69s for a lock",
    }


def test_the_database_agents_failed_login_is_database_unreachable_and_its_statements_warning_is_not() -> None:
    driver = Driver(EvaluatorConfig())
    for t in (0, 30, 60):
        driver.at(
            t,
            health("db01", "postgres", "postgres", "critical", detail="login failed: connection refused"),
            health("db01", "postgres", "postgres:statements", "warning", detail="not installed"),
        )
    assert firing(driver) == {"database_unreachable": "database unreachable: postgres"}


async def test_once_is_critical_for_a_database_that_refuses_logins_and_skips_the_agent_without_servers() -> (
    None
):
    """`jarvis-monitor once` (the runbook's --once) runs the database agent only with a server."""
    from jarvis_monitor.evaluator_cli import run_once

    agents = {"host": {"enabled": False}, "container": {"enabled": False}}
    bare = await run_once(parse_config({"agents": agents}))
    assert vocab.POSTGRES_AGENT not in {c.agent for c in bare.checks}
    dsn = f"postgresql://jarvis@127.0.0.1:{closed_port()}/app"
    watched = parse_config(
        {"agents": {**agents, "postgres": {"servers": [{"name": "postgres", "dsn": dsn}]}}}
    )
    result = await run_once(watched)
    assert result.exit_code == 2
    assert [a.rule for a in result.alerts] == ["database_unreachable"]
