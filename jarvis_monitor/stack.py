"""Composing the running parts: the embedded server, the bus, JetStream, the agents, the evaluator
and the sinks, each under a supervisor that restarts it when it fails."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from agents.runner import AgentRunner, Collector
from bus import vocabulary as vocab
from bus.aio import Backoff, cancel_and_wait
from bus.connection import Bus, configured_urls, connect
from bus.jetstream import provision
from bus.server import EmbeddedServer, ServerError
from jarvis_monitor.commands import EXIT_CONFIG, error
from jarvis_monitor.config import Config
from jarvis_monitor.supervisor import DEFAULT_RESTART, Part, RestartPolicy, Service, Supervisor

log = logging.getLogger(__name__)

AGENT_NAMES = vocab.AGENTS
STOP_GRACE = 10.0  # seconds every part has to return after a stop
SERVER_GONE_GRACE = 0.5  # the same once the embedded server died: nothing they could still save gets out


def make_collector(name: str, config: Config) -> Collector:
    """The collector of one agent, by its name on the command line.

    Each collector's module is imported here, when asked for: an agent process loads only its own
    (`agent host` no Docker client, no PostgreSQL driver)."""
    if name == "host":
        from agents.host import HostCollector

        return HostCollector(config.agents.host)
    if name == "container":
        from agents.container import ContainerCollector

        return ContainerCollector(config.agents.container)
    if name == "probe":
        from agents.probe import ProbeCollector

        return ProbeCollector(config.agents.probe)
    if name == "postgres":
        from agents.postgres import PostgresCollector

        return PostgresCollector(config.agents.postgres)
    raise ValueError(f"unknown agent {name!r}; known: {', '.join(AGENT_NAMES)}")


def enabled_agents(config: Config) -> list[str]:
    """The agents `up` runs: those enabled, and the database agent only with a server to watch."""
    return [
        name
        for name in AGENT_NAMES
        if getattr(config.agents, name).enabled
        and (name != vocab.POSTGRES_AGENT or config.agents.postgres.servers)
    ]


def make_runner(name: str, config: Config, bus: Bus) -> AgentRunner:
    agent_config = getattr(config.agents, name)
    return AgentRunner(make_collector(name, config), bus, agent_config, config.agents.resolved_hostname())


ServiceFactory = Callable[[Bus], Service]


@dataclass(frozen=True)
class ServiceSpec:
    """A service (the evaluator, a sink) by its name on the bus and in logs, and how to make one."""

    name: str
    label: str
    make: ServiceFactory


def enabled_services(config: Config) -> list[ServiceSpec]:
    """The evaluator and the sinks that `up` runs beside the agents."""
    # imported only by `up`: an agent or a single sink never loads the others
    from evaluator.partitions import evaluator_service
    from sinks.console.service import CONSOLE_PART, console_service
    from sinks.report.service import ReportSink
    from sinks.slack import SlackSink

    specs: list[ServiceSpec] = []
    if config.evaluator.enabled:
        specs.append(
            ServiceSpec(
                vocab.EVALUATOR_PART, "evaluator", lambda bus: evaluator_service(config.evaluator, bus)
            )
        )
    if config.sinks.slack.enabled:
        specs.append(
            ServiceSpec(vocab.SLACK_PART, "slack sink", lambda bus: SlackSink(config.sinks.slack, bus))
        )
    if config.sinks.report.enabled:
        specs.append(
            ServiceSpec(
                vocab.REPORT_PART,
                "report sink",
                lambda bus: ReportSink(config.sinks.report, bus, config.resolved_data_dir()),
            )
        )
    if config.sinks.console.enabled:
        specs.append(
            ServiceSpec(
                CONSOLE_PART,
                "console",
                lambda bus: console_service(config.sinks.console, config.sinks.report, bus),
            )
        )
    return specs


class Shutdown:
    """SIGTERM and SIGINT: cancel a start-up still in progress, or ask the running parts to stop.

    Installed before anything starts, so a stop that arrives while the server comes up or while
    an agent waits for NATS is as graceful as one that arrives later.
    """

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self._main = asyncio.current_task()
        self._callbacks: list[Callable[[], None]] = []
        self._started = False
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request)

    def started(self, *callbacks: Callable[[], None]) -> None:
        """Start-up is over; from now on a stop calls `callbacks` instead of cancelling."""
        self._started = True
        self._callbacks += callbacks
        if self.requested.is_set():
            for callback in callbacks:
                callback()

    def request(self) -> None:
        if self.requested.is_set():
            return
        log.info("stopping: abandoning collections in progress and flushing what was published")
        self.requested.set()
        if not self._started and self._main is not None:
            self._main.cancel()
        for callback in self._callbacks:
            callback()


# A cluster node still joining is "offline" to placement for a few seconds: worth waiting for.
PROVISION_ATTEMPTS = 8
_TRANSIENT = ("peer offline", "timeout", "no responders")


async def provision_streams(bus: Bus, config: Config, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
    """Create or update the streams; a server without JetStream only loses persistence."""
    backoff = Backoff(0.5, 5.0)
    while True:
        try:
            changes = await provision(
                bus.nc.jetstream(), bus.subjects, config.bus.streams, replicas=config.bus.replicas
            )
            break
        except Exception as exc:  # no JetStream, or no permission: core publishing still works
            transient = any(word in str(exc) for word in _TRANSIENT)
            if transient and backoff.attempts + 1 < PROVISION_ATTEMPTS:
                log.warning("JetStream provisioning failed (%s), retrying", exc)
                await sleep(backoff.next())
                continue
            log.error("JetStream provisioning failed, events will not be persisted: %s", exc)
            return
    changed = {name: change for name, change in changes.items() if change != "unchanged"}
    if changed:
        log.info("JetStream: %s", ", ".join(f"{n} {c}" for n, c in changed.items()))


@contextlib.asynccontextmanager
async def open_bus(
    config: Config, name: str, *, embedded: bool, provisions: bool = True
) -> AsyncIterator[tuple[Bus, EmbeddedServer | None]]:
    """Connect (starting the embedded server first when asked), provision unless told not to, and
    clean up after."""
    server = EmbeddedServer(config.server, config.resolved_data_dir()) if embedded else None
    try:
        servers = None
        if server is not None:
            await server.start()
            servers = [server.url]
        bus = await connect(config.bus, name, servers=servers, wait=not embedded)
        try:
            if provisions:
                await provision_streams(bus, config)
            yield bus, server
        finally:
            # a server known dead will not come back: waiting for a reconnect would only delay the exit
            await bus.close(0.0 if server is not None and not server.running else 5.0)
    finally:
        if server is not None:
            await server.stop()


def wants_embedded_server(config: Config) -> bool:
    """`up` embeds a server unless a URL is configured (in the file or JARVIS_NATS_URL)."""
    return not configured_urls(config.bus)


async def run_until_stopped(
    config: Config,
    names: list[str],
    bus: Bus,
    shutdown: Shutdown,
    server: EmbeddedServer | None = None,
    services: Sequence[ServiceSpec] = (),
    restart: RestartPolicy = DEFAULT_RESTART,
) -> None:
    """Run the named agents and `services`, each under its supervisor, until a stop is requested
    (or the embedded server dies: then ServerError)."""
    host = config.agents.resolved_hostname()
    parts = [Part(name, f"{name} agent", partial(make_runner, name, config, bus)) for name in names]
    parts += [Part(spec.name, spec.label, partial(spec.make, bus)) for spec in services]
    # each made once now, so that what cannot even start (a file refused) ends the command
    supervisors = [Supervisor(part, bus, host, first=part.make(), policy=restart) for part in parts]
    shutdown.started(*(supervisor.stop for supervisor in supervisors))
    if names:
        log.info("running agents %s as host %r", ", ".join(names), host)
    tasks = [asyncio.create_task(s.run(), name=s.part.label) for s in supervisors]
    watchers: list[asyncio.Task[object]] = [asyncio.create_task(shutdown.requested.wait())]
    if server is not None:
        watchers.append(asyncio.create_task(server.wait()))
    await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
    server_died = server is not None and not shutdown.requested.is_set() and not server.running
    if server_died:
        assert server is not None
        log.critical(
            "the embedded nats-server died (%s): stopping, nothing can be published or stored "
            "without it; see %s",
            server.exit_reason(),
            server.log_file,
        )
    for supervisor in supervisors:
        supervisor.stop()
    await _finish(tasks, SERVER_GONE_GRACE if server_died else STOP_GRACE, server_gone=server_died)
    for watcher in watchers:
        watcher.cancel()
    if server_died:
        assert server is not None
        raise ServerError(
            f"the embedded nats-server exited unexpectedly ({server.exit_reason()}); see {server.log_file}"
        )


def _awaiting(task: asyncio.Task[None]) -> list[str]:
    """Where a suspended task waits: its chain of awaits, outermost first."""
    chain = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return chain


async def _finish(
    tasks: list[asyncio.Task[None]], grace: float = STOP_GRACE, *, server_gone: bool = False
) -> None:
    """Wait for every part to return after its stop; one that does not is named, then cancelled.

    A stop must never hang: under systemd that would end in a SIGKILL and lose what was buffered.
    With the server gone, a part still waiting on it is expected and only noted.
    """
    _, stuck = await asyncio.wait(tasks, timeout=grace)
    for task in stuck:
        where = " -> ".join(_awaiting(task)) or "?"
        if server_gone:
            log.info("%s cancelled: it was waiting in %s, on the server that is gone", task.get_name(), where)
            continue
        log.error(
            "%s still running %.0fs after the stop, cancelling it; it was waiting in %s",
            task.get_name(),
            grace,
            where,
        )
    await cancel_and_wait(stuck)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed while stopping: %r", task.get_name(), task.exception())


async def _until_stopped(
    component: str,
    config: Config,
    names: list[str],
    *,
    embedded: bool,
    services: Sequence[ServiceSpec] = (),
    provisions: bool = True,
) -> None:
    shutdown = Shutdown()
    try:
        async with open_bus(config, component, embedded=embedded, provisions=provisions) as (bus, server):
            await run_until_stopped(config, names, bus, shutdown, server, services)
    except asyncio.CancelledError:
        if not shutdown.requested.is_set():
            raise
        log.info("stopped during start-up")


async def up(config: Config) -> None:
    """The whole stack in one process."""
    names = enabled_agents(config)
    await _until_stopped(
        "jarvis-monitor up",
        config,
        names,
        embedded=wants_embedded_server(config),
        services=enabled_services(config),
    )


async def agent(config: Config, name: str) -> int | None:
    """One agent on its own, against the configured NATS (waiting for it if it is not up yet)."""
    make_collector(name, config)  # an unknown name fails before connecting
    if name == vocab.POSTGRES_AGENT and not config.agents.postgres.servers:
        error(
            "agent postgres: no server to watch; add [agents.postgres] servers = [{ name = ..., dsn = ... }]"
        )
        return EXIT_CONFIG
    # the streams are the evaluator's to make: an agent's user may not (deploy/nats-server.conf),
    # and the refused requests would hold its start for their timeouts
    await _until_stopped(f"jarvis-monitor agent {name}", config, [name], embedded=False, provisions=False)
    return None


async def service(config: Config, component: str, make: ServiceFactory) -> None:
    """One service (a sink) on its own, against the configured NATS, waiting for the streams the
    evaluator makes (its user may not make them: deploy/nats-server.conf).

    Its name on the bus is the last word of `component` (`sink slack`: `slack`).
    """
    spec = ServiceSpec(component.split()[-1], component, make)
    await _until_stopped(
        f"jarvis-monitor {component}", config, [], embedded=False, services=[spec], provisions=False
    )
