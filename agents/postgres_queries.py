"""What the database agent asks PostgreSQL, and how the answers become samples.

Every statement starts with MARKER, so the agent's own queries can be left out of the top
statements. The functions below are pure: rows in, samples out, so each is tested without a server.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bus import vocabulary as vocab
from bus.events import Sample

MARKER = "/* jarvis-monitor */"

# Client sessions only: background workers and WAL senders do not take max_connections slots.
STATES = f"""{MARKER}
SELECT coalesce(state, 'unknown'), count(*)::float8
FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1"""

# Other sessions than the agent's own, which would always be the one running now.
ACTIVITY = f"""{MARKER}
SELECT
  coalesce(extract(epoch FROM max(now - query_start) FILTER (WHERE state = 'active')), 0)::float8,
  coalesce(extract(epoch FROM max(now - xact_start)), 0)::float8,
  coalesce(extract(epoch FROM max(now - state_change)
    FILTER (WHERE state LIKE 'idle in transaction%')), 0)::float8,
  (count(*) FILTER (WHERE wait_event_type = 'Lock'))::float8,
  current_setting('max_connections')::float8
FROM pg_stat_activity, clock_timestamp() AS now
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"""

# pg_locks.waitstart is PostgreSQL 14's; before it a wait is timed from the session's last state change.
LOCK_WAIT = f"""{MARKER}
SELECT coalesce(extract(epoch FROM max(clock_timestamp() - waitstart)), 0)::float8
FROM pg_locks WHERE NOT granted"""
LOCK_WAIT_BEFORE_14 = f"""{MARKER}
SELECT coalesce(extract(epoch FROM max(clock_timestamp() - state_change)), 0)::float8
FROM pg_stat_activity WHERE wait_event_type = 'Lock'"""

DATABASES = f"""{MARKER}
SELECT sum(xact_commit + xact_rollback)::float8, sum(deadlocks)::float8,
  sum(blks_hit)::float8, sum(blks_read)::float8, pg_is_in_recovery()
FROM pg_stat_database"""

REPLICAS = f"""{MARKER}
SELECT concat_ws('@', nullif(application_name, ''), coalesce(host(client_addr), 'local')),
  coalesce(extract(epoch FROM replay_lag), 0)::float8,
  coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::float8
FROM pg_stat_replication ORDER BY pid"""

REPLAY_DELAY = f"""{MARKER}
SELECT extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8"""

# Whether the extension is there, and whether this role sees other roles' statements.
STATEMENTS_READY = f"""{MARKER}
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'),
  pg_has_role('pg_read_all_stats', 'USAGE')"""

# The top N by mean and the top N by total time, one row per statement (toplevel or not merged).
# Run with parameters, so a literal % is written %%.
_STATEMENTS = """{marker}
WITH s AS (
  SELECT dbid, userid, queryid, sum(calls) AS calls, sum({total}) AS total_ms, sum(rows) AS rows,
    min(query) AS query
  FROM pg_stat_statements
  WHERE queryid IS NOT NULL AND calls > 0 AND query NOT LIKE '{marker}%%'
  GROUP BY dbid, userid, queryid
), top AS (
  (SELECT * FROM s ORDER BY total_ms / calls DESC LIMIT %(n)s)
  UNION
  (SELECT * FROM s ORDER BY total_ms DESC LIMIT %(n)s)
)
SELECT coalesce(d.datname, top.dbid::text), coalesce(r.rolname, top.userid::text), top.queryid::text,
  top.calls::float8, top.total_ms::float8, top.rows::float8, top.query
FROM top LEFT JOIN pg_database d ON d.oid = top.dbid LEFT JOIN pg_roles r ON r.oid = top.userid"""


def statements_sql(server_version: int) -> str:
    """The top statements query; PostgreSQL 13 renamed total_time to total_exec_time."""
    total = "total_exec_time" if server_version >= 130000 else "total_time"
    return _STATEMENTS.format(marker=MARKER, total=total)


def lock_wait_sql(server_version: int) -> str:
    return LOCK_WAIT if server_version >= 140000 else LOCK_WAIT_BEFORE_14


# -- rows to samples -------------------------------------------------------------------------------


def connection_samples(
    server: str, states: Iterable[tuple[str, float]], max_connections: float
) -> list[Sample]:
    """Sessions by state, their total, max_connections, and the share of it in use."""
    by_state: dict[str, float] = {}
    for state, count in states:
        by_state[state] = by_state.get(state, 0.0) + count
    total = sum(by_state.values())
    labels = {"server": server}
    samples = [
        Sample(vocab.POSTGRES_CONNECTIONS, count, {"server": server, "state": state})
        for state, count in sorted(by_state.items())
    ]
    samples += [
        Sample(vocab.POSTGRES_CONNECTIONS_TOTAL, total, labels),
        Sample(vocab.POSTGRES_CONNECTIONS_MAX, max_connections, labels),
    ]
    if max_connections > 0:
        samples.append(
            Sample(vocab.POSTGRES_CONNECTIONS_PERCENT, round(100.0 * total / max_connections, 2), labels)
        )
    return samples


def activity_samples(
    server: str, oldest_query: float, oldest_transaction: float, oldest_idle: float, waiting: float
) -> list[Sample]:
    labels = {"server": server}
    return [
        Sample(vocab.POSTGRES_OLDEST_QUERY, round(oldest_query, 3), labels),
        Sample(vocab.POSTGRES_OLDEST_TRANSACTION, round(oldest_transaction, 3), labels),
        Sample(vocab.POSTGRES_OLDEST_IDLE_IN_TRANSACTION, round(oldest_idle, 3), labels),
        Sample(vocab.POSTGRES_LOCKS_WAITING, waiting, labels),
    ]


@dataclass
class Counters:
    """Rates and deltas of pg_stat_database's counters between two cycles of one server.

    A counter that went backwards (pg_stat_reset, a restart) gives nothing that cycle, never a
    negative rate or a burst of deadlocks.
    """

    _last: tuple[float, float, float, float] | None = None
    _at: float | None = None

    def update(
        self, server: str, now: float, transactions: float, deadlocks: float, hits: float, reads: float
    ) -> list[Sample]:
        current = (transactions, deadlocks, hits, reads)
        last, at = self._last, self._at
        self._last, self._at = current, now
        if last is None or at is None or now <= at or any(c < p for c, p in zip(current, last, strict=True)):
            return []
        labels = {"server": server}
        samples = [
            Sample(vocab.POSTGRES_TPS, round((transactions - last[0]) / (now - at), 3), labels),
            Sample(vocab.POSTGRES_DEADLOCKS, deadlocks - last[1], labels),
        ]
        accesses = (hits - last[2]) + (reads - last[3])
        if accesses > 0:
            samples.append(
                Sample(vocab.POSTGRES_CACHE_HIT_RATIO, round((hits - last[2]) / accesses, 5), labels)
            )
        return samples


def replica_samples(server: str, rows: Iterable[tuple[str, float, float]]) -> list[Sample]:
    """Per replica of a primary: replay lag in seconds and in bytes; a name seen twice gets a suffix."""
    samples = []
    seen: dict[str, int] = {}
    for name, lag, lag_bytes in rows:
        seen[name] = seen.get(name, 0) + 1
        replica = name if seen[name] == 1 else f"{name}#{seen[name]}"
        labels = {"server": server, "replica": replica}
        samples += [
            Sample(vocab.POSTGRES_REPLICATION_LAG, round(lag, 3), labels),
            Sample(vocab.POSTGRES_REPLICATION_LAG_BYTES, lag_bytes, labels),
        ]
    return samples


# Literals pg_stat_statements leaves in place (utility statements such as ALTER ROLE ... PASSWORD
# keep theirs before PostgreSQL 16). Quoted identifiers and comments are matched only to be kept.
_SQL_TOKENS = re.compile(
    r"""(?P<keep>"(?:[^"]|"")*"?|--[^\n]*|/\*.*?(?:\*/|$))
      | (?P<string>\$\$.*?(?:\$\$|$)|\$(?P<tag>[A-Za-z_]\w*)\$.*?(?:\$(?P=tag)\$|$)
          |(?:[EeBbXxNn]|[Uu]&)?'(?:[^']|'')*'?)
      | (?P<number>(?<![\w$.])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?(?!\w))""",
    re.S | re.X,
)


def _mask(match: re.Match[str]) -> str:
    if match["keep"] is not None:
        return match["keep"]
    return "'?'" if match["string"] is not None else "?"


def mask_literals(query: str) -> str:
    """The query with every string, dollar-quoted or numeric literal replaced by '?' or ?."""
    return _SQL_TOKENS.sub(_mask, query)


def query_label(query: str, limit: int) -> str:
    """A statement's text fit for a label: literals masked, whitespace collapsed, at most `limit` long."""
    text = " ".join(mask_literals(query).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Statement:
    """One row of the top statements."""

    database: str
    user: str
    queryid: str
    calls: float
    total_ms: float
    rows: float
    query: str


@dataclass
class StatementSet:
    """What one reading of pg_stat_statements gave: the statements, or why there are none."""

    statements: list[Statement] = field(default_factory=list)
    problem: str = ""  # a reason to warn: the extension missing, or a role that sees only its own


def statement_samples(server: str, statements: Sequence[Statement], query_length: int) -> list[Sample]:
    """Calls, mean, total and rows of each statement, and one info sample naming its text."""
    samples = []
    for s in statements:
        labels = {"server": server, "database": s.database, "user": s.user, "queryid": s.queryid}
        mean = s.total_ms / s.calls / 1000 if s.calls else 0.0
        samples += [
            Sample(vocab.POSTGRES_STATEMENT_CALLS, s.calls, labels),
            Sample(vocab.POSTGRES_STATEMENT_MEAN, _finite(mean), labels),
            Sample(vocab.POSTGRES_STATEMENT_TOTAL, _finite(s.total_ms / 1000), labels),
            Sample(vocab.POSTGRES_STATEMENT_ROWS, s.rows, labels),
            Sample(
                vocab.POSTGRES_STATEMENT_INFO, 1.0, {**labels, "query": query_label(s.query, query_length)}
            ),
        ]
    return samples


def _finite(value: float) -> float:
    return round(value, 6) if math.isfinite(value) else 0.0
