"""The host agent: CPU, load, memory, swap, disks, disk and network I/O, processes, uptime.

psutil blocks (a hard NFS mount whose server is gone hangs statvfs for good), so every reading runs
off the event loop: the mounts' usage one call per mount, waited for a bounded time; a mount whose
call has not returned is reported critical and skipped until it does, and the rest still publishes.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import psutil

from agents.blocking import BlockingCalls, StillBlocked
from agents.host_config import PSEUDO_FS as PSEUDO_FS  # re-exported: the defaults are read with the agent
from agents.host_config import VIRTUAL_NICS as VIRTUAL_NICS
from agents.host_config import HostAgentConfig as HostAgentConfig
from agents.runner import Check, Collection
from bus import vocabulary as vocab
from bus.events import Sample

METRICS = vocab.HOST_METRICS  # what this agent publishes, declared where the wire lives
DISK_WAIT_CAP = 5.0  # longest wait of one cycle for the mounts' usage, in seconds

log = logging.getLogger(__name__)

Mount = tuple[str, str, str]  # mount point, device, file system type


def _busy_and_total(times: Any) -> tuple[float, float]:
    """CPU busy and total time as top and psutil count them: guest time is already in user time."""
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total


class _CpuMeter:
    """CPU busy percent between two readings, with its own baseline (not psutil's process-wide one)."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    def update(self, times: Any) -> float | None:
        busy, total = _busy_and_total(times)
        last, self._last = self._last, (busy, total)
        if last is None or total <= last[1]:
            return None
        return round(min(100.0, max(0.0, 100.0 * (busy - last[0]) / (total - last[1]))), 1)


class _Rates:
    """Per-second rates of counters, summed per metric over its members (disks, interfaces).

    A member seen only once, or whose counter went backwards (reset), is left out of that
    cycle, so an interface that comes or goes never produces a dip or a spike.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] = {}
        self._at: float | None = None

    def update(self, counters: dict[tuple[str, str], float], now: float) -> dict[str, float]:
        rates: dict[str, float] = {}
        if self._at is not None and now > self._at:
            elapsed = now - self._at
            for (metric, member), value in counters.items():
                previous = self._last.get((metric, member))
                if previous is None or value < previous:
                    continue
                rates[metric] = rates.get(metric, 0.0) + (value - previous) / elapsed
        self._last, self._at = counters, now
        return rates


class HostCollector:
    """Collects the host's vital signs with psutil."""

    name = vocab.HOST_AGENT

    def __init__(
        self,
        config: HostAgentConfig,
        clock: Callable[[], float] = time.monotonic,
        blocking: BlockingCalls | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.blocking = blocking or BlockingCalls()
        self._rates = _Rates()
        self._cpu_total = _CpuMeter()
        self._cpu_cores: list[_CpuMeter] = []
        self._primed = False
        self._hung: set[str] = set()  # mounts reported hung, so that their recovery is reported once

    @property
    def disk_wait(self) -> float:
        """How long a cycle waits for the mounts' usage: half the collection's timeout, at most 5 s."""
        budget = (self.config.timeout or self.config.interval).seconds
        return min(DISK_WAIT_CAP, budget / 2)

    async def collect(self) -> Collection:
        # The run loop's timeout abandons a reading that hangs; the next cycle is then refused at
        # once (StillBlocked, reported as a failed collection) until that reading returns.
        if not self._primed:
            # CPU and I/O rates are measured between two readings; the first only sets a baseline.
            await self.blocking.call("psutil", self._prime)
            self._primed = True
            await asyncio.sleep(0.2)
        samples, mounts = await self.blocking.call("psutil", self._readings)
        disk_samples, mount_checks = await self._disks(mounts)
        return Collection(samples=[*samples, *disk_samples], checks=mount_checks)

    def _prime(self) -> None:
        self._cpu()
        self._io()

    def _readings(self) -> tuple[list[Sample], list[Mount]]:
        """Everything but the mounts' usage (in a thread): CPU, memory, I/O, processes, uptime,
        and which mounts to read."""
        samples = [*self._cpu(), *self._memory(), *self._io()]
        samples.append(Sample(vocab.PROC_COUNT, float(len(psutil.pids()))))
        samples.append(Sample(vocab.SYSTEM_UPTIME, round(time.time() - psutil.boot_time(), 1)))
        return samples, self.mounts()

    def _cpu(self) -> list[Sample]:
        samples = [Sample(vocab.CPU_COUNT, float(psutil.cpu_count() or 0))]
        total = self._cpu_total.update(psutil.cpu_times())
        if total is not None:
            samples.append(Sample(vocab.CPU_PERCENT, total))
        if self.config.per_core:
            per_core = psutil.cpu_times(percpu=True)
            while len(self._cpu_cores) < len(per_core):  # cores can come online
                self._cpu_cores.append(_CpuMeter())
            for core, (meter, times) in enumerate(zip(self._cpu_cores, per_core, strict=False)):
                percent = meter.update(times)
                if percent is not None:
                    samples.append(Sample(vocab.CPU_CORE_PERCENT, percent, {"core": str(core)}))
        one, five, fifteen = os.getloadavg()
        samples += [Sample(vocab.LOAD_1, one), Sample(vocab.LOAD_5, five), Sample(vocab.LOAD_15, fifteen)]
        return samples

    def _memory(self) -> list[Sample]:
        mem = psutil.virtual_memory()
        swap = psutil.swap_memory()
        return [
            Sample(vocab.MEM_PERCENT, round(100.0 * (mem.total - mem.available) / mem.total, 2)),
            Sample(vocab.MEM_USED_BYTES, float(mem.used)),
            Sample(vocab.MEM_AVAILABLE_BYTES, float(mem.available)),
            Sample(vocab.MEM_TOTAL_BYTES, float(mem.total)),
            Sample(vocab.SWAP_PERCENT, swap.percent),
            Sample(vocab.SWAP_USED_BYTES, float(swap.used)),
            Sample(vocab.SWAP_TOTAL_BYTES, float(swap.total)),
        ]

    def mounts(self) -> list[Mount]:
        """(mount, device, fstype) of the file systems to watch: one entry per device, or per
        listed mount when `mounts` is set."""
        ignored = set(self.config.ignore_fs_types)
        wanted = set(self.config.mounts)
        seen: set[str] = set()
        found = []
        for part in psutil.disk_partitions(all=bool(wanted)):
            key = part.mountpoint if wanted else part.device
            unwanted = part.mountpoint not in wanted if wanted else part.fstype in ignored
            if unwanted or key in seen:
                continue
            seen.add(key)
            found.append((part.mountpoint, part.device, part.fstype))
        if not found and not wanted:
            found.append(("/", "rootfs", "unknown"))  # inside a container only overlay is listed
        return found

    async def _usage(self, mount: str) -> Any:
        return await self.blocking.call(
            f"disk_usage {mount}", lambda: psutil.disk_usage(mount), self.disk_wait
        )

    async def _disks(self, mounts: list[Mount]) -> tuple[list[Sample], list[Check]]:
        """Each mount's usage, read at once; one that does not answer is a critical check."""
        answers = await asyncio.gather(
            *(self._usage(mount) for mount, _, _ in mounts), return_exceptions=True
        )
        samples = []
        reported = set()
        hung: dict[str, str] = {}
        for (mount, device, fstype), usage in zip(mounts, answers, strict=True):
            if isinstance(usage, (TimeoutError, StillBlocked)):
                hung[mount] = self._hung_detail(mount)
                continue
            if isinstance(usage, OSError):  # unmounted or unreadable since it was listed
                continue
            if isinstance(usage, BaseException):
                raise usage
            reported.add(mount)
            labels = {"mount": mount, "device": device, "fstype": fstype}
            samples += [
                Sample(vocab.DISK_PERCENT, usage.percent, labels),
                Sample(vocab.DISK_USED_BYTES, float(usage.used), labels),
                Sample(vocab.DISK_FREE_BYTES, float(usage.free), labels),
                Sample(vocab.DISK_TOTAL_BYTES, float(usage.total), labels),
            ]
        # A mount the config names is expected: its absence (a data disk not mounted) is news.
        checks = {
            mount: Check(
                vocab.MOUNT_TARGET.format(mount=mount),
                "ok" if mount in reported else "critical",
                detail="mounted" if mount in reported else f"{mount} is not mounted",
            )
            for mount in self.config.mounts
        }
        for mount, detail in hung.items():
            checks[mount] = Check(vocab.MOUNT_TARGET.format(mount=mount), "critical", detail=detail)
        for mount in self._hung - hung.keys():
            log.info("host agent: %s answers again", mount)
            if mount not in checks:
                checks[mount] = Check(vocab.MOUNT_TARGET.format(mount=mount), "ok", detail="answers again")
        for mount in hung.keys() - self._hung:
            log.warning("host agent: %s", hung[mount])
        self._hung = set(hung)
        return samples, list(checks.values())

    def _hung_detail(self, mount: str) -> str:
        since = self.blocking.blocked_since(f"disk_usage {mount}")
        waited = self.disk_wait if since is None else self.blocking.clock() - since
        return (
            f"{mount}: disk usage has not answered for {waited:.0f}s (a hung file system?); "
            "skipped until it does"
        )

    def _io(self) -> list[Sample]:
        counters: dict[tuple[str, str], float] = {}
        disk = psutil.disk_io_counters()  # whole disks only: partitions would count twice
        if disk is not None:
            counters[vocab.DISK_READ_RATE, ""] = disk.read_bytes
            counters[vocab.DISK_WRITE_RATE, ""] = disk.write_bytes
        for nic, io in psutil.net_io_counters(pernic=True).items():
            if any(fnmatch.fnmatchcase(nic, pattern) for pattern in self.config.ignore_interfaces):
                continue
            counters[vocab.NET_RECV_RATE, nic] = io.bytes_recv
            counters[vocab.NET_SENT_RATE, nic] = io.bytes_sent
        rates = self._rates.update(counters, self.clock())
        return [Sample(name, round(rate, 1)) for name, rate in rates.items()]
