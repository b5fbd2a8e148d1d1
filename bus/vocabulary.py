"""The names that cross a boundary, declared once: agents, special health targets and metrics.

Agents publish under these names, rules and the report read them, and docs/events.md is
generated from the catalogues below, so a name means one thing on every side of the bus.
"""

from __future__ import annotations

from dataclasses import dataclass

# Agent names: the <agent> token of subjects and the `agent` field of every event.
HOST_AGENT = "host"
CONTAINER_AGENT = "container"
PROBE_AGENT = "probe"
POSTGRES_AGENT = "postgres"

# The pipeline's own parts: they publish heartbeats with their counters as agents do, so the
# dead-man rule covers them too.
EVALUATOR_PART = "evaluator"
SLACK_PART = "slack"
REPORT_PART = "report"
# the web console: it beats as the parts do, but delivers no alert, so it is not in PARTS
CONSOLE_PART = "console"
PARTS = (EVALUATOR_PART, SLACK_PART, REPORT_PART)

# Health targets that are not checks of the outside world.
COLLECTOR_TARGET = "_collector"  # an agent's own collection; the underscore keeps it apart from check names
DOCKER_TARGET = "docker"  # the container agent's check of the Docker engine itself
LOG_TARGET = "log:{name}"  # a container's log, apart from its state; Docker names never hold ":"
MOUNT_TARGET = "mount:{mount}"  # a mount the host agent's config names, present or not
DISCOVERY_TARGET = "discovery:{container}"  # the probe's reading of a container's jarvis.* labels
STATEMENTS_TARGET = "{server}:statements"  # the database agent's pg_stat_statements, apart from its login
# a part of `up` as its supervisor sees it: failed and being restarted, or running well again
SUPERVISOR_TARGET = "_supervisor"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: dotted lower-case name, unit, meaning and the labels it carries."""

    name: str
    unit: str
    description: str
    labels: tuple[str, ...] = ()


def catalog(*specs: MetricSpec) -> dict[str, MetricSpec]:
    """Index specs by name, refusing duplicates so one name never means two things."""
    by_name: dict[str, MetricSpec] = {}
    for spec in specs:
        if spec.name in by_name:
            raise ValueError(f"metric {spec.name} declared twice")
        by_name[spec.name] = spec
    return by_name


# The host agent's metrics.
CPU_PERCENT = "cpu.percent"
CPU_CORE_PERCENT = "cpu.core.percent"
CPU_COUNT = "cpu.count"
LOAD_1 = "load.1"
LOAD_5 = "load.5"
LOAD_15 = "load.15"
MEM_PERCENT = "mem.percent"
MEM_USED_BYTES = "mem.used_bytes"
MEM_AVAILABLE_BYTES = "mem.available_bytes"
MEM_TOTAL_BYTES = "mem.total_bytes"
SWAP_PERCENT = "swap.percent"
SWAP_USED_BYTES = "swap.used_bytes"
SWAP_TOTAL_BYTES = "swap.total_bytes"
DISK_PERCENT = "disk.percent"
DISK_USED_BYTES = "disk.used_bytes"
DISK_FREE_BYTES = "disk.free_bytes"
DISK_TOTAL_BYTES = "disk.total_bytes"
DISK_READ_RATE = "disk.read_bytes_per_second"
DISK_WRITE_RATE = "disk.write_bytes_per_second"
NET_RECV_RATE = "net.recv_bytes_per_second"
NET_SENT_RATE = "net.sent_bytes_per_second"
PROC_COUNT = "proc.count"
SYSTEM_UPTIME = "system.uptime_seconds"

_MOUNT = ("mount", "device", "fstype")
HOST_METRICS = catalog(
    MetricSpec(CPU_PERCENT, "percent", "CPU busy time across all cores since the last cycle"),
    MetricSpec(CPU_CORE_PERCENT, "percent", "CPU busy time of one core", ("core",)),
    MetricSpec(CPU_COUNT, "cores", "logical CPU cores"),
    MetricSpec(LOAD_1, "processes", "load average over 1 minute"),
    MetricSpec(LOAD_5, "processes", "load average over 5 minutes"),
    MetricSpec(LOAD_15, "processes", "load average over 15 minutes"),
    MetricSpec(MEM_PERCENT, "percent", "memory in use: (total - available) / total"),
    MetricSpec(MEM_USED_BYTES, "bytes", "memory in use, as reported by the kernel"),
    MetricSpec(MEM_AVAILABLE_BYTES, "bytes", "memory available to new work without swapping"),
    MetricSpec(MEM_TOTAL_BYTES, "bytes", "physical memory"),
    MetricSpec(SWAP_PERCENT, "percent", "swap in use"),
    MetricSpec(SWAP_USED_BYTES, "bytes", "swap in use"),
    MetricSpec(SWAP_TOTAL_BYTES, "bytes", "swap configured"),
    MetricSpec(DISK_PERCENT, "percent", "space used on a mount, as `df` reports it", _MOUNT),
    MetricSpec(DISK_USED_BYTES, "bytes", "space used on a mount", _MOUNT),
    MetricSpec(DISK_FREE_BYTES, "bytes", "space available to unprivileged users", _MOUNT),
    MetricSpec(DISK_TOTAL_BYTES, "bytes", "size of a mount", _MOUNT),
    MetricSpec(DISK_READ_RATE, "bytes/s", "bytes read from all disks"),
    MetricSpec(DISK_WRITE_RATE, "bytes/s", "bytes written to all disks"),
    MetricSpec(NET_RECV_RATE, "bytes/s", "bytes received on the real interfaces"),
    MetricSpec(NET_SENT_RATE, "bytes/s", "bytes sent on the real interfaces"),
    MetricSpec(PROC_COUNT, "processes", "processes running on the host"),
    MetricSpec(SYSTEM_UPTIME, "seconds", "time since boot"),
)

# The container agent's metrics: the fleet's counts, then one series per container.
CONTAINERS_RUNNING = "containers.running"
CONTAINERS_PAUSED = "containers.paused"
CONTAINERS_RESTARTING = "containers.restarting"
CONTAINERS_STOPPED = "containers.stopped"
CONTAINERS_UNHEALTHY = "containers.unhealthy"
CONTAINER_RUNNING = "container.running"
CONTAINER_HEALTHY = "container.healthy"
CONTAINER_RESTART_COUNT = "container.restart_count"
CONTAINER_EXIT_CODE = "container.exit_code"
CONTAINER_UPTIME = "container.uptime_seconds"
CONTAINER_CPU_PERCENT = "container.cpu.percent"
CONTAINER_MEM_USED_BYTES = "container.mem.used_bytes"
CONTAINER_MEM_LIMIT_BYTES = "container.mem.limit_bytes"
CONTAINER_MEM_PERCENT = "container.mem.percent"
CONTAINER_NET_RECV_RATE = "container.net.recv_bytes_per_second"
CONTAINER_NET_SENT_RATE = "container.net.sent_bytes_per_second"
CONTAINER_BLKIO_READ_RATE = "container.blkio.read_bytes_per_second"
CONTAINER_BLKIO_WRITE_RATE = "container.blkio.write_bytes_per_second"
CONTAINER_PIDS = "container.pids"
CONTAINER_LOG_ERRORS = "container.log.errors"
CONTAINER_LOG_WARNINGS = "container.log.warnings"
CONTAINER_LOG_ERROR_RATE = "container.log.errors_per_second"
CONTAINER_LOG_WARNING_RATE = "container.log.warnings_per_second"
CONTAINER_LOG_DROPPED = "container.log.dropped"
CONTAINER_PREFIX = "container."  # every per-container metric starts so

CONTAINER_LABELS = ("container", "image", "service", "project")
_C = CONTAINER_LABELS
CONTAINER_METRICS = catalog(
    MetricSpec(CONTAINERS_RUNNING, "containers", "containers running"),
    MetricSpec(CONTAINERS_PAUSED, "containers", "containers paused"),
    MetricSpec(CONTAINERS_RESTARTING, "containers", "containers being restarted by their restart policy"),
    MetricSpec(CONTAINERS_STOPPED, "containers", "containers created, exited, dead or being removed"),
    MetricSpec(CONTAINERS_UNHEALTHY, "containers", "running containers whose health check fails"),
    MetricSpec(CONTAINER_RUNNING, "boolean", "1 while the container runs, else 0", _C),
    MetricSpec(
        CONTAINER_HEALTHY,
        "boolean",
        "1 when the health check passes, 0 when it fails or is still starting; "
        "absent for containers without a health check or not running",
        _C,
    ),
    MetricSpec(CONTAINER_RESTART_COUNT, "restarts", "restarts by the restart policy", _C),
    MetricSpec(CONTAINER_EXIT_CODE, "code", "exit code of the last run (0 while running)", _C),
    MetricSpec(CONTAINER_UPTIME, "seconds", "time since the container started; 0 when not running", _C),
    MetricSpec(
        CONTAINER_CPU_PERCENT,
        "percent",
        "CPU used since the last cycle as `docker stats` shows it: 100 is one core busy",
        _C,
    ),
    MetricSpec(CONTAINER_MEM_USED_BYTES, "bytes", "memory used, less the reclaimable page cache", _C),
    MetricSpec(CONTAINER_MEM_LIMIT_BYTES, "bytes", "memory limit (the host's memory when unlimited)", _C),
    MetricSpec(CONTAINER_MEM_PERCENT, "percent", "memory used as a share of the limit", _C),
    MetricSpec(CONTAINER_NET_RECV_RATE, "bytes/s", "bytes received on all its interfaces", _C),
    MetricSpec(CONTAINER_NET_SENT_RATE, "bytes/s", "bytes sent on all its interfaces", _C),
    MetricSpec(CONTAINER_BLKIO_READ_RATE, "bytes/s", "bytes read from block devices", _C),
    MetricSpec(CONTAINER_BLKIO_WRITE_RATE, "bytes/s", "bytes written to block devices", _C),
    MetricSpec(CONTAINER_PIDS, "processes", "processes and threads in the container", _C),
    MetricSpec(
        CONTAINER_LOG_ERRORS, "lines", "log lines matching the error patterns since the last cycle", _C
    ),
    MetricSpec(
        CONTAINER_LOG_WARNINGS,
        "lines",
        "log lines matching the warning patterns (and no error pattern) since the last cycle",
        _C,
    ),
    MetricSpec(CONTAINER_LOG_ERROR_RATE, "lines/s", "error lines a second since the last cycle", _C),
    MetricSpec(CONTAINER_LOG_WARNING_RATE, "lines/s", "warning lines a second since the last cycle", _C),
    MetricSpec(
        CONTAINER_LOG_DROPPED,
        "lines",
        "log lines over the per-container rate (logs.max_lines_per_second) since the last cycle, "
        "skipped unread: counts and kept lines leave them out",
        _C,
    ),
)

# The probe agent's metrics; a PromQL query publishes under a name its config chooses.
HTTP_LATENCY = "http.latency_seconds"
TCP_CONNECT = "tcp.connect_seconds"
HTTP_REQUEST_RATE = "http.requests_per_second"
HTTP_ERROR_RATIO = "http.error_ratio"
HTTP_LATENCY_P50 = "http.latency_p50_seconds"
HTTP_LATENCY_P95 = "http.latency_p95_seconds"
HTTP_LATENCY_P99 = "http.latency_p99_seconds"
HTTP_RATE_WINDOW = "http.rate_window_seconds"
TLS_CERT_EXPIRY = "tls.cert_expiry_seconds"
PROMQL_PREFIX = "promql."
PROMQL_METRIC = PROMQL_PREFIX + "<name>"  # how the catalogue and the docs show a query's default name

PROBE_METRICS = catalog(
    MetricSpec(
        HTTP_LATENCY,
        "seconds",
        "time until an HTTP check's response was read, only when a response came",
        ("check", "url"),
    ),
    MetricSpec(TCP_CONNECT, "seconds", "time to open a TCP connection", ("check", "address")),
    MetricSpec(
        TLS_CERT_EXPIRY,
        "seconds",
        "time until the certificate an HTTPS check was served expires (negative once it has), with "
        "`expires`, its notAfter day (UTC); seconds, not days, as Prometheus names units",
        ("check", "expires"),
    ),
    MetricSpec(
        HTTP_REQUEST_RATE,
        "requests/s",
        "requests a scraped target served per second over its rate_window (its request counter, as "
        "PromQL's rate())",
        ("check",),
    ),
    MetricSpec(
        HTTP_ERROR_RATIO,
        "ratio",
        "share of those requests answered 5xx (0 to 1) over the same window; absent without requests or "
        "status label",
        ("check",),
    ),
    MetricSpec(
        HTTP_LATENCY_P50,
        "seconds",
        "median request duration over the target's rate_window, from the histogram's buckets",
        ("check",),
    ),
    MetricSpec(
        HTTP_LATENCY_P95,
        "seconds",
        "95th percentile request duration over the target's rate_window (histogram_quantile)",
        ("check",),
    ),
    MetricSpec(
        HTTP_LATENCY_P99,
        "seconds",
        "99th percentile request duration over the target's rate_window (histogram_quantile)",
        ("check",),
    ),
    MetricSpec(
        HTTP_RATE_WINDOW,
        "seconds",
        "seconds of scrapes the rates, ratio and quantiles beside it cover: the target's rate_window "
        "less one interval (the scrapes `rate(...[window])` takes just after a scrape), less until it "
        "has filled after start or a gap",
        ("check",),
    ),
    MetricSpec(
        PROMQL_METRIC,
        "as queried",
        "one sample per series a configured PromQL query returns (or the query's `metric` name), "
        "with the series' labels",
    ),
)

# Database checks by name: "postgres", "db", "database-main", "postgres:5432" (not "feedback"). The
# built-in database rule and the database agent's server names both go by it.
DATABASE_NAME = r"(?i)(postgres|postgresql|database|db)([-_.:].*)?"

# The runbook's SLAs (Backend API, Frontend, Ollama, Database) by the check name the report's
# default services count, and the names a `jarvis.sla` label may give each (lower case, "-" for
# spaces and "_").
RUNBOOK_SLA_CHECKS: dict[str, tuple[str, ...]] = {
    "backend": ("backend", "backend-api", "api"),
    "frontend": ("frontend", "web"),
    "ollama": ("ollama", "llm", "ollama-llm"),
    "database": ("database", "db", "postgres", "postgresql"),
}

# The database agent's metrics, every one labelled with the server's configured name.
POSTGRES_UP = "postgres.up"
POSTGRES_CONNECT_SECONDS = "postgres.connect_seconds"
POSTGRES_PING_SECONDS = "postgres.ping_seconds"
POSTGRES_CONNECTIONS = "postgres.connections"
POSTGRES_CONNECTIONS_TOTAL = "postgres.connections.total"
POSTGRES_CONNECTIONS_MAX = "postgres.connections.max"
POSTGRES_CONNECTIONS_PERCENT = "postgres.connections.percent"
POSTGRES_OLDEST_QUERY = "postgres.query.oldest_seconds"
POSTGRES_OLDEST_TRANSACTION = "postgres.transaction.oldest_seconds"
POSTGRES_OLDEST_IDLE_IN_TRANSACTION = "postgres.idle_in_transaction.oldest_seconds"
POSTGRES_LOCKS_WAITING = "postgres.locks.waiting"
POSTGRES_LOCKS_OLDEST_WAIT = "postgres.locks.oldest_wait_seconds"
POSTGRES_DEADLOCKS = "postgres.deadlocks"
POSTGRES_CACHE_HIT_RATIO = "postgres.cache_hit_ratio"
POSTGRES_TPS = "postgres.transactions_per_second"
POSTGRES_IN_RECOVERY = "postgres.in_recovery"
POSTGRES_REPLICATION_LAG = "postgres.replication.lag_seconds"
POSTGRES_REPLICATION_LAG_BYTES = "postgres.replication.lag_bytes"
POSTGRES_REPLAY_DELAY = "postgres.replication.replay_delay_seconds"
POSTGRES_STATEMENT_CALLS = "postgres.statement.calls"
POSTGRES_STATEMENT_MEAN = "postgres.statement.mean_seconds"
POSTGRES_STATEMENT_TOTAL = "postgres.statement.total_seconds"
POSTGRES_STATEMENT_ROWS = "postgres.statement.rows"
POSTGRES_STATEMENT_INFO = "postgres.statement.info"
POSTGRES_PREFIX = "postgres."  # every metric of the database agent starts so

STATEMENT_LABELS = ("server", "database", "user", "queryid")
_S = ("server",)
_ST = STATEMENT_LABELS
POSTGRES_METRICS = catalog(
    MetricSpec(POSTGRES_UP, "boolean", "1 when a login and `SELECT 1` succeeded this cycle, else 0", _S),
    MetricSpec(POSTGRES_CONNECT_SECONDS, "seconds", "time to log in (connection, TLS, authentication)", _S),
    MetricSpec(
        POSTGRES_PING_SECONDS,
        "seconds",
        "round trip of `SELECT 1` on the new session: the health event's latency and the database SLA's",
        _S,
    ),
    MetricSpec(
        POSTGRES_CONNECTIONS,
        "connections",
        "client sessions by state (`active`, `idle`, `idle in transaction`, ...), the agent's own included",
        ("server", "state"),
    ),
    MetricSpec(POSTGRES_CONNECTIONS_TOTAL, "connections", "client sessions, the agent's own included", _S),
    MetricSpec(POSTGRES_CONNECTIONS_MAX, "connections", "the server's max_connections", _S),
    MetricSpec(
        POSTGRES_CONNECTIONS_PERCENT,
        "percent",
        "client sessions as a share of max_connections: pool saturation",
        _S,
    ),
    MetricSpec(
        POSTGRES_OLDEST_QUERY,
        "seconds",
        "how long the longest running query (of any other session) has run; 0 when none runs",
        _S,
    ),
    MetricSpec(
        POSTGRES_OLDEST_TRANSACTION,
        "seconds",
        "age of the oldest open transaction of any other session; 0 when none is open",
        _S,
    ),
    MetricSpec(
        POSTGRES_OLDEST_IDLE_IN_TRANSACTION,
        "seconds",
        "longest time a session has sat idle inside a transaction; 0 when none does",
        _S,
    ),
    MetricSpec(POSTGRES_LOCKS_WAITING, "sessions", "sessions waiting for a lock another session holds", _S),
    MetricSpec(
        POSTGRES_LOCKS_OLDEST_WAIT,
        "seconds",
        "longest wait of a session for a lock so far; 0 when none waits",
        _S,
    ),
    MetricSpec(POSTGRES_DEADLOCKS, "deadlocks", "deadlocks detected since the last cycle, all databases", _S),
    MetricSpec(
        POSTGRES_CACHE_HIT_RATIO,
        "ratio",
        "share of block reads served from shared buffers since the last cycle (0 to 1); absent without reads",
        _S,
    ),
    MetricSpec(POSTGRES_TPS, "transactions/s", "commits and rollbacks per second since the last cycle", _S),
    MetricSpec(POSTGRES_IN_RECOVERY, "boolean", "1 on a standby (in recovery), 0 on a primary", _S),
    MetricSpec(
        POSTGRES_REPLICATION_LAG,
        "seconds",
        "on a primary, per streaming replica: how far its replay is behind (pg_stat_replication.replay_lag)",
        ("server", "replica"),
    ),
    MetricSpec(
        POSTGRES_REPLICATION_LAG_BYTES,
        "bytes",
        "on a primary, per streaming replica: WAL written but not yet replayed there",
        ("server", "replica"),
    ),
    MetricSpec(
        POSTGRES_REPLAY_DELAY,
        "seconds",
        "on a standby: time since the last transaction it replayed was committed on the primary",
        _S,
    ),
    MetricSpec(
        POSTGRES_STATEMENT_CALLS,
        "calls",
        "a top statement's calls since pg_stat_statements was last reset "
        "(the top N by mean and by total time)",
        _ST,
    ),
    MetricSpec(POSTGRES_STATEMENT_MEAN, "seconds", "a top statement's mean execution time", _ST),
    MetricSpec(POSTGRES_STATEMENT_TOTAL, "seconds", "a top statement's total execution time", _ST),
    MetricSpec(POSTGRES_STATEMENT_ROWS, "rows", "rows a top statement returned or changed, in total", _ST),
    MetricSpec(
        POSTGRES_STATEMENT_INFO,
        "1",
        "always 1: names a top statement's query text (`query`, as pg_stat_statements normalises it, "
        "with any literal left masked, cut to query_length) beside its other labels",
        (*_ST, "query"),
    ),
)

AGENT_METRICS: dict[str, dict[str, MetricSpec]] = {
    HOST_AGENT: HOST_METRICS,
    CONTAINER_AGENT: CONTAINER_METRICS,
    PROBE_AGENT: PROBE_METRICS,
    POSTGRES_AGENT: POSTGRES_METRICS,
}
AGENTS = tuple(AGENT_METRICS)


def declared_metrics() -> frozenset[str]:
    """Every metric name an agent publishes whatever its config (PromQL names depend on it)."""
    return frozenset(name for metrics in AGENT_METRICS.values() for name in metrics if name != PROMQL_METRIC)
