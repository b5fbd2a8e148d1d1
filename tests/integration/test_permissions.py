"""The shipped NATS permissions (deploy/nats-server.conf) on a real nats-server: every part does its
job as its own user, and what one user could do to the others before is refused."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, KeyValueConfig, StorageType

from agents.runner import AgentConfig, AgentRunner, Collection
from bus import vocabulary as vocab
from bus.config import BusConfig
from bus.connection import Bus, BusUnavailableError, connect
from bus.events import Alert, Sample, encode
from bus.jetstream import bucket_name, provision, stream_name
from bus.server import free_port
from bus.units import Duration
from evaluator.config import EvaluatorConfig
from evaluator.engine import ActiveAlert
from evaluator.partitions import PartitionedEvaluator
from evaluator.service import DURABLE, EvaluatorService
from evaluator.store import LEASE_KEY, SNAPSHOT_KEY, ActiveAlerts, LeaseRecord, StateStore, open_buckets
from jarvis_monitor.cli import main
from sinks.report.config import ReportSinkConfig
from sinks.report.service import ReportSink
from sinks.slack import SlackSink, SlackSinkConfig
from tests.conftest import nats_server_binary, wait_until
from tests.fakeslack import TOKEN, FakeSlack, slack_error
from tests.integration.test_evaluator_service import DISK_RULE, evaluator_config
from tests.integration.test_slack_sink import bot_config

pytestmark = pytest.mark.integration

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "nats-server.conf"
AUTHORIZATION = "nats-authorization.conf"
ROLES = ("agent", "evaluator", "slack", "report", "operator", "viewer")
PREFIX = "jarvis"  # the shipped file names the default prefix's streams and buckets
TIMEOUT = 30.0
REFUSAL_TIMEOUT = 10.0  # a refusal comes within milliseconds; this long means none is coming
ALERTS = stream_name(PREFIX, "alerts")
METRICS = stream_name(PREFIX, "metrics")
NOTIFICATIONS = stream_name(PREFIX, "notifications")
STATE = bucket_name(PREFIX, "state")
STATE_STREAM = f"KV_{STATE}"
SLACK_DURABLE = SlackSinkConfig().durable
REPORT_DURABLE = ReportSinkConfig().durable


# --- the server, as deploy/nats-server.conf sets it up ---------------------------------------------


def password_hash(password: str) -> str:
    """A bcrypt hash as `nats server passwd` makes one, where this Python can; else the clear text,
    which the server takes as well."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:  # gone in Python 3.13
            return password
    method = getattr(crypt, "METHOD_BLOWFISH", None)
    if method is None:
        return password
    return crypt.crypt(password, crypt.mksalt(method, rounds=16)) or password


def shipped_config(directory: Path, port: int, passwords: str) -> Path:
    """deploy/nats-server.conf as shipped, only moved to loopback, a free port and the test's own
    store; `passwords` beside it as the jarvis-passwords.conf it includes."""
    directory.mkdir()
    (directory / "jarvis-passwords.conf").write_text(passwords)
    text = SHIPPED.read_text()
    moves: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"^listen: .*$", lambda _: f'listen: "127.0.0.1:{port}"'),
        (r"^http: .*$", lambda _: "# no monitoring port in the test"),
        (r"^(\s*)store_dir: .*$", lambda line: f'{line[1]}store_dir: "{directory / "store"}"'),
    ]
    for pattern, move in moves:
        text, count = re.subn(pattern, move, text, flags=re.MULTILINE)
        assert count == 1, f"deploy/nats-server.conf has {count} lines matching {pattern}, not one"
    conf = directory / "nats-server.conf"
    conf.write_text(text)
    # the users and permissions, which the file includes from its own directory
    shutil.copy(SHIPPED.with_name(AUTHORIZATION), directory / AUTHORIZATION)
    return conf


@dataclass
class Secured:
    """A nats-server running the shipped permissions, and a user per role."""

    url: str
    directory: Path
    log_file: Path

    @staticmethod
    def password(role: str) -> str:
        return f"{role}-s3cret-pw"

    def bus_config(self, role: str, *, inbox_prefix: str | None = None) -> BusConfig:
        path = self.directory / f"{role}.password"
        path.write_text(self.password(role))
        return BusConfig(
            servers=[self.url],
            user=role,
            password_file=str(path),
            inbox_prefix=inbox_prefix or f"_INBOX_{role}",
        )

    async def connect(self, role: str) -> Bus:
        return await connect(self.bus_config(role), f"test {role}", servers=[self.url])

    def config_file(self, role: str, *, inbox_prefix: str | None = None) -> Path:
        """A jarvis-monitor config for the command line, connecting as `role`."""
        bus = self.bus_config(role, inbox_prefix=inbox_prefix)
        path = self.directory / f"{role}-{bus.inbox_prefix}.toml"
        fields = {
            "servers": bus.servers,
            "user": bus.user,
            "password_file": bus.password_file,
            "inbox_prefix": bus.inbox_prefix,
        }
        path.write_text(
            f"data_dir = {json.dumps(str(self.directory / role))}\n[bus]\n"
            + "".join(f"{key} = {json.dumps(value)}\n" for key, value in fields.items())
        )
        return path

    def violations(self) -> list[str]:
        """What the server refused anyone, as it logged it."""
        return [line for line in self.log_file.read_text().splitlines() if "Violation" in line]


@contextlib.asynccontextmanager
async def shipped_server(directory: Path, passwords: str) -> AsyncIterator[Secured]:
    """nats-server running the shipped file, with `passwords` as its jarvis-passwords.conf."""
    binary = nats_server_binary()
    port = free_port()
    conf = shipped_config(directory, port, passwords)
    log_file = directory / "nats-server.log"
    process = await asyncio.create_subprocess_exec(
        binary,
        "-c",
        str(conf),
        "-l",
        str(log_file),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )

    async def ready() -> None:
        while "Server is ready" not in (log_file.read_text() if log_file.exists() else ""):
            if process.returncode is not None:
                assert process.stderr is not None
                pytest.fail(
                    f"nats-server refused the shipped config: {(await process.stderr.read()).decode()}"
                )
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(ready(), 15)
        yield Secured(f"nats://127.0.0.1:{port}", directory, log_file)
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    """The shipped server with a password per role, as docs/operations.md says to make them."""
    lines = [f'{role.upper()}_PASSWORD: "{password_hash(Secured.password(role))}"' for role in ROLES]
    async with shipped_server(tmp_path / "nats", "\n".join(lines) + "\n") as server:
        yield server


@contextlib.asynccontextmanager
async def users(server: Secured, *roles: str) -> AsyncIterator[dict[str, Bus]]:
    """One connection per role, each as its own user with its own inbox."""
    buses: dict[str, Bus] = {}
    try:
        for role in roles:
            buses[role] = await server.connect(role)
        yield buses
    finally:
        for bus in buses.values():
            await bus.close()


# --- what a user may not do ----------------------------------------------------------------------


def refusal_of(bus: Bus, subject: str) -> bool:
    """Did the server refuse `subject` to this connection (its latest error says so)?

    A refusal is an asynchronous error; nats-py lowers its case.
    """
    return f'to "{subject.lower()}"' in str(bus.nc.last_error or "").lower()


async def refused(bus: Bus, attempt: Awaitable[object], subject: str) -> None:
    """`attempt` gets nowhere, because the server refuses `subject` to this user."""
    task = asyncio.ensure_future(attempt)
    try:
        await wait_until(lambda: refusal_of(bus, subject) or task.done(), REFUSAL_TIMEOUT)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled() and task.exception() is None:
        pytest.fail(f"{subject} was allowed to {bus.name}: {task.result()!r}")
    assert refusal_of(bus, subject), f"{subject} failed, but not for the permissions: {task!r}"


async def publish_refused(bus: Bus, subject: str, payload: bytes = b"forged") -> None:
    """A plain publish to `subject` is dropped by the server, which says so."""
    await bus.nc.publish(subject, payload)
    await refusal(bus, subject, f"{bus.name} may publish to {subject}")


async def subscribe_refused(bus: Bus, subject: str) -> list[Msg]:
    """Subscribe to `subject`, which the server refuses; returns what arrives anyway (to check later)."""
    received: list[Msg] = []

    async def on_message(msg: Msg) -> None:
        received.append(msg)

    await bus.nc.subscribe(subject, cb=on_message)
    await refusal(bus, subject, f"{bus.name} may subscribe to {subject}")
    return received


async def refusal(bus: Bus, subject: str, otherwise: str) -> None:
    """Wait for the server's refusal of `subject` (it may come after the answer to a later ping)."""
    try:
        await wait_until(lambda: refusal_of(bus, subject), REFUSAL_TIMEOUT)
    except TimeoutError:
        pytest.fail(otherwise)


async def messages_in(bus: Bus, stream: str) -> int:
    return (await bus.nc.jetstream().stream_info(stream)).state.messages


# --- the parts, each run by the real code as its own user ----------------------------------------


class Disk:
    """The host agent's disk usage of one host, set by the test."""

    name = vocab.HOST_AGENT

    def __init__(self, percent: float) -> None:
        self.percent = percent

    async def collect(self) -> Collection:
        return Collection(samples=[Sample(vocab.DISK_PERCENT, self.percent, {"mount": "/"})])


def quiet_evaluator_config() -> EvaluatorConfig:
    """The integration timings, with no reminders: each message to Slack is one the test causes."""
    config = evaluator_config()
    route = msgspec.structs.replace(config.default_route, repeat_interval=Duration(3600))
    return msgspec.structs.replace(config, default_route=route)


@contextlib.asynccontextmanager
async def running(*parts: Any) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(part.run()) for part in parts]
    try:
        yield
    finally:
        for part in parts:
            part.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)


async def eventually(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll the async `probe` until it holds, failing after TIMEOUT."""

    async def poll() -> None:
        while not await probe():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), TIMEOUT)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def cli(server: Secured, role: str, *args: str, inbox_prefix: str | None = None) -> int:
    """`jarvis-monitor ARGS...` as `role`, in a thread (it runs its own event loop)."""
    config = server.config_file(role, inbox_prefix=inbox_prefix)
    return await asyncio.to_thread(main, ["-c", str(config), *args])


async def cli_json(server: Secured, role: str, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    assert await cli(server, role, *args, "--json") == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def disk_alerts(shown: Any) -> list[Any]:
    """The disk alerts of `jarvis-monitor alerts --json` (built-in rules may add others)."""
    return [a for a in shown["alerts"] if a["rule"] == DISK_RULE]


async def lease_of(bus: Bus) -> LeaseRecord:
    """The evaluator's lease as stored, read as the evaluator."""
    kv = await bus.nc.jetstream().key_value(STATE)
    return msgspec.json.decode((await kv.get(LEASE_KEY)).value or b"", type=LeaseRecord)


async def consumed(bus: Bus, stream: str, durable: str) -> bool:
    """Has `durable` acknowledged anything of `stream`? Asked as the consumer's own user."""
    info = await bus.nc.jetstream().consumer_info(stream, durable)
    return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) > 0


async def test_every_part_does_its_job_as_its_own_user(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk goes from the agent through the evaluator to Slack and the report; the operator
    replays what Slack refused, acks and silences; the viewer sees it all; nothing is refused."""
    slack = FakeSlack(script=[slack_error("channel_not_found")])  # the first post is dead-lettered
    await slack.start()
    disk = Disk(97.0)
    async with users(secured, "evaluator", "agent", "slack", "report") as bus:
        # as `jarvis-monitor evaluator` starts: it provisions the streams, then evaluates
        await provision(bus["evaluator"].nc.jetstream(), bus["evaluator"].subjects, BusConfig().streams)
        evaluator = EvaluatorService(quiet_evaluator_config(), bus["evaluator"])
        agent = AgentRunner(
            disk, bus["agent"], AgentConfig(interval=Duration(0.3), warmup=Duration(0)), "web01"
        )
        sink = SlackSink(bot_config(slack), bus["slack"], {"SLACK_BOT_TOKEN": TOKEN})
        reports = ReportSink(ReportSinkConfig(), bus["report"], tmp_path / "report")
        try:
            async with running(evaluator, agent, sink, reports):
                await wait_until(lambda: sink.stats.dead_lettered == 1, TIMEOUT)

                # the operator finds what Slack refused and replays it, once Slack takes it again
                [letter] = await cli_json(secured, "operator", capsys, "deadletter", "list")
                assert letter["original_subject"].startswith(f"{PREFIX}.notifications.")
                assert await cli(secured, "operator", "deadletter", "replay", str(letter["seq"])) == 0
                await wait_until(lambda: len(slack.top_level()) == 1, TIMEOUT)
                assert "web01" in json.dumps(slack.top_level()[0].payload)
                assert await cli_json(secured, "operator", capsys, "deadletter", "list") == []

                # the operator acks the alert and adds a silence; the evaluator applies the ack
                [firing] = disk_alerts(await cli_json(secured, "operator", capsys, "alerts"))
                assert firing["labels"]["host"] == "web01"
                assert await cli(secured, "operator", "ack", firing["fingerprint"]) == 0
                capsys.readouterr()
                add = ("silence", "add", "host=web02", "--for", "1h", "--comment", "disk swap")
                assert await cli(secured, "operator", *add) == 0
                silence_id = capsys.readouterr().out.strip()

                # the viewer sees the alert acked, the silence, every part's heartbeat, the stream
                async def acked() -> bool:
                    shown = await cli_json(secured, "viewer", capsys, "alerts")
                    return [a["acked"] for a in disk_alerts(shown)] == [True]

                await eventually(acked, "the viewer to see the ack")
                silences = await cli_json(secured, "viewer", capsys, "silence", "list")
                assert [s["id"] for s in silences] == [silence_id]

                async def everyone_beats() -> bool:
                    capsys.readouterr()
                    await cli(secured, "viewer", "status", "--json")
                    shown = {(s["host"], s["agent"]) for s in json.loads(capsys.readouterr().out)}
                    return ("web01", vocab.HOST_AGENT) in shown and {
                        vocab.EVALUATOR_PART,
                        vocab.SLACK_PART,
                        vocab.REPORT_PART,
                    } <= {a for _, a in shown}

                await eventually(everyone_beats, "the viewer's status to show the agent and every part")
                tail = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "jarvis_monitor",
                    "-c",
                    str(secured.config_file("viewer")),
                    "tail",
                    "-n",
                    "3",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await asyncio.wait_for(tail.communicate(), TIMEOUT)
                assert tail.returncode == 0, err.decode()
                assert "web01/host" in out.decode()
                assert await cli(secured, "viewer", "logs") == 0  # none kept here: the search is what counts

                # the report sink consumed what it reports on
                await eventually(lambda: consumed(bus["report"], METRICS, REPORT_DURABLE), "metrics reported")
                await eventually(lambda: consumed(bus["report"], ALERTS, REPORT_DURABLE), "alerts reported")

                # the disk is freed: the resolve updates the group's message, found through the
                # thread the Slack sink kept in KV
                disk.percent = 50.0
                await wait_until(lambda: slack.top_level()[0].updates == 1, TIMEOUT)
                assert len(slack.top_level()) == 1

                # the evaluator's own state: the lease it holds, the snapshot and the active alerts
                kv = await bus["evaluator"].nc.jetstream().key_value(STATE)
                assert (await lease_of(bus["evaluator"])).pid == os.getpid()
                state = StateStore(kv)
                assert await state.load() is not None
                assert await state.load_active() is not None

            # a restart as its user: its consumers remade, the lease taken again, the state restored
            again = EvaluatorService(quiet_evaluator_config(), bus["evaluator"])
            async with running(again):
                await asyncio.wait_for(again.ready.wait(), TIMEOUT)
                assert again.standing_by is None
        finally:
            await slack.stop()
    assert secured.violations() == [], "a part was refused something its job needs"


@contextlib.asynccontextmanager
async def owners_at_work(bus: dict[str, Bus]) -> AsyncIterator[None]:
    """The streams provisioned, an alert stored, the evaluator running (its lease, its consumers)
    and the Slack sink's consumer made, each by its own user."""
    evaluator_bus = bus["evaluator"]
    await provision(evaluator_bus.nc.jetstream(), evaluator_bus.subjects, BusConfig().streams)
    alert = Alert(
        fingerprint="f1",
        rule=DISK_RULE,
        severity="critical",
        status="firing",
        labels={"host": "web01"},
        summary="disk / on web01 is 97% full",
        starts_at=1.0,
    )
    await evaluator_bus.nc.jetstream().publish(
        evaluator_bus.subjects.alerts("critical", "web01", DISK_RULE), encode(alert)
    )
    sink = SlackSink(SlackSinkConfig(), bus["slack"], {}, out=io.StringIO())
    evaluator = EvaluatorService(evaluator_config(), evaluator_bus)
    async with running(sink, evaluator):
        await asyncio.wait_for(evaluator.ready.wait(), TIMEOUT)
        slack_js = bus["slack"].nc.jetstream()
        await eventually(
            lambda: _exists(slack_js.consumer_info(NOTIFICATIONS, SLACK_DURABLE)), "the slack consumer"
        )
        yield


async def _exists(info: Awaitable[object]) -> bool:
    try:
        await info
    except Exception:  # not there yet
        return False
    return True


async def test_an_agent_reads_nothing_and_breaks_nothing(secured: Secured) -> None:
    """What the issue found the agent user could do: read the evaluator's KV, read notifications
    through a consumer, read others' replies on _INBOX.>, purge the alerts, delete the Slack
    consumer, and speak for the evaluator. All refused, and nothing changed."""
    async with users(secured, "evaluator", "slack", "agent") as bus, owners_at_work(bus):
        agent, js = bus["agent"], bus["agent"].nc.jetstream()

        # the evaluator's KV: no bucket, no key by any API, no live copy of its writes
        await refused(agent, js.key_value(STATE), f"$JS.API.STREAM.INFO.{STATE_STREAM}")
        lease_subject = f"$KV.{STATE}.{LEASE_KEY}"
        await refused(
            agent,
            agent.nc.request(f"$JS.API.DIRECT.GET.{STATE_STREAM}.{lease_subject}", b""),
            f"$JS.API.DIRECT.GET.{STATE_STREAM}.{lease_subject}",
        )
        get = f"$JS.API.STREAM.MSG.GET.{STATE_STREAM}"
        await refused(agent, agent.nc.request(get, json.dumps({"last_by_subj": lease_subject}).encode()), get)
        assert await subscribe_refused(agent, f"$KV.{STATE}.>") == []

        # notifications: no consumer of its own, none bound to the sink's, no live copy
        await refused(
            agent,
            js.pull_subscribe(f"{PREFIX}.notifications.>", durable="spy", stream=NOTIFICATIONS),
            f"$JS.API.CONSUMER.INFO.{NOTIFICATIONS}.spy",
        )
        await refused(
            agent,
            js.add_consumer(NOTIFICATIONS, ConsumerConfig(deliver_subject="_INBOX_agent.spy")),
            f"$JS.API.CONSUMER.CREATE.{NOTIFICATIONS}",
        )
        bound = await js.pull_subscribe_bind(durable=SLACK_DURABLE, stream=NOTIFICATIONS)
        next_message = f"$JS.API.CONSUMER.MSG.NEXT.{NOTIFICATIONS}.{SLACK_DURABLE}"
        await refused(agent, bound.fetch(1, timeout=5), next_message)
        assert await subscribe_refused(agent, f"{PREFIX}.notifications.>") == []

        # replies meant for others: the shared inbox and every other part's are refused, and of the
        # replies the evaluator then gets none reaches the agent (a second connection of the
        # evaluator's own user, allowed its inboxes, sees them all: they were there to be seen)
        leaked = [
            await subscribe_refused(agent, subject) for subject in ("_INBOX.>", "_INBOX_evaluator.>", ">")
        ]
        witness = await secured.connect("evaluator")
        try:
            seen: list[Msg] = []

            async def on_reply(msg: Msg) -> None:
                seen.append(msg)

            await witness.nc.subscribe("_INBOX_evaluator.>", cb=on_reply)
            await witness.nc.flush()
            for _ in range(20):
                await bus["evaluator"].nc.jetstream().stream_info(ALERTS)
            await wait_until(lambda: len(seen) >= 20, TIMEOUT)
        finally:
            await witness.close()
        await agent.nc.flush()  # anything routed to the agent came before this answer
        assert leaked == [[], [], []]

        # the alerts stream and the Slack sink's consumer stay as they are
        await refused(agent, js.purge_stream(ALERTS), f"$JS.API.STREAM.PURGE.{ALERTS}")
        await refused(agent, js.delete_stream(ALERTS), f"$JS.API.STREAM.DELETE.{ALERTS}")
        await refused(
            agent,
            js.delete_consumer(NOTIFICATIONS, SLACK_DURABLE),
            f"$JS.API.CONSUMER.DELETE.{NOTIFICATIONS}.{SLACK_DURABLE}",
        )
        assert await messages_in(bus["evaluator"], ALERTS) == 1
        assert await _exists(bus["slack"].nc.jetstream().consumer_info(NOTIFICATIONS, SLACK_DURABLE))

        # it publishes its own families only, and never as one of the pipeline's parts
        subjects = agent.subjects
        for subject in (
            subjects.alerts("critical", "web01", DISK_RULE),
            subjects.notifications("default"),
            subjects.heartbeat("web01", vocab.EVALUATOR_PART),
            subjects.health("web01", vocab.SLACK_PART, vocab.SUPERVISOR_TARGET),
            subjects.dead_letter("notifications", "default"),
        ):
            await publish_refused(agent, subject)
        assert await messages_in(bus["evaluator"], ALERTS) == 1
        assert await messages_in(bus["evaluator"], NOTIFICATIONS) == 0


@pytest.mark.parametrize("role", [r for r in ROLES if r != "evaluator"])
async def test_no_role_but_the_evaluator_reads_or_writes_its_state(secured: Secured, role: str) -> None:
    """Lease and snapshot: not readable by any API, not writable, not watched, for every other user."""
    async with users(secured, *{"evaluator", "slack", role}) as bus, owners_at_work(bus):
        user = bus[role]
        lease = await lease_of(bus["evaluator"])
        for key in (LEASE_KEY, SNAPSHOT_KEY):
            subject = f"$JS.API.DIRECT.GET.{STATE_STREAM}.$KV.{STATE}.{key}"
            await refused(user, user.nc.request(subject, b""), subject)
        get = f"$JS.API.STREAM.MSG.GET.{STATE_STREAM}"
        await refused(user, user.nc.request(get, json.dumps({"seq": 1}).encode()), get)
        await publish_refused(user, f"$KV.{STATE}.{LEASE_KEY}", b'{"host": "evil"}')
        assert await subscribe_refused(user, f"$KV.{STATE}.>") == []
        assert await lease_of(bus["evaluator"]) == lease


@pytest.mark.parametrize("role", ROLES)
async def test_no_role_purges_or_deletes_what_it_does_not_own(secured: Secured, role: str) -> None:
    """Streams, buckets and other parts' consumers: no purge, no delete, no message removed, no
    stream reconfigured (the evaluator, which provisions the streams, may update them only)."""
    async with users(secured, *{"evaluator", "slack", role}) as bus, owners_at_work(bus):
        user, js = bus[role], bus[role].nc.jetstream()
        await refused(user, js.purge_stream(ALERTS), f"$JS.API.STREAM.PURGE.{ALERTS}")
        await refused(user, js.delete_stream(ALERTS), f"$JS.API.STREAM.DELETE.{ALERTS}")
        await refused(user, js.delete_stream(STATE_STREAM), f"$JS.API.STREAM.DELETE.{STATE_STREAM}")
        await refused(user, js.delete_msg(ALERTS, 1), f"$JS.API.STREAM.MSG.DELETE.{ALERTS}")
        others = [(NOTIFICATIONS, SLACK_DURABLE), (METRICS, DURABLE)]
        for stream, durable in others:
            if (role, durable) not in (("slack", SLACK_DURABLE), ("evaluator", DURABLE)):
                subject = f"$JS.API.CONSUMER.DELETE.{stream}.{durable}"
                await refused(user, js.delete_consumer(stream, durable), subject)
        if role != "evaluator":
            config = (await bus["evaluator"].nc.jetstream().stream_info(ALERTS)).config
            await refused(
                user, js.update_stream(config.evolve(max_age=1.0)), f"$JS.API.STREAM.UPDATE.{ALERTS}"
            )
        assert await messages_in(bus["evaluator"], ALERTS) == 1
        assert await _exists(bus["slack"].nc.jetstream().consumer_info(NOTIFICATIONS, SLACK_DURABLE))
        assert await _exists(bus["evaluator"].nc.jetstream().consumer_info(METRICS, DURABLE))
        assert (await bus["evaluator"].nc.jetstream().stream_info(ALERTS)).config.max_age != 1.0


@pytest.mark.parametrize("role", ["operator", "viewer"])
async def test_a_consumer_made_to_read_cannot_replace_the_evaluators(secured: Secured, role: str) -> None:
    """People may make short-lived consumers to read silences and dead letters, never one named in
    the request body after the evaluator's, and the heartbeats they read without any consumer."""
    async with users(secured, *{"evaluator", "slack", role}) as bus, owners_at_work(bus):
        user = bus[role]
        hijack = {"stream_name": METRICS, "config": {"name": DURABLE, "filter_subject": "nothing.>"}}
        subject = f"$JS.API.CONSUMER.CREATE.{METRICS}"
        await refused(user, user.nc.request(subject, json.dumps(hijack).encode()), subject)
        heartbeats = stream_name(PREFIX, "heartbeat")
        subject = f"$JS.API.CONSUMER.CREATE.{heartbeats}"
        await refused(user, user.nc.request(subject, json.dumps(hijack).encode()), subject)
        info = await bus["evaluator"].nc.jetstream().consumer_info(METRICS, DURABLE)
        assert info.config.filter_subject != "nothing.>"


async def test_the_viewer_adding_a_silence_is_told_it_is_not_permitted(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """One clear line, not `nats: timeout`; and no silence is stored."""
    async with users(secured, "evaluator") as bus:
        await open_buckets(bus["evaluator"].nc.jetstream(), PREFIX)
    capsys.readouterr()
    code = await cli(secured, "viewer", "silence", "add", "host=web01", "--for", "1h", "--comment", "try")
    err = capsys.readouterr().err
    assert code == 1
    assert "not permitted" in err
    assert "'viewer'" in err
    assert "operator's user" in err
    assert "timeout" not in err
    assert await cli_json(secured, "operator", capsys, "silence", "list", "--all") == []


async def test_an_agent_listing_alerts_is_told_which_user_may(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    async with users(secured, "evaluator") as bus:
        await open_buckets(bus["evaluator"].nc.jetstream(), PREFIX)
    capsys.readouterr()
    assert await cli(secured, "agent", "alerts") == 1
    err = capsys.readouterr().err
    assert "not permitted" in err
    assert "viewer's or the operator's user" in err


async def test_a_user_on_the_shared_inbox_is_told_to_set_its_own(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """The viewer left on nats-py's default _INBOX gets no replies: the error says which setting."""
    async with users(secured, "evaluator") as bus:
        await open_buckets(bus["evaluator"].nc.jetstream(), PREFIX)
    capsys.readouterr()
    assert await cli(secured, "viewer", "alerts", inbox_prefix="_INBOX") == 1
    err = capsys.readouterr().err
    assert "not permitted" in err
    assert "bus.inbox_prefix" in err


async def test_a_bucket_made_before_direct_gets_is_turned_over_by_the_evaluator(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """Earlier versions made the buckets without direct gets, which the viewer may not use on the
    state bucket (they name no key); the evaluator's start turns them on, keeping what is stored."""
    async with users(secured, "evaluator") as bus:
        js = bus["evaluator"].nc.jetstream()
        old = await js.create_key_value(KeyValueConfig(bucket=STATE, history=5, storage=StorageType.FILE))
        alert = ActiveAlert(
            fingerprint="f1",
            rule=DISK_RULE,
            severity="critical",
            state="firing",
            labels={"host": "web01"},
            summary="disk / on web01 is 97% full",
            value=97.0,
            since=1.0,
            silenced_by=[],
            inhibited_by=[],
            acked=False,
            flapping=False,
        )
        await StateStore(old).save_active(ActiveAlerts(ts=1.0, alerts=[alert]))
        assert not (await js.stream_info(STATE_STREAM)).config.allow_direct
        await open_buckets(js, PREFIX)
        assert (await js.stream_info(STATE_STREAM)).config.allow_direct
    shown = await cli_json(secured, "viewer", capsys, "alerts")
    assert [a["fingerprint"] for a in shown["alerts"]] == ["f1"]


async def test_the_passwords_template_keeps_the_server_valid_and_shut(tmp_path: Path) -> None:
    """deploy/jarvis-passwords.example.conf installed as it is: the server starts, nobody gets in."""
    template = (SHIPPED.parent / "jarvis-passwords.example.conf").read_text()
    async with shipped_server(tmp_path / "nats", template) as server:
        for role in ROLES:
            with pytest.raises(BusUnavailableError):  # the server's refusal, or the reset after it
                await server.connect(role)
            log = server.log_file.read_text()
            assert f'authentication error - User "{role}"' in log


@pytest.mark.parametrize(
    ("role", "command"),
    [("agent", ["agent", "host"]), ("slack", ["sink", "slack"]), ("report", ["sink", "report"])],
)
async def test_a_part_started_from_the_command_line_asks_nothing_its_user_may_not(
    secured: Secured, role: str, command: list[str]
) -> None:
    """`jarvis-monitor agent` and `sink` leave the streams to the evaluator: not one refused request
    (each would also hold the start for its timeout), and the part does its job and beats."""
    async with users(secured, "evaluator", "viewer", role) as bus:
        await provision(bus["evaluator"].nc.jetstream(), bus["evaluator"].subjects, BusConfig().streams)
        part = vocab.HOST_AGENT if role == "agent" else role
        beat = await bus["viewer"].nc.subscribe(f"{PREFIX}.heartbeat.*.{part}", max_msgs=1)
        metrics = await bus["viewer"].nc.subscribe(f"{PREFIX}.metrics.>", max_msgs=1)
        await bus["viewer"].nc.flush()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jarvis_monitor",
            "-c",
            str(secured.config_file(role)),
            *command,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await beat.next_msg(timeout=TIMEOUT)
            if role == "agent":
                await metrics.next_msg(timeout=TIMEOUT)
            else:
                stream, durable = (
                    (NOTIFICATIONS, SLACK_DURABLE) if role == "slack" else (METRICS, REPORT_DURABLE)
                )
                js = bus[role].nc.jetstream()
                await eventually(lambda: _exists(js.consumer_info(stream, durable)), f"the {role} consumer")
        finally:
            process.terminate()
            _, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
        assert process.returncode == 0, err.decode()
    assert secured.violations() == []


async def test_partitioned_evaluators_need_nothing_their_user_may_not(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    """evaluator.partitions = 2 as the evaluator's user: the partitioned stream, its consumers, the
    partition leases and active alerts; the viewer's `alerts` lists what the partitions found."""
    disk = Disk(97.0)
    config = msgspec.structs.replace(quiet_evaluator_config(), partitions=2)
    async with users(secured, "evaluator", "agent") as bus:
        await provision(bus["evaluator"].nc.jetstream(), bus["evaluator"].subjects, BusConfig().streams)
        evaluator = PartitionedEvaluator(config, bus["evaluator"])
        agent = AgentRunner(
            disk, bus["agent"], AgentConfig(interval=Duration(0.3), warmup=Duration(0)), "web01"
        )
        async with running(evaluator, agent):

            async def listed() -> bool:
                try:
                    return len(disk_alerts(await cli_json(secured, "viewer", capsys, "alerts"))) == 1
                except json.JSONDecodeError:  # "no active alerts known" until the first is written
                    return False

            await eventually(listed, "the viewer to see the partition's alert")
            assert evaluator.share.held == {0, 1}
    assert secured.violations() == [], "a partitioned evaluator was refused something its job needs"
