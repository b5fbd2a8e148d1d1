"""A real PostgreSQL for tests: a throwaway cluster made with Debian's initdb, on loopback.

Each cluster lives in its own temporary directory, listens on 127.0.0.1 and a free port, preloads
pg_stat_statements and has a small max_connections. PostgreSQL refuses to run as root, so under
root (here and in CI) its programs run as the `postgres` user Debian's package creates (or
`nobody`), in a directory given to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import pytest

from tests.conftest import require

SUPERUSER = "jarvis_admin"
SUPERUSER_PASSWORD = "admin-secret"
MONITOR = "jarvis"  # the agent's role: pg_monitor, as docs/operations.md recommends
MONITOR_PASSWORD = "monitor-secret"
DATABASE = "app"
PROGRAMS = ("initdb", "pg_ctl", "postgres", "pg_basebackup")


def bin_dir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    candidates += versions
    return next((d for d in candidates if all((d / program).is_file() for program in PROGRAMS)), None)


def require_postgres() -> Path:
    """The directory of PostgreSQL's programs; skips (fails under CI=true) without them."""
    found = bin_dir()
    require(found is not None, "PostgreSQL is not installed (apt-get install postgresql)")
    assert found is not None
    return found


def _run_as() -> str | None:
    """The user to run PostgreSQL's programs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """One PostgreSQL cluster of a test's own: `start()`, `stop()`, `dsn()`, `sql()`."""

    def __init__(self, bindir: Path, *, max_connections: int = 20) -> None:
        self.bindir = bindir
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="jarvis-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.max_connections = max_connections
        if self.user is not None:
            shutil.chown(self.root, self.user)

    def _run(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        done = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            user=self.user,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd or self.root,
            env={**os.environ, **(env or {})},
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()}\n{log}")

    def init(self, *, preload: bool = True) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if self.user is not None:
            shutil.chown(pwfile, self.user)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": str(self.max_connections),
            "superuser_reserved_connections": "1",
            "shared_buffers": "'16MB'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "deadlock_timeout": "'200ms'",
            "shared_preload_libraries": "'pg_stat_statements'" if preload else "''",
            "pg_stat_statements.track": "'top'",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def standby(self) -> Cluster:
        """A streaming replica of this (running) cluster, made with pg_basebackup; not yet started."""
        replica = Cluster(self.bindir, max_connections=self.max_connections)
        self._run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-D",
            str(replica.data),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",  # a spread checkpoint would hold the copy for minutes
            "--no-sync",
            cwd=replica.root,
            env={"PGPASSWORD": SUPERUSER_PASSWORD},
        )
        settings = {"port": str(replica.port), "unix_socket_directories": f"'{replica.root}'"}
        with (replica.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        return replica

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, user: str = MONITOR, database: str = DATABASE) -> str:
        """A DSN without a password, as the agent's config holds one."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def connect(
        self, user: str = SUPERUSER, database: str = DATABASE, password: str | None = None
    ) -> psycopg.Connection[tuple[object, ...]]:
        secret = password or (SUPERUSER_PASSWORD if user == SUPERUSER else MONITOR_PASSWORD)
        return psycopg.connect(self.dsn(user, database), password=secret, autocommit=True)

    def sql(self, *statements: str, database: str = DATABASE) -> list[tuple[object, ...]]:
        """Run statements as the superuser; the rows of the last one (empty if it returns none)."""
        rows: list[tuple[object, ...]] = []
        with self.connect(database=database) as conn:
            for statement in statements:
                cursor = conn.execute(statement)
                rows = cursor.fetchall() if cursor.description else []
        return rows

    def provision(
        self, databases: Sequence[str] = (DATABASE,), extension_in: Sequence[str] = (DATABASE,)
    ) -> None:
        """The monitor role, the databases, and pg_stat_statements in those of `extension_in`."""
        self.sql(
            f"CREATE ROLE {MONITOR} LOGIN PASSWORD '{MONITOR_PASSWORD}' IN ROLE pg_monitor",
            database="postgres",
        )
        for name in databases:
            self.sql(f"CREATE DATABASE {name}", database="postgres")
        for name in extension_in:
            self.sql("CREATE EXTENSION pg_stat_statements", database=name)


@contextlib.contextmanager
def running_cluster(**options: object) -> Iterator[Cluster]:
    """A provisioned, running cluster, removed at the end."""
    cluster = Cluster(require_postgres(), **options)  # type: ignore[arg-type]
    try:
        cluster.init()
        cluster.start()
        cluster.provision(databases=(DATABASE, "bare"), extension_in=(DATABASE,))
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Cluster]:
    """A running cluster shared by a module's tests (max_connections = 20)."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def own_postgres() -> Iterator[Cluster]:
    """A running cluster of the test's own, for tests that stop it."""
    with running_cluster() as cluster:
        yield cluster
