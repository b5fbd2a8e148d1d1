"""The database agent (psycopg 3): per PostgreSQL server, a real login and `SELECT 1`, then its
connections, long queries, lock waits, counters, replication and top statements.

Each cycle logs in afresh, as a new client would: a server that accepts TCP but refuses logins,
or has no connection slot left, is reported unreachable. Every server runs concurrently under its
own deadline, so one that hangs costs only its own result. Passwords come from `password_file`,
PGPASSWORD or ~/.pgpass (libpq's own lookup); DSNs are shown without them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from agents import postgres_queries as q
from agents.postgres_config import PasswordFileError as PasswordFileError  # re-exported with the agent
from agents.postgres_config import PostgresAgentConfig as PostgresAgentConfig
from agents.postgres_config import PostgresServer as PostgresServer
from agents.postgres_config import display_dsn as display_dsn
from agents.postgres_config import password_file_problems as password_file_problems
from agents.postgres_config import read_password as read_password
from agents.runner import Check, Collection
from bus import vocabulary as vocab
from bus.events import Sample, Status
from bus.redact import redact_text

__all__ = ["METRICS", "PostgresAgentConfig", "PostgresCollector", "PostgresServer"]

log = logging.getLogger(__name__)

METRICS = vocab.POSTGRES_METRICS  # what this agent publishes, declared where the wire lives
APPLICATION_NAME = "jarvis-monitor"
MAX_DETAIL = 300


_ATTEMPT = re.compile(r"^(connection failed: )?connection to server (at|on) .*? failed: ")


def login_failure(exc: BaseException, timeout: float) -> str:
    """Why a login failed, as libpq words it without its boilerplate: 'password authentication
    failed for user "jarvis"', 'connection refused', 'timed out after 5s'."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # libpq tries each address in turn: the last failure is the one that ended the login
    attempts = [line for line in lines if _ATTEMPT.match(line)] or lines or [type(exc).__name__]
    reason = _ATTEMPT.sub("", attempts[-1])
    reason = re.sub(r"^(FATAL|ERROR):\s+", "", reason)
    if reason.lower() == "connection refused":
        reason = "connection refused"
    elif "no password supplied" in reason:
        reason = "the server asks for a password and none is set (password_file, PGPASSWORD or ~/.pgpass)"
    return _short(reason)


def _short(text: str) -> str:
    text = " ".join(redact_text(text).split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


@dataclass
class _Reading:
    """What one server gave this cycle, filled in step by step so a timeout keeps what came."""

    server: PostgresServer
    samples: list[Sample] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    step: str = "logging in"
    connect_seconds: float | None = None
    ping_seconds: float | None = None
    summary: str = ""
    problems: list[str] = field(default_factory=list)


class PostgresCollector:
    """Logs in to every configured server each cycle and reads its statistics."""

    name = vocab.POSTGRES_AGENT

    def __init__(
        self,
        config: PostgresAgentConfig,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self._environ = environ
        self._counters: dict[str, q.Counters] = {server.name: q.Counters() for server in config.servers}
        self._statements_due: dict[str, float] = {}
        self._failing: set[str] = set()  # servers whose last login failed: their recovery is logged once

    async def collect(self) -> Collection:
        readings = await asyncio.gather(*(self._read(server) for server in self.config.servers))
        collection = Collection()
        for reading in readings:
            collection.samples += reading.samples
            collection.checks += reading.checks
        return collection

    async def _read(self, server: PostgresServer) -> _Reading:
        reading = _Reading(server)
        try:
            async with asyncio.timeout(self.config.deadline):
                await self._session(reading)
        except TimeoutError:
            reason = f"timed out after {self.config.deadline:g}s {reading.step}"
            if reading.ping_seconds is None:
                return self._unreachable(reading, reason)
            reading.problems.append(reason)
        except PasswordFileError as exc:
            return self._unreachable(reading, f"cannot log in: {exc}")
        except (psycopg.Error, OSError) as exc:
            if reading.connect_seconds is None:
                timeout = self.config.connect_timeout.seconds
                return self._unreachable(reading, f"login failed: {login_failure(exc, timeout)}")
            if reading.ping_seconds is None:
                return self._unreachable(reading, f"SELECT 1 failed: {_short(str(exc))}")
            reading.problems.append(f"{reading.step} failed: {_short(str(exc))}")
        except Exception as exc:  # a bug here must not cost the other servers their results
            log.exception("postgres agent: reading %s failed", server.name)
            if reading.ping_seconds is None:
                return self._unreachable(reading, f"check failed: {_short(repr(exc))}")
            reading.problems.append(f"{reading.step} failed: {_short(repr(exc))}")
        return self._reachable(reading)

    async def _session(self, reading: _Reading) -> None:
        server = reading.server
        password = read_password(server)
        started = self.clock()
        conn = await psycopg.AsyncConnection.connect(
            server.dsn,
            autocommit=True,
            prepare_threshold=None,  # a fresh session each cycle: preparing would only cost a round trip
            connect_timeout=max(2, math.ceil(self.config.connect_timeout.seconds)),  # libpq's minimum
            application_name=APPLICATION_NAME,
            options=self._options(server),
            password=password,  # None leaves it to libpq: PGPASSWORD, ~/.pgpass
        )
        try:
            reading.connect_seconds = self.clock() - started
            reading.step = "running SELECT 1"
            started = self.clock()
            await conn.execute("SELECT 1")
            reading.ping_seconds = self.clock() - started
            await self._statistics(conn, reading)
        finally:
            await conn.close()

    def _options(self, server: PostgresServer) -> str:
        """The DSN's own `options`, if any, and a statement_timeout for the agent's queries."""
        own = conninfo_to_dict(server.dsn).get("options") or ""
        timeout = f"-c statement_timeout={int(self.config.query_timeout.seconds * 1000)}"
        return f"{own} {timeout}".strip()

    async def _statistics(self, conn: psycopg.AsyncConnection[Any], reading: _Reading) -> None:
        name = reading.server.name
        version = conn.info.server_version
        reading.step = "reading pg_stat_activity"
        states = [(str(state), float(count)) for state, count in await _rows(conn, q.STATES)]
        oldest_query, oldest_xact, oldest_idle, waiting, max_connections = (await _rows(conn, q.ACTIVITY))[0]
        ((lock_wait,),) = await _rows(conn, q.lock_wait_sql(version))
        samples = q.connection_samples(name, states, max_connections)
        samples += q.activity_samples(name, oldest_query, oldest_xact, oldest_idle, waiting)
        samples.append(Sample(vocab.POSTGRES_LOCKS_OLDEST_WAIT, round(lock_wait, 3), {"server": name}))
        total = next((s.value for s in samples if s.name == vocab.POSTGRES_CONNECTIONS_TOTAL), 0.0)
        reading.summary = f"{total:.0f} of {max_connections:.0f} connections"
        reading.samples += samples

        reading.step = "reading pg_stat_database"
        ((transactions, deadlocks, hits, reads, in_recovery),) = await _rows(conn, q.DATABASES)
        counters = self._counters.setdefault(name, q.Counters())
        reading.samples += counters.update(name, self.clock(), transactions, deadlocks, hits, reads)
        reading.samples.append(Sample(vocab.POSTGRES_IN_RECOVERY, float(bool(in_recovery)), {"server": name}))

        reading.step = "reading replication"
        if in_recovery:
            ((delay,),) = await _rows(conn, q.REPLAY_DELAY)
            if delay is not None:
                reading.samples.append(Sample(vocab.POSTGRES_REPLAY_DELAY, round(delay, 3), {"server": name}))
        else:
            reading.samples += q.replica_samples(name, await _rows(conn, q.REPLICAS))

        now = self.clock()
        if now >= self._statements_due.get(name, now):
            reading.step = "reading pg_stat_statements"
            found = await self._statements(conn, version)
            self._statements_due[name] = now + self.config.statements_every.seconds
            reading.samples += q.statement_samples(name, found.statements, self.config.query_length)
            target = vocab.STATEMENTS_TARGET.format(server=name)
            status: Status = "warning" if found.problem else "ok"
            detail = found.problem or f"pg_stat_statements: {len(found.statements)} top statements"
            reading.checks.append(Check(target, status, detail=detail, labels={"server": name}))

    async def _statements(self, conn: psycopg.AsyncConnection[Any], version: int) -> q.StatementSet:
        ((extension, sees_all),) = await _rows(conn, q.STATEMENTS_READY)
        database = conn.info.dbname
        if extension is None:
            return q.StatementSet(
                problem=f"pg_stat_statements is not installed in database {database!r}: run CREATE "
                "EXTENSION pg_stat_statements there (it also needs shared_preload_libraries = "
                "'pg_stat_statements' in postgresql.conf and a restart); no slow-query data until then"
            )
        try:
            rows = await _rows(conn, q.statements_sql(version), {"n": self.config.top_statements})
        except psycopg.errors.ObjectNotInPrerequisiteState:
            return q.StatementSet(
                problem="pg_stat_statements is installed but not loaded: add it to "
                "shared_preload_libraries in postgresql.conf and restart PostgreSQL; no slow-query data "
                "until then"
            )
        statements = [
            q.Statement(str(db), str(user), str(qid), float(calls), float(total), float(n), str(text or ""))
            for db, user, qid, calls, total, n, text in rows
        ]
        problem = (
            ""
            if sees_all
            else f"role {conn.info.user!r} sees only its own statements: GRANT pg_monitor TO {conn.info.user}"
        )
        return q.StatementSet(statements=statements, problem=problem)

    def _unreachable(self, reading: _Reading, reason: str) -> _Reading:
        server = reading.server
        if server.name not in self._failing:
            log.warning("postgres agent: %s (%s) unreachable: %s", server.name, server.display, reason)
            self._failing.add(server.name)
        reading.samples = [Sample(vocab.POSTGRES_UP, 0.0, {"server": server.name})]
        reading.checks = [Check(server.name, "critical", detail=reason, labels=_labels(server))]
        return reading

    def _reachable(self, reading: _Reading) -> _Reading:
        server = reading.server
        if server.name in self._failing:
            log.info("postgres agent: %s (%s) answers again", server.name, server.display)
            self._failing.discard(server.name)
        labels = {"server": server.name}
        connect, ping = reading.connect_seconds or 0.0, reading.ping_seconds or 0.0
        reading.samples[:0] = [
            Sample(vocab.POSTGRES_UP, 1.0, labels),
            Sample(vocab.POSTGRES_CONNECT_SECONDS, round(connect, 6), labels),
            Sample(vocab.POSTGRES_PING_SECONDS, round(ping, 6), labels),
        ]
        detail = f"login {connect * 1000:.0f} ms, SELECT 1 {ping * 1000:.1f} ms"
        if reading.summary:
            detail += f"; {reading.summary}"
        status: Status = "ok"
        if reading.problems:
            status, detail = "warning", f"{detail}; but {'; '.join(reading.problems)}"
        reading.checks.insert(
            0, Check(server.name, status, latency=ping, detail=_short(detail), labels=_labels(server))
        )
        return reading


def _labels(server: PostgresServer) -> dict[str, str]:
    return {"server": server.name, "dsn": server.display}


async def _rows(
    conn: psycopg.AsyncConnection[Any], sql: str, params: Mapping[str, object] | None = None
) -> list[tuple[Any, ...]]:
    """Every row of one of the agent's own statements (constant SQL from postgres_queries)."""
    cursor = await conn.execute(sql, params)
    return await cursor.fetchall()
