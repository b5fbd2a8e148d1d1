"""Realistic events for the console's /metrics: what a host, container and probe agent send each cycle."""

from __future__ import annotations

from collections.abc import Iterator

from bus import vocabulary as vocab
from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, Sample, Status
from bus.records import ActiveAlert, ActiveAlerts

CONTAINERS = 30
CHECKS = 28
SCRAPED = 4  # of the checks, those whose service also exposes a metrics page the probe scrapes
UNHEALTHY = "worker-2"  # one container fails its health check, and one check is down
EXITED = "migrate"  # a one-shot container that exited with an error
DOWN_CHECK = "llm-server"


def container_name(index: int) -> str:
    return EXITED if index == CONTAINERS - 1 else f"worker-{index}"


def check_name(index: int) -> str:
    return DOWN_CHECK if index == 0 else f"service-{index:02d}"


def host_batch(host: str, ts: float, step: int = 0) -> MetricBatch:
    """The host agent's 22 samples."""
    mount = {"device": "/dev/sda1", "fstype": "ext4"}
    samples = [
        Sample(vocab.CPU_PERCENT, 20.0 + step % 10),
        *(Sample(vocab.CPU_CORE_PERCENT, 10.0 + core, {"core": str(core)}) for core in range(4)),
        Sample(vocab.CPU_COUNT, 4),
        Sample(vocab.LOAD_1, 1.5),
        Sample(vocab.LOAD_5, 1.2),
        Sample(vocab.LOAD_15, 1.0),
        Sample(vocab.MEM_PERCENT, 55.0),
        Sample(vocab.MEM_USED_BYTES, 8.0e9),
        Sample(vocab.MEM_TOTAL_BYTES, 16.0e9),
        Sample(vocab.SWAP_PERCENT, 1.0),
        *(
            Sample(name, value, {"mount": path, **mount})
            for path in ("/", "/var/lib/docker")
            for name, value in ((vocab.DISK_PERCENT, 61.5), (vocab.DISK_USED_BYTES, 4.0e10))
        ),
        Sample(vocab.NET_RECV_RATE, 1.0e5),
        Sample(vocab.NET_SENT_RATE, 5.0e4),
        Sample(vocab.DISK_READ_RATE, 2.0e5),
        Sample(vocab.PROC_COUNT, 312),
        Sample(vocab.SYSTEM_UPTIME, 86400.0 + ts % 86400),
    ]
    return MetricBatch(host=host, agent=vocab.HOST_AGENT, ts=ts, interval=10.0, samples=samples)


def container_batch(host: str, ts: float, step: int = 0) -> MetricBatch:
    """The container agent's fleet counts and 16 samples for each of CONTAINERS containers."""
    samples = [
        Sample(vocab.CONTAINERS_RUNNING, CONTAINERS - 1),
        Sample(vocab.CONTAINERS_PAUSED, 0),
        Sample(vocab.CONTAINERS_RESTARTING, 0),
        Sample(vocab.CONTAINERS_STOPPED, 1),
        Sample(vocab.CONTAINERS_UNHEALTHY, 1),
    ]
    for index in range(CONTAINERS):
        name = container_name(index)
        labels = {"container": name, "image": f"jarvis/{name}:1.4", "service": name, "project": "jarvis"}
        running = name != EXITED
        per_container = {
            vocab.CONTAINER_RUNNING: float(running),
            vocab.CONTAINER_RESTART_COUNT: float(step // 5 if name == UNHEALTHY else 0),
            vocab.CONTAINER_EXIT_CODE: 0.0 if running else 137.0,
            vocab.CONTAINER_UPTIME: 3600.0 if running else 0.0,
            vocab.CONTAINER_CPU_PERCENT: 2.0 + index,
            vocab.CONTAINER_MEM_USED_BYTES: 1.0e8 * (index + 1),
            vocab.CONTAINER_MEM_LIMIT_BYTES: 4.0e9,
            vocab.CONTAINER_MEM_PERCENT: 2.5 * (index + 1),
            vocab.CONTAINER_NET_RECV_RATE: 1.0e4,
            vocab.CONTAINER_NET_SENT_RATE: 2.0e4,
            vocab.CONTAINER_BLKIO_READ_RATE: 0.0,
            vocab.CONTAINER_BLKIO_WRITE_RATE: 512.0,
            vocab.CONTAINER_PIDS: 12.0,
            vocab.CONTAINER_LOG_ERRORS: 3.0 if name == UNHEALTHY else 0.0,
            vocab.CONTAINER_LOG_WARNINGS: 1.0,
        }
        if running:
            per_container[vocab.CONTAINER_HEALTHY] = float(name != UNHEALTHY)
        samples += [Sample(metric, value, labels) for metric, value in per_container.items()]
    return MetricBatch(host=host, agent=vocab.CONTAINER_AGENT, ts=ts, interval=10.0, samples=samples)


def probe_batch(host: str, ts: float, step: int = 0) -> MetricBatch:
    """The probe agent's latency of CHECKS HTTP checks, and the rates of the SCRAPED ones' pages."""
    samples = []
    for index in range(CHECKS):
        name = check_name(index)
        if name != DOWN_CHECK:  # no response, no latency
            url = f"http://10.0.0.{index}:8000/health"
            samples.append(Sample(vocab.HTTP_LATENCY, 0.01 * (index + 1), {"check": name, "url": url}))
    for index in range(1, SCRAPED + 1):
        check = {"check": check_name(index)}
        samples += [
            Sample(vocab.HTTP_REQUEST_RATE, 40.0 + index + step % 3, check),
            Sample(vocab.HTTP_ERROR_RATIO, 0.02 * index, check),
            Sample(vocab.HTTP_LATENCY_P50, 0.05, check),
            Sample(vocab.HTTP_LATENCY_P95, 0.4, check),
            Sample(vocab.HTTP_LATENCY_P99, 0.9, check),
            Sample(vocab.HTTP_RATE_WINDOW, 60.0, check),
        ]
    samples.append(Sample(vocab.TCP_CONNECT, 0.002, {"check": "postgres", "address": "10.0.0.5:5432"}))
    samples.append(Sample("promql.request_rate", 123.0, {"status": "200"}))
    return MetricBatch(host=host, agent=vocab.PROBE_AGENT, ts=ts, interval=10.0, samples=samples)


def health_events(host: str, ts: float) -> Iterator[HealthEvent]:
    """Each probe check's and container's latest health, and each agent's own collection."""
    for index in range(CHECKS):
        name = check_name(index)
        status: Status = "critical" if name == DOWN_CHECK else "ok"
        detail = "connection refused" if status == "critical" else "HTTP 200"
        latency = None if status == "critical" else 0.01 * (index + 1)
        url = f"http://10.0.0.{index}:8000/health"
        yield HealthEvent(
            host=host,
            agent=vocab.PROBE_AGENT,
            target=name,
            status=status,
            latency=latency,
            detail=detail,
            ts=ts,
            labels={"url": url},
        )
    for index in range(CONTAINERS):
        name = container_name(index)
        status = "critical" if name in (UNHEALTHY, EXITED) else "ok"
        state = "exited" if name == EXITED else "running"
        health = "unhealthy" if name == UNHEALTHY else "healthy"
        labels = {"image": f"jarvis/{name}:1.4", "id": f"{index:012x}", "state": state, "health": health}
        yield HealthEvent(
            host=host, agent=vocab.CONTAINER_AGENT, target=name, status=status, ts=ts, labels=labels
        )
    for agent in (vocab.HOST_AGENT, vocab.CONTAINER_AGENT, vocab.PROBE_AGENT):
        yield HealthEvent(host=host, agent=agent, target=vocab.COLLECTOR_TARGET, status="ok", ts=ts)


def heartbeats(host: str, ts: float, step: int = 0, *, parts: bool = False) -> Iterator[Heartbeat]:
    """Each agent's heartbeat, and with `parts` the evaluator's and the sinks' with their counters."""
    for agent in (vocab.HOST_AGENT, vocab.CONTAINER_AGENT, vocab.PROBE_AGENT):
        yield Heartbeat(
            host=host, agent=agent, version="0.1.0", interval=10.0, ts=ts, publish_errors=step // 4
        )
    if not parts:
        return
    yield Heartbeat(
        host=host,
        agent=vocab.EVALUATOR_PART,
        version="jarvis-monitor",
        interval=10.0,
        ts=ts,
        counters={
            "received": 100 * step,
            "evaluated": 95 * step,
            "rejected": step // 3,
            "dead_lettered": step // 6,
            "alerts": step // 2,
            "standing_by": 0,
            "lag.metrics": step % 4,
        },
        rejected={"undecodable": step // 3},
    )
    yield Heartbeat(
        host=host,
        agent=vocab.SLACK_PART,
        version="jarvis-monitor",
        interval=10.0,
        ts=ts,
        counters={
            "delivered": step,
            "dead_lettered": step // 8,
            "retries": step // 2,
            "lag.notifications": 0,
        },
        rejected={"too_large": step // 5},
    )


def alerts(host: str, ts: float) -> Iterator[Alert]:
    """One firing alert (the down check), one pending (the unhealthy container)."""
    yield Alert(
        fingerprint=f"{host}-service-down",
        rule="service_down",
        severity="critical",
        status="firing",
        labels={"host": host, "agent": "probe", "target": DOWN_CHECK, "rule": "service_down"},
        summary=f"{DOWN_CHECK} is down",
        starts_at=ts - 120,
    )
    yield Alert(
        fingerprint=f"{host}-container-unhealthy",
        rule="container_unhealthy",
        severity="warning",
        status="pending",
        labels={"host": host, "agent": "container", "target": UNHEALTHY, "rule": "container_unhealthy"},
        summary=f"{UNHEALTHY} is unhealthy",
        starts_at=ts - 30,
    )


def cycle(
    host: str, ts: float, step: int = 0, *, parts: bool = False
) -> Iterator[MetricBatch | HealthEvent | Heartbeat | Alert]:
    """Everything one host's agents send in one cycle."""
    yield host_batch(host, ts, step)
    yield container_batch(host, ts, step)
    yield probe_batch(host, ts, step)
    yield from health_events(host, ts)
    yield from heartbeats(host, ts, step, parts=parts)
    yield from alerts(host, ts)


def listed_disk_alert(ts: float, *, silenced_by: tuple[str, ...] = (), acked: bool = False) -> ActiveAlerts:
    """The evaluator's list at `ts`: disk_high firing on db01 (fingerprint f7) for ten minutes."""
    alert = ActiveAlert(
        fingerprint="f7",
        rule="disk_high",
        severity="critical",
        state="firing",
        labels={"host": "db01"},
        summary="disk 91%",
        value=91.0,
        since=ts - 600,
        silenced_by=list(silenced_by),
        inhibited_by=[],
        acked=acked,
        flapping=False,
    )
    return ActiveAlerts(ts=ts, alerts=[alert])
