"""The database agent's config table, apart from its collector: psycopg is loaded only to check a
server's DSN, when one is configured."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from agents.runner_config import AgentConfig
from bus import vocabulary as vocab
from bus.units import Duration

_DATABASE_NAME = re.compile(vocab.DATABASE_NAME)


class PostgresServer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One PostgreSQL server to watch."""

    name: Annotated[
        str,
        Meta(
            description="the server's name: health target, `server` label and SLA check name; it must "
            "read as a database (postgres, postgresql, database or db, alone or followed by -, _, . or :) "
            "so the built-in database_unreachable rule knows it",
            examples=["postgres"],
        ),
    ]
    dsn: Annotated[
        str,
        Meta(
            description="libpq connection URI or key=value string, without a password",
            examples=["postgresql://jarvis@127.0.0.1:5432/jarvis"],
        ),
    ]
    password_file: Annotated[
        str | None,
        Meta(
            description="file holding the password; unset: PGPASSWORD or ~/.pgpass (PGPASSFILE), as psql",
            examples=["/etc/jarvis/postgres-password"],
        ),
    ] = None

    def __post_init__(self) -> None:
        if not _DATABASE_NAME.fullmatch(self.name):
            raise ValueError(
                f"server name {self.name!r} does not read as a database, so no built-in rule would "
                "report it unreachable: name it postgres, db or database, or start with one of them "
                "followed by -, _, . or : (e.g. 'postgres-main')"
            )
        from psycopg import ProgrammingError  # here: a config without servers never loads psycopg
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(self.dsn)
        except ProgrammingError:
            # libpq's message may quote part of the string, and that part may be a password
            raise ValueError(
                "dsn is not a libpq connection string (postgresql://user@host:5432/db or "
                "'host=... dbname=...')"
            ) from None
        if params.get("password"):
            raise ValueError(
                "dsn holds a password; secrets never go in the config file: use password_file, "
                "PGPASSWORD or ~/.pgpass"
            )

    @property
    def display(self) -> str:
        """The DSN fit for logs and labels: user@host:port/db, never a password."""
        return display_dsn(self.dsn)


class PostgresAgentConfig(AgentConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    servers: Annotated[
        list[PostgresServer],
        Meta(
            description="PostgreSQL servers to watch; the agent runs in `up` only when there is one",
            examples=[[{"name": "postgres", "dsn": "postgresql://jarvis@127.0.0.1:5432/jarvis"}]],
        ),
    ] = msgspec.field(default_factory=list)
    top_statements: Annotated[
        int,
        Meta(
            description="statements of pg_stat_statements published: this many by mean time and this "
            "many by total time",
            ge=1,
            le=50,
        ),
    ] = 10
    statements_every: Annotated[
        Duration,
        Meta(
            description="how often the top statements are read (their text makes them the biggest "
            "samples; the counters are cumulative, so a slower pace loses nothing)"
        ),
    ] = Duration(300)
    query_length: Annotated[
        int,
        Meta(
            description="longest statement text published (characters); longer texts are cut", ge=40, le=2000
        ),
    ] = 500
    connect_timeout: Annotated[Duration, Meta(description="longest wait for a login")] = Duration(5)
    query_timeout: Annotated[Duration, Meta(description="statement_timeout of the agent's own queries")] = (
        Duration(5)
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        names = [server.name for server in self.servers]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"servers: each name must be unique; given more than once: {', '.join(twice)}")
        if self.connect_timeout.seconds < 1:
            raise ValueError("connect_timeout must be at least 1s")
        if self.query_timeout.seconds < 0.1:
            raise ValueError("query_timeout must be at least 100ms")

    @property
    def deadline(self) -> float:
        """Each server's share of a cycle: all of the collection's timeout but a margin to publish."""
        return 0.9 * (self.timeout or self.interval).seconds


def display_dsn(dsn: str) -> str:
    """user@host:port/dbname of a DSN, or "(unreadable dsn)"; never a password."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError:
        return "(unreadable dsn)"
    user = f"{params['user']}@" if params.get("user") else ""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = f":{params['port']}" if params.get("port") else ""
    return f"{user}{host}{port}/{params.get('dbname', '')}"


def read_password(server: PostgresServer) -> str | None:
    """The password of `password_file`, or None to leave it to libpq (PGPASSWORD, ~/.pgpass)."""
    if server.password_file is None:
        return None
    try:
        return Path(server.password_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PasswordFileError(f"password_file: cannot read {server.password_file}: {reason}") from None


class PasswordFileError(ValueError):
    """A server's password file cannot be read."""


def password_file_problems(config: PostgresAgentConfig) -> list[str]:
    """Each unreadable password file, one line naming its key path (for check-config and `up`)."""
    problems = []
    for index, server in enumerate(config.servers):
        try:
            read_password(server)
        except PasswordFileError as exc:
            problems.append(f"agents.postgres.servers[{index}].{exc}")
    return problems
