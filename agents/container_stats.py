"""Resource figures from the engine's stats JSON, computed the way `docker stats` does."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agents.container_state import parse_timestamp
from bus import vocabulary as vocab

# Counters turned into per-second rates between two readings, by metric name.
NET_RECV = vocab.CONTAINER_NET_RECV_RATE
NET_SENT = vocab.CONTAINER_NET_SENT_RATE
BLKIO_READ = vocab.CONTAINER_BLKIO_READ_RATE
BLKIO_WRITE = vocab.CONTAINER_BLKIO_WRITE_RATE


def _num(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def cpu_percent(cpu: Mapping[str, Any], precpu: Mapping[str, Any]) -> float | None:
    """CPU use between two readings; 100 is one core busy, as `docker stats` shows it.

    None without a usable previous reading (first sample, one-shot stats, or a restart).
    """
    total = _num((cpu.get("cpu_usage") or {}).get("total_usage"))
    previous_total = _num((precpu.get("cpu_usage") or {}).get("total_usage"))
    system = _num(cpu.get("system_cpu_usage"))
    previous_system = _num(precpu.get("system_cpu_usage"))
    if total is None or previous_total is None or system is None or previous_system is None:
        return None
    cpu_delta, system_delta = total - previous_total, system - previous_system
    if cpu_delta < 0 or system_delta <= 0:
        return None
    cores = _num(cpu.get("online_cpus")) or float(len((cpu.get("cpu_usage") or {}).get("percpu_usage") or ()))
    return round(cpu_delta / system_delta * (cores or 1.0) * 100.0, 2)


def memory_usage(memory_stats: Mapping[str, Any]) -> tuple[float, float] | None:
    """(used, limit) in bytes; used leaves out the reclaimable page cache, as `docker stats` does."""
    usage = _num(memory_stats.get("usage"))
    limit = _num(memory_stats.get("limit"))
    if usage is None or not limit:
        return None
    stats = memory_stats.get("stats") or {}
    # cgroup v1 reports total_inactive_file, cgroup v2 inactive_file
    cache = _num(stats.get("total_inactive_file", stats.get("inactive_file"))) or 0.0
    return (usage - cache if cache < usage else usage), limit


def io_counters(stats: Mapping[str, Any]) -> dict[str, float]:
    """Cumulative network and block I/O bytes, summed over interfaces and devices."""
    counters: dict[str, float] = {}
    networks = stats.get("networks")
    if isinstance(networks, dict) and networks:
        counters[NET_RECV] = sum(_num(n.get("rx_bytes")) or 0.0 for n in networks.values())
        counters[NET_SENT] = sum(_num(n.get("tx_bytes")) or 0.0 for n in networks.values())
    entries = (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive")
    if isinstance(entries, list):
        by_op = {"read": 0.0, "write": 0.0}
        for entry in entries:
            op = str(entry.get("op", "")).lower()  # "Read" under cgroup v1, "read" under v2
            if op in by_op:
                by_op[op] += _num(entry.get("value")) or 0.0
        counters[BLKIO_READ], counters[BLKIO_WRITE] = by_op["read"], by_op["write"]
    return counters


@dataclass
class _Reading:
    at: float | None
    cpu: Mapping[str, Any]
    counters: dict[str, float]


class StatsMeter:
    """Turns successive stats of each container into CPU percent and I/O rates over the interval.

    The previous cycle's reading serves as `docker stats`' precpu (one-shot stats have none);
    a counter that went backwards (the container restarted) is skipped for that cycle.
    """

    def __init__(self) -> None:
        self._last: dict[str, _Reading] = {}

    def update(self, container_id: str, stats: Mapping[str, Any]) -> dict[str, float]:
        """The figures of one container's stats: cpu, memory, pids and, from the second on, rates."""
        values: dict[str, float] = {}
        previous = self._last.get(container_id)
        cpu = stats.get("cpu_stats") or {}
        # over the whole interval when a previous cycle read it, else the engine's last second
        percent = cpu_percent(cpu, previous.cpu) if previous is not None else None
        if percent is None:
            percent = cpu_percent(cpu, stats.get("precpu_stats") or {})
        if percent is not None:
            values[vocab.CONTAINER_CPU_PERCENT] = percent
        memory = memory_usage(stats.get("memory_stats") or {})
        if memory is not None:
            used, limit = memory
            values[vocab.CONTAINER_MEM_USED_BYTES] = used
            values[vocab.CONTAINER_MEM_LIMIT_BYTES] = limit
            values[vocab.CONTAINER_MEM_PERCENT] = round(100.0 * used / limit, 2)
        pids = _num((stats.get("pids_stats") or {}).get("current"))
        if pids is not None:
            values[vocab.CONTAINER_PIDS] = pids
        at = parse_timestamp(stats.get("read"))
        counters = io_counters(stats)
        if at is not None and previous is not None and previous.at is not None and at > previous.at:
            elapsed = at - previous.at
            for name, value in counters.items():
                before = previous.counters.get(name)
                if before is not None and value >= before:
                    values[name] = round((value - before) / elapsed, 1)
        self._last[container_id] = _Reading(at, cpu, counters)
        return values

    def retain(self, container_ids: Iterable[str]) -> None:
        """Forget containers that are gone, so memory follows the fleet."""
        keep = set(container_ids)
        for gone in self._last.keys() - keep:
            del self._last[gone]
