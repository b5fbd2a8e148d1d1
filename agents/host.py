"""The host agent: CPU, load, memory, swap, disks, disk and network I/O, processes, uptime."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Annotated

import msgspec
import psutil
from msgspec import Meta

from agents.metrics import MetricSpec, catalog
from agents.runner import AgentConfig, Collection
from bus.events import Sample

# File systems that hold no user data; their "usage" would only add noise.
PSEUDO_FS = (
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
)

METRICS = catalog(
    MetricSpec("cpu.percent", "percent", "CPU busy time across all cores since the last cycle"),
    MetricSpec("cpu.core.percent", "percent", "CPU busy time of one core", ("core",)),
    MetricSpec("cpu.count", "cores", "logical CPU cores"),
    MetricSpec("load.1", "processes", "load average over 1 minute"),
    MetricSpec("load.5", "processes", "load average over 5 minutes"),
    MetricSpec("load.15", "processes", "load average over 15 minutes"),
    MetricSpec("mem.percent", "percent", "memory in use: (total - available) / total"),
    MetricSpec("mem.used_bytes", "bytes", "memory in use, as reported by the kernel"),
    MetricSpec("mem.available_bytes", "bytes", "memory available to new work without swapping"),
    MetricSpec("mem.total_bytes", "bytes", "physical memory"),
    MetricSpec("swap.percent", "percent", "swap in use"),
    MetricSpec("swap.used_bytes", "bytes", "swap in use"),
    MetricSpec("swap.total_bytes", "bytes", "swap configured"),
    MetricSpec(
        "disk.percent",
        "percent",
        "space used on a mount, as `df` reports it",
        ("mount", "device", "fstype"),
    ),
    MetricSpec("disk.used_bytes", "bytes", "space used on a mount", ("mount", "device", "fstype")),
    MetricSpec(
        "disk.free_bytes",
        "bytes",
        "space available to unprivileged users",
        ("mount", "device", "fstype"),
    ),
    MetricSpec("disk.total_bytes", "bytes", "size of a mount", ("mount", "device", "fstype")),
    MetricSpec("disk.read_bytes_per_second", "bytes/s", "bytes read from all disks"),
    MetricSpec("disk.write_bytes_per_second", "bytes/s", "bytes written to all disks"),
    MetricSpec("net.recv_bytes_per_second", "bytes/s", "bytes received on all interfaces but loopback"),
    MetricSpec("net.sent_bytes_per_second", "bytes/s", "bytes sent on all interfaces but loopback"),
    MetricSpec("proc.count", "processes", "processes running on the host"),
    MetricSpec("system.uptime_seconds", "seconds", "time since boot"),
)


class HostAgentConfig(AgentConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    per_core: Annotated[bool, Meta(description="also publish cpu.core.percent for every core")] = True
    mounts: Annotated[
        list[str],
        Meta(
            description="mounts to watch; empty: every real (non-pseudo) file system",
            examples=[["/", "/var/lib/docker"]],
        ),
    ] = msgspec.field(default_factory=list)
    ignore_fs_types: Annotated[
        list[str], Meta(description="file system types never watched", examples=[["nfs", "cifs"]])
    ] = msgspec.field(default_factory=lambda: list(PSEUDO_FS))


class _Rate:
    """Per-second rate of a monotonically increasing counter; None until two readings exist."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    def update(self, value: float, now: float) -> float | None:
        last, self._last = self._last, (value, now)
        if last is None or now <= last[1] or value < last[0]:  # first reading, or counter reset
            return None
        return (value - last[0]) / (now - last[1])


class HostCollector:
    """Collects the host's vital signs with psutil."""

    name = "host"

    def __init__(self, config: HostAgentConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._rates = {name: _Rate() for name in METRICS if name.endswith("_per_second")}
        self._cpu_primed = False

    async def collect(self) -> Collection:
        if not self._cpu_primed:
            # psutil measures CPU between two calls; the first call only sets the baseline.
            psutil.cpu_percent(percpu=True)
            psutil.cpu_percent()
            self._cpu_primed = True
            await asyncio.sleep(0.2)
        samples = [*self._cpu(), *self._memory(), *self._disks(), *self._io()]
        samples.append(Sample("proc.count", float(len(psutil.pids()))))
        samples.append(Sample("system.uptime_seconds", round(time.time() - psutil.boot_time(), 1)))
        return Collection(samples=samples)

    def _cpu(self) -> list[Sample]:
        samples = [
            Sample("cpu.percent", psutil.cpu_percent()),
            Sample("cpu.count", float(psutil.cpu_count() or 0)),
        ]
        if self.config.per_core:
            samples += [
                Sample("cpu.core.percent", pct, {"core": str(core)})
                for core, pct in enumerate(psutil.cpu_percent(percpu=True))
            ]
        one, five, fifteen = os.getloadavg()
        samples += [Sample("load.1", one), Sample("load.5", five), Sample("load.15", fifteen)]
        return samples

    def _memory(self) -> list[Sample]:
        mem = psutil.virtual_memory()
        swap = psutil.swap_memory()
        return [
            Sample("mem.percent", round(100.0 * (mem.total - mem.available) / mem.total, 2)),
            Sample("mem.used_bytes", float(mem.used)),
            Sample("mem.available_bytes", float(mem.available)),
            Sample("mem.total_bytes", float(mem.total)),
            Sample("swap.percent", swap.percent),
            Sample("swap.used_bytes", float(swap.used)),
            Sample("swap.total_bytes", float(swap.total)),
        ]

    def mounts(self) -> list[tuple[str, str, str]]:
        """(mount, device, fstype) of the file systems to watch, one mount per device."""
        ignored = set(self.config.ignore_fs_types)
        wanted = set(self.config.mounts)
        seen_devices: set[str] = set()
        found = []
        for part in psutil.disk_partitions(all=bool(wanted)):
            if wanted and part.mountpoint not in wanted:
                continue
            if not wanted and (part.fstype in ignored or part.device in seen_devices):
                continue
            seen_devices.add(part.device)
            found.append((part.mountpoint, part.device, part.fstype))
        if not found and not wanted:
            found.append(("/", "rootfs", "unknown"))  # inside a container only overlay is listed
        return found

    def _disks(self) -> list[Sample]:
        samples = []
        for mount, device, fstype in self.mounts():
            try:
                usage = psutil.disk_usage(mount)
            except OSError:  # unmounted or unreadable since it was listed
                continue
            labels = {"mount": mount, "device": device, "fstype": fstype}
            samples += [
                Sample("disk.percent", usage.percent, labels),
                Sample("disk.used_bytes", float(usage.used), labels),
                Sample("disk.free_bytes", float(usage.free), labels),
                Sample("disk.total_bytes", float(usage.total), labels),
            ]
        return samples

    def _io(self) -> list[Sample]:
        now = self.clock()
        counters: dict[str, float] = {}
        disk = psutil.disk_io_counters()
        if disk is not None:
            counters["disk.read_bytes_per_second"] = disk.read_bytes
            counters["disk.write_bytes_per_second"] = disk.write_bytes
        nics = psutil.net_io_counters(pernic=True)
        counters["net.recv_bytes_per_second"] = sum(n.bytes_recv for name, n in nics.items() if name != "lo")
        counters["net.sent_bytes_per_second"] = sum(n.bytes_sent for name, n in nics.items() if name != "lo")
        samples = []
        for name, value in counters.items():
            rate = self._rates[name].update(value, now)
            if rate is not None:
                samples.append(Sample(name, round(rate, 1)))
        return samples
