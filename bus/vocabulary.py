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

# The pipeline's own parts: they publish heartbeats with their counters as agents do, so the
# dead-man rule covers them too.
EVALUATOR_PART = "evaluator"
SLACK_PART = "slack"
REPORT_PART = "report"
PARTS = (EVALUATOR_PART, SLACK_PART, REPORT_PART)

# Health targets that are not checks of the outside world.
COLLECTOR_TARGET = "_collector"  # an agent's own collection; the underscore keeps it apart from check names
DOCKER_TARGET = "docker"  # the container agent's check of the Docker engine itself
LOG_TARGET = "log:{name}"  # a container's log, apart from its state; Docker names never hold ":"
MOUNT_TARGET = "mount:{mount}"  # a mount the host agent's config names, present or not
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
        "seconds of scrapes the rates, ratio and quantiles beside it cover: the target's rate_window, "
        "less until it has filled after start or a gap",
        ("check",),
    ),
    MetricSpec(
        PROMQL_METRIC,
        "as queried",
        "one sample per series a configured PromQL query returns (or the query's `metric` name), "
        "with the series' labels",
    ),
)

AGENT_METRICS: dict[str, dict[str, MetricSpec]] = {
    HOST_AGENT: HOST_METRICS,
    CONTAINER_AGENT: CONTAINER_METRICS,
    PROBE_AGENT: PROBE_METRICS,
}
AGENTS = tuple(AGENT_METRICS)


def declared_metrics() -> frozenset[str]:
    """Every metric name an agent publishes whatever its config (PromQL names depend on it)."""
    return frozenset(name for metrics in AGENT_METRICS.values() for name in metrics if name != PROMQL_METRIC)
