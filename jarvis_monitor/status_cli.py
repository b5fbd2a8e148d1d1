"""`jarvis-monitor status`: every agent's and part's last heartbeat, how old it is, and its counters."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec
from nats.js.errors import NotFoundError

from bus.connection import connect
from bus.events import EventDecodeError, Heartbeat, heartbeat
from bus.jetstream import stream_name
from jarvis_monitor.commands import EXIT_FAILURE, EXIT_OK, error, run_async
from jarvis_monitor.tail import clean

if TYPE_CHECKING:
    from jarvis_monitor.commands import Subparsers
    from jarvis_monitor.config import Config

LATE, SILENT = 1.5, 3.0  # heartbeat intervals: late, then silent as the dead-man rule sees it


class PartStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One agent or part as `status` shows it."""

    host: str
    agent: str
    state: str  # ok, late or silent
    age: float  # seconds since its last heartbeat
    heartbeat: Heartbeat


def register(commands: Subparsers) -> None:
    status = commands.add_parser(
        "status",
        help="every agent's and part's last heartbeat and counters; exit 1 if one is silent",
    )
    status.add_argument("--json", action="store_true", help="print the list as JSON")
    status.set_defaults(handler=cmd_status)


def judge(beats: Sequence[Heartbeat], now: float) -> list[PartStatus]:
    """Each heartbeat's state at `now`: silent after 3 of its intervals, late after 1.5; silent first."""
    out = []
    for beat in beats:
        age = max(0.0, now - beat.ts)
        intervals = age / max(beat.interval, 0.001)
        state = "silent" if intervals >= SILENT else "late" if intervals >= LATE else "ok"
        out.append(PartStatus(host=beat.host, agent=beat.agent, state=state, age=age, heartbeat=beat))
    order = {"silent": 0, "late": 1, "ok": 2}
    return sorted(out, key=lambda s: (order[s.state], s.host, s.agent))


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def render(statuses: Sequence[PartStatus]) -> str:
    """A table a person reads: state, host, agent, last heartbeat, then counters and rejects."""
    if not statuses:
        return "no heartbeats yet: no agent or part has run against this NATS\n"
    lines = [f"{'STATE':<7} {'HOST':<24} {'PART':<10} {'LAST HEARTBEAT':<15} COUNTERS"]
    for status in statuses:
        beat = status.heartbeat
        counters = dict(beat.counters)
        for name in ("dropped", "publish_errors", "collect_errors"):
            if getattr(beat, name):
                counters[name] = getattr(beat, name)
        shown = " ".join(f"{clean(k, 40)}={v}" for k, v in sorted(counters.items())) or "-"
        lines.append(
            f"{status.state:<7} {clean(status.host, 24):<24} {clean(status.agent, 10):<10} "
            f"{_age(status.age):<15} {shown}"
        )
        for reason, count in sorted(beat.rejected.items(), key=lambda item: -item[1]):
            lines.append(f"{'':<7} {'':<24} {'':<10} {'':<15} rejected {count}x: {clean(reason, 100)}")
    return "\n".join(lines) + "\n"


async def last_heartbeats(config: Config) -> list[Heartbeat]:
    """The newest heartbeat of every host and agent the heartbeat stream holds."""
    bus = await connect(config.bus, "jarvis-monitor status")
    try:
        js = bus.nc.jetstream()
        stream = stream_name(bus.subjects.prefix, "heartbeat")
        try:
            subjects = (await js.stream_info(stream, subjects_filter=">")).state.subjects or {}
        except NotFoundError:
            return []
        beats = []
        # one read-only get per subject, not a consumer: a user allowed to make consumers on this
        # stream could also replace the evaluator's (deploy/nats-server.conf lets a viewer only read)
        for subject in subjects:
            try:
                msg = await js.get_last_msg(stream, subject)
            except NotFoundError:  # removed since the stream was asked
                continue
            try:
                beats.append(heartbeat.decode(msg.data or b"", subject))
            except EventDecodeError:
                continue  # the dead letters keep it; status shows what it can read
        return beats
    finally:
        await bus.close()


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    async def status() -> int:
        try:
            beats = await last_heartbeats(config)
        except TimeoutError:
            error("the heartbeat stream did not answer in time")
            return EXIT_FAILURE
        statuses = judge(beats, time.time())
        if args.json:
            print(msgspec.json.encode(statuses).decode())
        else:
            sys.stdout.write(render(statuses))
        return EXIT_FAILURE if any(s.state == "silent" for s in statuses) else EXIT_OK

    return run_async(status())
