"""The host agent: what it emits is declared, its numbers agree with the kernel and `df`, and a hung
file system never blocks the event loop or the other readings."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import msgspec
import psutil
import pytest

from agents.host import METRICS, PSEUDO_FS, HostAgentConfig, HostCollector, _CpuMeter, _Rates
from agents.runner import AgentRunner
from bus import vocabulary as vocab
from bus.events import HealthEvent, MetricBatch, Sample
from bus.testing import RecordingPublisher
from bus.units import Duration, dec_hook
from tests.conftest import wait_until

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc, Linux only")

RATES = {name for name in METRICS if name.endswith("_per_second")}
DISK = {name for name in METRICS if name.startswith("disk.") and name not in RATES}


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def collect(config: HostAgentConfig | None = None) -> list[Sample]:
    return (await HostCollector(config or HostAgentConfig()).collect()).samples


def read_meminfo() -> dict[str, int]:
    """/proc/meminfo as {field: kB}."""
    lines = Path("/proc/meminfo").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) for line in lines}


def named(samples: list[Sample], name: str) -> list[Sample]:
    return [s for s in samples if s.name == name]


# declarations ----------------------------------------------------------------------------------


async def test_every_emitted_sample_is_declared_with_exactly_its_labels() -> None:
    clock = ManualClock()
    collector = HostCollector(HostAgentConfig(per_core=True), clock=clock)
    first = (await collector.collect()).samples
    clock.now += 10
    second = (await collector.collect()).samples  # now with rates

    for sample in first + second:
        assert sample.name in METRICS, f"{sample.name} is emitted but not declared"
        assert set(sample.labels) == set(METRICS[sample.name].labels), sample


def test_declared_metric_names_are_dotted_lower_case_with_unit_and_meaning() -> None:
    for name, spec in METRICS.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+", name), name
        assert spec.name == name
        assert spec.unit
        assert spec.description


# memory, disk, cpu -----------------------------------------------------------------------------


@linux_only
async def test_mem_percent_agrees_with_proc_meminfo() -> None:
    samples = await collect()
    (mem,) = named(samples, "mem.percent")
    (total_bytes,) = named(samples, "mem.total_bytes")
    (available_bytes,) = named(samples, "mem.available_bytes")
    meminfo = read_meminfo()
    total, available = meminfo["MemTotal"] * 1024, meminfo["MemAvailable"] * 1024

    assert mem.value == pytest.approx(100.0 * (total - available) / total, abs=1.0)
    # On an idle machine 1 point is most of the figure, so also check the batch is consistent.
    assert total_bytes.value == total
    assert available_bytes.value == pytest.approx(available, abs=0.01 * total)
    assert mem.value == pytest.approx(
        100.0 * (total_bytes.value - available_bytes.value) / total_bytes.value, abs=0.01
    )


async def test_disk_percent_of_root_agrees_with_statvfs_as_df_computes_it() -> None:
    samples = await collect(HostAgentConfig(mounts=["/"]))
    (pct,) = [s for s in named(samples, "disk.percent") if s.labels["mount"] == "/"]
    (total,) = [s for s in named(samples, "disk.total_bytes") if s.labels["mount"] == "/"]
    vfs = os.statvfs("/")
    used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
    avail = vfs.f_bavail * vfs.f_frsize

    assert pct.value == pytest.approx(used / (used + avail) * 100, abs=1.0)
    assert total.value == vfs.f_blocks * vfs.f_frsize


async def test_cpu_percent_is_between_0_and_100_with_one_core_sample_per_core() -> None:
    samples = await collect(HostAgentConfig(per_core=True))
    (cpu,) = named(samples, "cpu.percent")
    (count,) = named(samples, "cpu.count")
    cores = named(samples, "cpu.core.percent")

    assert 0.0 <= cpu.value <= 100.0
    assert count.value == psutil.cpu_count()
    assert sorted(int(s.labels["core"]) for s in cores) == list(range(int(count.value)))
    assert all(0.0 <= s.value <= 100.0 for s in cores)


async def test_no_per_core_samples_when_per_core_is_off() -> None:
    samples = await collect(HostAgentConfig(per_core=False))

    assert named(samples, "cpu.core.percent") == []
    assert len(named(samples, "cpu.percent")) == 1


# rates -----------------------------------------------------------------------------------------


async def test_rates_appear_from_the_second_collection_on_and_are_never_negative() -> None:
    clock = ManualClock()
    collector = HostCollector(HostAgentConfig(), clock=clock)
    first = (await collector.collect()).samples
    expected = (
        RATES
        if psutil.disk_io_counters() is not None
        else {name for name in RATES if name.startswith("net.")}
    )

    assert {s.name for s in first} & RATES == set()
    for _ in range(3):
        clock.now += 5
        samples = (await collector.collect()).samples
        rates = [s for s in samples if s.name in RATES]
        assert {s.name for s in rates} == expected
        assert all(s.value >= 0 for s in rates), rates


def test_rates_are_per_second_summed_over_members_and_absent_before_two_readings() -> None:
    rates = _Rates()
    assert rates.update({("net.recv", "eth0"): 100, ("net.recv", "eth1"): 0}, now=0.0) == {}
    assert rates.update({("net.recv", "eth0"): 300, ("net.recv", "eth1"): 50}, now=10.0) == {"net.recv": 25.0}


def test_a_counter_reset_or_a_new_interface_never_makes_a_dip_or_a_spike() -> None:
    """An interface that restarts or appears is left out of that cycle, not counted from zero."""
    rates = _Rates()
    rates.update({("net.recv", "eth0"): 1000, ("net.recv", "veth1"): 5000}, now=0.0)
    after = rates.update({("net.recv", "eth0"): 1100, ("net.recv", "veth2"): 9_000_000}, now=10.0)
    assert after == {"net.recv": 10.0}
    reset = rates.update({("net.recv", "eth0"): 50, ("net.recv", "veth2"): 9_000_100}, now=20.0)
    assert reset == {"net.recv": 10.0}


def test_rates_wait_for_the_clock_to_advance() -> None:
    rates = _Rates()
    rates.update({("disk.read", ""): 100}, now=5.0)
    assert rates.update({("disk.read", ""): 200}, now=5.0) == {}


class Times(NamedTuple):
    user: float
    system: float
    idle: float
    iowait: float


class NicIO(NamedTuple):
    bytes_recv: int
    bytes_sent: int


def test_cpu_meter_measures_busy_share_between_readings_without_psutil_global_state() -> None:
    meter = _CpuMeter()
    assert meter.update(Times(100, 50, 800, 50)) is None
    # 30 busy (user+system) out of 100: idle and iowait are not busy.
    assert meter.update(Times(120, 60, 860, 60)) == 30.0
    psutil.cpu_percent()  # another caller in the process must not shift our window
    assert meter.update(Times(120, 60, 960, 60)) == 0.0


async def test_virtual_interfaces_are_left_out_of_network_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Container veths and bridges would count container traffic twice."""
    idle = {"eth0": NicIO(0, 0), "docker0": NicIO(0, 0), "veth1a2b": NicIO(0, 0), "lo": NicIO(0, 0)}
    readings = iter(
        [
            idle,  # the baseline the first collection takes
            {"eth0": NicIO(0, 0), "docker0": NicIO(0, 0), "veth1a2b": NicIO(0, 0), "lo": NicIO(0, 0)},
            {
                "eth0": NicIO(1000, 500),
                "docker0": NicIO(7000, 7000),
                "veth1a2b": NicIO(7000, 7000),
                "lo": NicIO(10**9, 10**9),
            },
        ]
    )
    monkeypatch.setattr(psutil, "net_io_counters", lambda pernic: next(readings))
    clock = ManualClock()
    collector = HostCollector(HostAgentConfig(), clock=clock)
    await collector.collect()
    clock.now += 10
    samples = (await collector.collect()).samples

    assert named(samples, "net.recv_bytes_per_second")[0].value == 100.0
    assert named(samples, "net.sent_bytes_per_second")[0].value == 50.0


# mounts ----------------------------------------------------------------------------------------


class Part(NamedTuple):
    device: str
    mountpoint: str
    fstype: str
    opts: str = "rw"


PARTITIONS = [
    Part("/dev/vda1", "/", "ext4"),
    Part("proc", "/proc", "proc"),
    Part("tmpfs", "/dev/shm", "tmpfs"),
    Part("overlay", "/var/lib/docker/overlay2/abc/merged", "overlay"),
    Part("/dev/vda1", "/var/lib/docker", "ext4"),  # bind mount of the same device
    Part("/dev/vdb", "/data", "xfs"),
]


@pytest.fixture
def fake_partitions(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Makes psutil list PARTITIONS whatever `all` is; records the `all` argument of each call."""
    calls: list[bool] = []

    def disk_partitions(all: bool = False) -> list[Part]:
        calls.append(all)
        return PARTITIONS

    monkeypatch.setattr(psutil, "disk_partitions", disk_partitions)
    return calls


def test_pseudo_file_systems_and_repeated_devices_are_not_watched_by_default(
    fake_partitions: list[bool],
) -> None:
    assert HostCollector(HostAgentConfig()).mounts() == [
        ("/", "/dev/vda1", "ext4"),
        ("/data", "/dev/vdb", "xfs"),
    ]


def test_mounts_setting_watches_exactly_the_listed_mounts(fake_partitions: list[bool]) -> None:
    collector = HostCollector(HostAgentConfig(mounts=["/data", "/dev/shm"]))

    assert collector.mounts() == [("/dev/shm", "tmpfs", "tmpfs"), ("/data", "/dev/vdb", "xfs")]
    assert fake_partitions == [True]  # listed mounts may be of any type, so list them all


async def test_pseudo_file_systems_of_this_machine_are_not_reported() -> None:
    disk = [s for s in await collect() if s.name in DISK]

    assert disk, "no disk sample at all"
    assert {s.labels["fstype"] for s in disk}.isdisjoint(PSEUDO_FS)


async def test_mounts_root_only_reports_root_and_nothing_else() -> None:
    disk = [s for s in await collect(HostAgentConfig(mounts=["/"])) if s.name in DISK]

    assert {s.labels["mount"] for s in disk} == {"/"}
    assert sorted(s.name for s in disk) == sorted(DISK)


async def test_a_listed_mount_that_is_missing_is_reported_critical() -> None:
    """A data disk named in `mounts` that is not mounted is a critical check, not silence."""
    collection = await HostCollector(HostAgentConfig(mounts=["/", "/no/such/mount"])).collect()

    checks = {c.target: c for c in collection.checks}
    assert checks["mount:/"].status == "ok"
    assert checks["mount:/no/such/mount"].status == "critical"
    assert "not mounted" in checks["mount:/no/such/mount"].detail


def test_a_mount_listed_twice_by_the_kernel_is_watched_once(monkeypatch: pytest.MonkeyPatch) -> None:
    stacked = [Part("/dev/vdb", "/data", "xfs"), Part("/dev/vdc", "/data", "xfs")]
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: stacked)

    assert HostCollector(HostAgentConfig(mounts=["/data"])).mounts() == [("/data", "/dev/vdb", "xfs")]


# config ----------------------------------------------------------------------------------------


def test_host_config_reads_its_table_with_the_shared_agent_settings() -> None:
    config = msgspec.convert(
        {"interval": "30s", "per_core": False, "mounts": ["/"], "ignore_fs_types": ["nfs"]},
        HostAgentConfig,
        dec_hook=dec_hook,
    )
    assert config.interval == Duration(30)
    assert (config.per_core, config.mounts, config.ignore_fs_types) == (False, ["/"], ["nfs"])
    assert HostAgentConfig().ignore_fs_types == list(PSEUDO_FS)


def test_host_config_refuses_unknown_keys() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `mount`"):
        msgspec.convert({"mount": ["/"]}, HostAgentConfig, dec_hook=dec_hook)


# blocking calls --------------------------------------------------------------------------------


class Usage(NamedTuple):
    total: int
    used: int
    free: int
    percent: float


class HangingDisk:
    """psutil.disk_usage hanging on one mount until released, as statvfs of a dead NFS server does."""

    def __init__(self, mount: str) -> None:
        self.mount = mount
        self.calls: Counter[str] = Counter()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    def __call__(self, path: str) -> Usage:
        self.calls[path] += 1
        if path == self.mount:
            self.entered.set()
            self.release.wait(10)  # bounded: a regression fails the test instead of hanging it
            self.returned.set()
        return Usage(100, 40, 60, 40.0)


@pytest.fixture
def hanging_data(monkeypatch: pytest.MonkeyPatch, fake_partitions: list[bool]) -> Iterator[HangingDisk]:
    disk = HangingDisk("/data")
    monkeypatch.setattr(psutil, "disk_usage", disk)
    yield disk
    disk.release.set()


def mounts_in(samples: list[Sample]) -> set[str]:
    return {s.labels["mount"] for s in samples if s.name in DISK}


async def test_a_hung_mount_never_blocks_the_loop_and_the_rest_still_publishes(
    hanging_data: HangingDisk,
) -> None:
    config = HostAgentConfig(timeout=Duration(1))  # waits 0.5 s for the mounts
    collector = HostCollector(config)
    publisher = RecordingPublisher()
    runner = AgentRunner(collector, publisher, config, "web01")

    async def loop_runs_while_the_call_hangs() -> bool:
        while not hanging_data.entered.is_set():
            await asyncio.sleep(0.005)
        return not hanging_data.returned.is_set()  # on the loop thread, this would run only after

    watch = asyncio.create_task(loop_runs_while_the_call_hangs())
    await asyncio.wait_for(runner.run_cycle(), timeout=5)

    assert await asyncio.wait_for(watch, timeout=5)
    (batch,) = publisher.assert_published("jarvis.metrics.web01.host", MetricBatch)
    assert isinstance(batch, MetricBatch)
    assert mounts_in(batch.samples) == {"/"}
    assert {vocab.CPU_COUNT, vocab.MEM_PERCENT, vocab.PROC_COUNT} <= {s.name for s in batch.samples}
    (check,) = publisher.assert_published("jarvis.health.web01.host.mount:/data", HealthEvent)
    assert isinstance(check, HealthEvent)
    assert check.status == "critical"
    assert "/data: disk usage has not answered" in check.detail
    assert "skipped until it does" in check.detail
    assert not publisher.events("jarvis.health.web01.host._collector")  # the collection itself succeeded


async def test_a_hung_mount_is_skipped_until_its_call_returns_then_reported_again(
    hanging_data: HangingDisk,
) -> None:
    collector = HostCollector(HostAgentConfig(timeout=Duration(0.2)))  # waits 0.1 s for the mounts
    await asyncio.wait_for(collector.collect(), timeout=5)

    still = await asyncio.wait_for(collector.collect(), timeout=5)
    assert hanging_data.calls == {"/": 2, "/data": 1}  # no second call piled up behind the hung one
    assert mounts_in(still.samples) == {"/"}
    assert [(c.target, c.status) for c in still.checks] == [("mount:/data", "critical")]

    hanging_data.release.set()
    await wait_until(lambda: collector.blocking.blocked_since("disk_usage /data") is None, timeout=5)
    back = await asyncio.wait_for(collector.collect(), timeout=5)
    assert mounts_in(back.samples) == {"/", "/data"}
    assert [(c.target, c.status, c.detail) for c in back.checks] == [("mount:/data", "ok", "answers again")]
    assert (await collector.collect()).checks == []  # a mount nobody listed is news only while it hangs


async def test_a_hung_reading_is_abandoned_reported_and_the_next_cycle_is_refused_until_it_returns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """psutil.pids hanging: the run loop's timeout abandons the cycle, later cycles fail at once."""
    release, real_pids = threading.Event(), psutil.pids

    def hanging_pids() -> list[int]:
        release.wait(10)
        return []

    monkeypatch.setattr(psutil, "pids", hanging_pids)
    config = HostAgentConfig(timeout=Duration(0.3))
    collector = HostCollector(config)
    publisher = RecordingPublisher()
    runner = AgentRunner(collector, publisher, config, "web01")
    try:
        await asyncio.wait_for(runner.run_cycle(), timeout=5)
        await asyncio.wait_for(runner.run_cycle(), timeout=5)
    finally:
        release.set()
    await wait_until(lambda: collector.blocking.blocked_since("psutil") is None, timeout=5)
    monkeypatch.setattr(psutil, "pids", real_pids)
    await asyncio.wait_for(runner.run_cycle(), timeout=5)

    checks = publisher.events("jarvis.health.web01.host._collector", HealthEvent)
    details = [(c.status, c.detail) for c in checks if isinstance(c, HealthEvent)]
    assert details[0] == ("critical", "collection timed out after 0.3s")
    assert details[1][0] == "critical"
    assert details[1][1].startswith("collection blocked: psutil: the previous call has not returned for")
    assert details[2] == ("ok", "collection recovered")
    assert len(publisher.events("jarvis.metrics.web01.host")) == 1
    assert "Traceback" not in caplog.text  # a known hang is one line a cycle, not a stack dump
