"""The container agent (aiodocker): every container's state, health and resources, Docker events, logs.

Each cycle lists every container (running or not) and inspects them, at most `concurrency`
requests at once, and publishes per container a health check (target: its name; statuses in
`container_status`) and its samples; stats come from a stream kept open per running container
while the watcher runs, else from one-shot requests. `watch` publishes container events at once
(statuses in `container_events`), follows the logs of every container (`container_follow`: counts
and rates as metrics, a check on target `log:<name>`, warning on a burst of error lines, and the
error and warning lines themselves for the logs stream), and when the engine goes away reports
target `docker` critical, retries with capped exponential backoff and resumes the event stream
where it left off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiodocker
import aiohttp

from agents.container_config import RETRY_FIRST
from agents.container_config import ContainerAgentConfig as ContainerAgentConfig  # re-exported
from agents.container_events import Deployments, deployed_check, event_check
from agents.container_follow import LogFollowers
from agents.container_logs import LogWatchConfig as LogWatchConfig  # re-exported: part of this config
from agents.container_state import (
    ContainerInfo,
    container_name,
    container_status,
    fleet_counts,
    parse_inspect,
    sample_labels,
)
from agents.container_stats import StatsMeter
from agents.container_streams import StatsStreams
from agents.docker_client import docker_client
from agents.runner import Check, Collection, Emit
from bus import vocabulary as vocab
from bus.aio import Backoff
from bus.events import Sample
from bus.redact import redact_text

log = logging.getLogger(__name__)

DOCKER_TARGET = vocab.DOCKER_TARGET  # health target of the engine itself
# Actions asked of the engine's event stream; the others (exec_start of every health check, ...)
# are never sent. health_status matches "health_status: <status>" (the engine matches it fuzzily).
WATCHED_EVENTS = ("create", "start", "restart", "die", "oom", "stop", "destroy", "health_status")
STREAM_FRESH = 3.0  # a streamed reading older than this (the engine sends one a second) is stale
# A log is read from this long before its container's start: the process prints before the
# engine stamps StartedAt or its start event. A restart's previous lines are kept out by resume_at.
START_SLACK = 1.0
PRIME_DELAY = 0.5  # the first cycle reads stats twice this far apart, so CPU and rates show at once

METRICS = vocab.CONTAINER_METRICS  # what this agent publishes, declared where the wire lives

# What a Docker engine that is down, restarting or hung raises.
ENGINE_ERRORS = (aiodocker.DockerError, aiohttp.ClientError, OSError, asyncio.TimeoutError)


class EngineDown(Exception):
    """The Docker engine cannot be reached; the message says why."""


def engine_error(exc: BaseException) -> str:
    """One line on a failed engine request, with any credentials in URLs masked."""
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer within the request timeout"
    text = exc.message if isinstance(exc, aiodocker.DockerError) else str(exc)
    return redact_text(text or type(exc).__name__)


def _since(ns: int) -> str:
    """Docker's `since` parameter from nanoseconds since the epoch."""
    return f"{ns // 10**9}.{ns % 10**9:09d}"


class ContainerCollector:
    """Collects every container's state and resources; `watch` follows events and logs."""

    name = vocab.CONTAINER_AGENT

    def __init__(
        self,
        config: ContainerAgentConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.clock = clock
        self.wall_clock = wall_clock
        self._sleep = sleep
        self._docker: aiodocker.Docker | None = None
        self._stream_docker: aiodocker.Docker | None = None  # its own connection pool
        # and the log followers theirs: each holds a connection for as long as its container runs,
        # which in the request client's pool (100) would leave inspect and list none to run on
        self._log_docker: aiodocker.Docker | None = None
        self._streams = StatsStreams(clock)
        self._engine_version: str | None = None
        self._bound = asyncio.Semaphore(config.concurrency)
        self._meter = StatsMeter()
        self._deployments = Deployments()
        self._primed = False
        self.logs = LogFollowers(config.logs, clock=clock, wall_clock=wall_clock)
        self._watching_since: float | None = None  # wall time `watch` started; None: not watching
        self._engine_up: bool | None = None  # as the watcher last reported it
        self._last_event_ns = 0  # engine time of the last event published
        self._resume_ns = 0  # where a new event stream starts: the last event, or the first connection
        self.rejected_events = 0  # events from the engine that could not be understood

    # engine access -------------------------------------------------------------------------

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            timeout = aiohttp.ClientTimeout(total=self.config.request_timeout.seconds)
            try:
                self._docker = docker_client(self.config.docker_url, timeout)
            except ValueError as exc:  # no DOCKER_HOST and no socket: nothing to connect to
                raise EngineDown(str(exc)) from None
        return self._docker

    def _stream_client(self) -> aiodocker.Docker:
        if self._stream_docker is None:
            self._stream_docker = docker_client(self.config.docker_url)
        return self._stream_docker

    def _log_client(self) -> aiodocker.Docker:
        if self._log_docker is None:
            self._log_docker = docker_client(self.config.docker_url)
        return self._log_docker

    async def _version(self, docker: aiodocker.Docker) -> str:
        """The engine's version, asked once per connection (an engine restart may upgrade it)."""
        if self._engine_version is None:
            version = await docker.version()
            self._engine_version = (
                f"Docker engine {version.get('Version', '?')} (API {version.get('ApiVersion', '?')})"
            )
        return self._engine_version

    async def close(self) -> None:
        """Stop following logs and stats streams and close the engine connections."""
        await self.logs.close()
        await self._streams.close()
        for client in (self._docker, self._stream_docker, self._log_docker):
            if client is not None:
                await client.close()
        self._docker = self._stream_docker = self._log_docker = None

    def _filters(self, **more: list[str]) -> str:
        filters = dict(more)
        if self.config.filter_labels:
            filters["label"] = list(self.config.filter_labels)
        return json.dumps(filters)

    # the cycle -----------------------------------------------------------------------------

    async def collect(self) -> Collection:
        started = self.clock()
        try:
            docker = self._client()
            listed = await docker.containers.list(all=True, filters=self._filters())
            engine = await self._version(docker)
        except (EngineDown, *ENGINE_ERRORS) as exc:
            self._engine_version = None
            reason = str(exc) if isinstance(exc, EngineDown) else engine_error(exc)
            return Collection(
                checks=[Check(DOCKER_TARGET, "critical", detail=f"Docker engine unreachable: {reason}")]
            )
        latency = round(self.clock() - started, 4)
        inspected = await asyncio.gather(*(self._inspect(docker, entry) for entry in listed))
        infos = [info for info in inspected if isinstance(info, ContainerInfo)]
        stats = await self._stats(docker, [info for info in infos if info.running])
        collection = Collection(
            checks=[Check(DOCKER_TARGET, "ok", latency=latency, detail=f"{engine} reachable")]
        )
        collection.checks += [check for check in inspected if isinstance(check, Check)]
        for info in infos:
            self._add_container(collection, info, stats.get(info.id))
        collection.samples += [Sample(name, value) for name, value in fleet_counts(infos).items()]
        self._add_logs(collection, infos)
        return collection

    async def _inspect(
        self, docker: aiodocker.Docker, entry: aiodocker.containers.DockerContainer
    ) -> ContainerInfo | Check | None:
        """The container's state; a Check with status unknown when it cannot be read, None when gone."""
        names = entry["Names"] if "Names" in entry else None  # noqa: SIM401 - no get() on it
        name = container_name(names[0] if names else entry.id[:12])
        try:
            async with self._bound:
                return parse_inspect(await docker.containers.container(entry.id).show())
        except aiodocker.DockerError as exc:
            if exc.status == 404:  # removed since it was listed
                return None
            reason = engine_error(exc)
        except ENGINE_ERRORS as exc:
            reason = engine_error(exc)
        image = entry["Image"] if "Image" in entry else ""  # noqa: SIM401 - no get() on it
        labels = {"image": str(image), "id": entry.id[:12]}
        return Check(name, "unknown", detail=f"could not inspect: {reason}", labels=labels)

    async def _stats(
        self, docker: aiodocker.Docker, running: list[ContainerInfo]
    ) -> dict[str, dict[str, float]]:
        """CPU, memory, I/O and PIDs of each running container, by id: from its open stream when
        the watcher runs, else one-shot (the first time twice, so CPU and rates show at once)."""
        if self._watching_since is not None:
            self._streams.follow(self._stream_client(), [info.id for info in running])
        raw = {info.id: latest for info in running if (latest := self._streams.latest(info.id, STREAM_FRESH))}
        missing = [info.id for info in running if info.id not in raw]
        if missing and not self._primed and self._watching_since is None:
            for container_id, stats in (await self._read_one_shot(docker, missing)).items():
                self._meter.update(container_id, stats)
            await self._sleep(PRIME_DELAY)
        self._primed = True
        raw.update(await self._read_one_shot(docker, missing))
        self._meter.retain(raw)
        return {container_id: self._meter.update(container_id, stats) for container_id, stats in raw.items()}

    async def _read_one_shot(
        self, docker: aiodocker.Docker, container_ids: list[str]
    ) -> dict[str, dict[str, Any]]:
        async def read(container_id: str) -> Any:
            try:
                async with self._bound:
                    # aiodocker has no one-shot flag; without it the engine waits ~2s for a second reading
                    return await docker._query_json(
                        f"containers/{container_id}/stats", params={"stream": "false", "one-shot": "true"}
                    )
            except ENGINE_ERRORS as exc:
                log.debug("container agent: no stats for %s: %s", container_id[:12], engine_error(exc))
                return None

        read_all = await asyncio.gather(*(read(container_id) for container_id in container_ids))
        return {
            cid: stats for cid, stats in zip(container_ids, read_all, strict=True) if isinstance(stats, dict)
        }

    def _add_container(
        self, collection: Collection, info: ContainerInfo, stats: Mapping[str, float] | None
    ) -> None:
        labels = info.sample_labels()
        values: dict[str, float] = {
            vocab.CONTAINER_RUNNING: float(info.running),
            vocab.CONTAINER_RESTART_COUNT: float(info.restart_count),
            vocab.CONTAINER_EXIT_CODE: float(info.exit_code),
            vocab.CONTAINER_UPTIME: (
                round(max(0.0, self.wall_clock() - info.started_at), 1)
                if info.running and info.started_at
                else 0.0
            ),
        }
        if info.running and info.health in ("healthy", "unhealthy", "starting"):
            values[vocab.CONTAINER_HEALTHY] = float(info.health == "healthy")
        values.update(stats or {})
        collection.samples += [Sample(name, value, labels) for name, value in values.items()]
        status, detail = container_status(info)
        collection.checks.append(Check(info.name, status, detail=detail, labels=info.check_labels()))
        previous = self._deployments.observe(info.name, info.id, info.image)
        if previous is not None:  # recreated while the event stream was not looking
            collection.checks.append(deployed_check(info.name, info.id, info.image, previous))

    # logs ----------------------------------------------------------------------------------

    def _add_logs(self, collection: Collection, infos: list[ContainerInfo]) -> None:
        """Per-interval log counts, a log health event and the kept lines of every followed container."""
        if self._watching_since is None:
            return
        for info in infos:
            if info.running and self.logs.selects(info.name, info.labels):
                started = (info.started_at or 0) - START_SLACK
                self._follow(info.id, info.name, info.sample_labels(), max(self._watching_since, started))
        self.logs.report(collection, {info.name for info in infos})

    def _follow(self, container_id: str, name: str, labels: dict[str, str], since: float) -> None:
        """Follow a container's log from `since` (wall time), while the engine is reachable."""
        if self._docker is not None:
            self.logs.follow(self._log_client(), container_id, name, labels, since)

    # the event stream ----------------------------------------------------------------------

    async def watch(self, emit: Emit) -> None:
        """Publish container events as they happen and follow logs, until cancelled; never raises."""
        self._watching_since = self.wall_clock()
        # one agent per engine: no crowd of clients to spread out, so no jitter
        backoff = Backoff(RETRY_FIRST, self.config.retry_max.seconds, jitter=0)
        try:
            while True:
                try:
                    docker = self._client()
                    engine = await self._version(docker)
                except (EngineDown, *ENGINE_ERRORS) as exc:
                    self._engine_version = None
                    reason = str(exc) if isinstance(exc, EngineDown) else engine_error(exc)
                    await self._report_engine(emit, False, f"Docker engine unreachable: {reason}")
                    await self._sleep(backoff.next())
                    continue
                await self._report_engine(emit, True, f"{engine} reachable, following its events")
                connected = self.clock()
                reason = await self._follow_events(docker, emit)
                self._engine_version = None
                if self.clock() - connected > self.config.retry_max.seconds:
                    backoff.reset()  # a long healthy stream: the next outage starts afresh
                await self._report_engine(emit, False, f"Docker engine event stream lost: {reason}")
                await self._sleep(backoff.next())
        finally:
            self._watching_since = None
            await self.close()

    async def _report_engine(self, emit: Emit, up: bool, detail: str) -> None:
        """Publish the engine's reachability when it changes."""
        if self._engine_up is up:
            return
        self._engine_up = up
        (log.info if up else log.error)("container agent: %s", detail)
        await emit(
            Check(
                DOCKER_TARGET,
                "ok" if up else "critical",
                detail=detail,
                event="connected" if up else "disconnected",
            )
        )

    async def _follow_events(self, docker: aiodocker.Docker, emit: Emit) -> str:
        """Publish each container event until the stream ends; why it ended.

        After an outage the stream resumes from the last event seen, so what happened while the
        agent was cut off (within what the engine still remembers) is published late, not lost.
        """
        params: dict[str, Any] = {"filters": self._filters(type=["container"], event=list(WATCHED_EVENTS))}
        if self._resume_ns:
            params["since"] = _since(self._resume_ns)
        self._resume_ns = self._resume_ns or int(self.wall_clock() * 1e9)
        subscriber = docker.events.subscribe(create_task=False)  # type: ignore[no-untyped-call]
        reader = asyncio.create_task(docker.events.run(**params))
        try:
            while (event := await subscriber.get()) is not None:
                try:
                    await self._on_event(event, emit)
                except Exception:  # a malformed event is counted and skipped, never the end of the stream
                    self.rejected_events += 1
                    log.exception("container agent: Docker event skipped: %.200r", event)
            await reader
            return "the engine closed it"
        except ENGINE_ERRORS as exc:
            return engine_error(exc)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, *ENGINE_ERRORS):
                await reader

    async def _on_event(self, event: Mapping[str, Any], emit: Emit) -> None:
        stamp = event.get("timeNano")
        if isinstance(stamp, int):
            if stamp <= self._last_event_ns:  # replayed after a reconnect: published already
                return
            self._last_event_ns = self._resume_ns = stamp
        check = event_check(event, self._deployments)
        if check is not None:
            await emit(check)
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        name = str(attributes.get("name") or "")
        if (
            event.get("Action") == "start"
            and self._watching_since is not None
            and self.logs.selects(name, attributes)
        ):
            labels = sample_labels(name, str(attributes.get("image", "")), attributes)
            since = (stamp / 1e9 if isinstance(stamp, int) else self.wall_clock()) - START_SLACK
            self._follow(str(actor.get("ID") or ""), name, labels, since)
