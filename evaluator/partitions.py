"""Several evaluators sharing the hosts: one process runs a service per partition, each evaluating
only while it holds that partition's lease, with one heartbeat and one watchdog for them all.

Why partition leases over the server's `partition()`: the server splits the inputs by host into
subject ranges (bus/partitions.py), so a partition's consumers receive only its hosts, and no
process decodes what it does not evaluate; the leases say which process evaluates which range,
and a partition whose process dies is taken over with its state (base and journal under its own
keys), as the single evaluator is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable

import msgspec
import nats.errors
from nats.js.kv import KeyValue

from bus import deadletter
from bus import vocabulary as vocab
from bus.aio import cancel_and_wait
from bus.connection import Bus
from bus.heartbeat import beat
from evaluator.config import EvaluatorConfig
from evaluator.service import LEASE_RETRY, EvaluatorService
from evaluator.share import Share
from evaluator.store import open_buckets
from evaluator.watchdog import WatchdogStats, start_watchdog

log = logging.getLogger(__name__)


def partition_config(config: EvaluatorConfig, partition: int) -> EvaluatorConfig:
    """The config one partition evaluates with: maintenance windows are announced by partition 0."""
    if partition == 0:
        return config
    windows = [msgspec.structs.replace(window, announce=False) for window in config.maintenance_windows]
    return msgspec.structs.replace(config, maintenance_windows=windows)


class PartitionedEvaluator:
    """Every partition of `config.partitions`, each evaluated here while this process holds it."""

    def __init__(
        self,
        config: EvaluatorConfig,
        bus: Bus,
        *,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        batch_window: float = 0.2,
    ) -> None:
        self.config = config
        self.bus = bus
        self.host = host or socket.gethostname()
        self.clock = clock
        self.share = Share(config.partitions, clock=clock)
        self.services = [
            EvaluatorService(
                partition_config(config, partition),
                bus,
                clock=clock,
                host=self.host,
                partition=partition,
                share=self.share,
                batch_window=batch_window,
            )
            for partition in range(config.partitions)
        ]
        self.rejections = deadletter.Rejections()
        self.watchdog = WatchdogStats()
        self._stopping = asyncio.Event()
        self._kv: KeyValue | None = None  # the state bucket, once _announce opened it

    def stop(self) -> None:
        self._stopping.set()
        for service in self.services:
            service.stop()

    def counters(self) -> dict[str, int]:
        """The partitions' counters added up, and how many of them this process evaluates."""
        total: Counter[str] = Counter()
        for service in self.services:
            total.update(service.counters())
        total["standing_by"] = int(not self.share.held)
        total["partitions"] = len(self.share.held)
        return dict(total)

    def _rejections(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for service in self.services:
            total.update(service.rejections.by_reason)
        return dict(total)

    def health_problem(self) -> str | None:
        """The first problem of a partition this process evaluates; None when they are healthy."""
        held = [s for s in self.services if s.partition in self.share.held]
        if not held:
            return "this evaluator holds no partition"
        for service in held:
            problem = service.health_problem()
            if problem is not None:
                return f"partition {service.partition}: {problem}"
        return None

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(
                beat(
                    self.bus, self.host, vocab.EVALUATOR_PART, self.counters, self._rejections, self._stopping
                )
            ),
            asyncio.create_task(self._announce()),
        ]
        watchdog = start_watchdog(self.config.watchdog, self.health_problem, self._stopping, self.watchdog)
        tasks += [watchdog] if watchdog is not None else []
        try:
            await asyncio.gather(*(service.evaluate() for service in self.services))
        finally:
            await cancel_and_wait(tasks)
            if self._kv is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.share.withdraw(self._kv), LEASE_RETRY * 5)

    async def _announce(self) -> None:
        """Keep this process in the record of live evaluators, as often as a lease is renewed."""
        while True:
            try:
                if self._kv is None:
                    state, _ = await open_buckets(self.bus.nc.jetstream(), self.bus.subjects.prefix)
                    self._kv = state.blobs.kv
                await self.share.announce(self._kv)
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.warning("evaluator: cannot count the evaluators (%s), retrying", exc)
                await asyncio.sleep(LEASE_RETRY)
                continue
            await asyncio.sleep(self.share.ttl / 3)


def evaluator_service(config: EvaluatorConfig, bus: Bus) -> EvaluatorService | PartitionedEvaluator:
    """The evaluator `jarvis-monitor evaluator` and `up` run: partitioned when the config says so."""
    if config.partitions > 1:
        return PartitionedEvaluator(config, bus)
    return EvaluatorService(config, bus)
