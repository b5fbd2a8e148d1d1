"""`jarvis-monitor deadletter list|replay|drop`: what the consumers gave up on, with why.

A dead letter's id is its sequence in the dead-letter stream. `replay` publishes the kept payload
to its original subject through JetStream (with a Nats-Msg-Id, so running it twice never
duplicates) and then removes the letter; `drop` removes it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from bus import deadletter
from bus.connection import Bus, connect
from bus.deadletter import DeadLetter
from bus.jetstream import DEADLETTER_FAMILY, stream_name
from bus.subjects import Subjects
from jarvis_monitor.commands import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, error, run_async
from jarvis_monitor.evaluator_cli import table
from jarvis_monitor.tail import clean

if TYPE_CHECKING:
    from jarvis_monitor.commands import Subparsers
    from jarvis_monitor.config import Config

FETCH_BATCH = 256
FETCH_TIMEOUT = 5.0
DEFAULT_LIMIT = 200
# The size of a message a headers-only consumer leaves out.
MSG_SIZE = "Nats-Msg-Size"
REPLAYED_FROM = "Jarvis-Replayed-From"
NO_MESSAGE_FOUND = 10057  # JetStream's error code for a sequence the stream does not hold


def register(commands: Subparsers) -> None:
    """Add this part's subcommands to `commands`."""
    parser = commands.add_parser(
        "deadletter", help="list, replay or drop what the consumers gave up on, with why"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="the dead letters: id, when, who gave up, why, original subject"
    )
    listing.add_argument(
        "-n",
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show the newest N (default {DEFAULT_LIMIT}; 0 for all)",
    )
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(handler=cmd_list)
    replay = actions.add_parser(
        "replay", help="publish a dead letter's payload to its original subject again, then remove it"
    )
    replay.add_argument("id", help="the dead letter's id (see deadletter list)")
    replay.set_defaults(handler=cmd_replay)
    drop = actions.add_parser("drop", help="remove a dead letter for good")
    drop.add_argument("id", help="the dead letter's id (see deadletter list)")
    drop.set_defaults(handler=cmd_drop)


def parse_id(text: str) -> int | None:
    """The stream sequence an id names, or None when it is no id at all."""
    text = text.strip()
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        return None
    return int(text)


class DeadLetters:
    """The dead-letter stream of one prefix, read through short-lived consumers of its own."""

    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self.js = js
        self.subjects = subjects
        self.stream = stream_name(subjects.prefix, DEADLETTER_FAMILY)

    async def bounds(self) -> tuple[int, int, int] | None:
        """(count, first sequence, last sequence), or None when the stream does not exist yet."""
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            return None
        return info.state.messages, info.state.first_seq, info.state.last_seq

    @contextlib.asynccontextmanager
    async def _consumer(self, config: ConsumerConfig) -> AsyncIterator[JetStreamContext.PullSubscription]:
        # ack none: reading must not change what a later reader sees; the server drops it when idle
        config.ack_policy = AckPolicy.NONE
        config.inactive_threshold = 10.0
        config.mem_storage = True
        subscription = await self.js.pull_subscribe(
            self.subjects.family(DEADLETTER_FAMILY), stream=self.stream, config=config
        )
        try:
            yield subscription
        finally:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

    async def newest(self, limit: int) -> tuple[list[DeadLetter], int]:
        """The newest `limit` letters (0: all), oldest first, and how many there are in all."""
        bounds = await self.bounds()
        if bounds is None or bounds[0] == 0:
            return [], 0
        kept: collections.deque[DeadLetter] = collections.deque(maxlen=limit or None)
        total = 0
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, headers_only=True)
        async with self._consumer(config) as subscription:
            pending = bounds[0]
            while pending > 0:
                try:
                    messages = await subscription.fetch(min(FETCH_BATCH, pending), timeout=FETCH_TIMEOUT)
                except TimeoutError:  # letters removed since the count was taken
                    break
                for msg in messages:
                    kept.append(_letter(msg))
                    total += 1
                pending = messages[-1].metadata.num_pending if messages else 0
        return list(kept), total

    async def get(self, seq: int) -> Msg | None:
        """The letter with id `seq`, payload and all, or None when there is none."""
        bounds = await self.bounds()
        if bounds is None or bounds[0] == 0 or not bounds[1] <= seq <= bounds[2]:
            return None
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq)
        async with self._consumer(config) as subscription:
            try:
                (msg,) = await subscription.fetch(1, timeout=FETCH_TIMEOUT)
            except TimeoutError:
                return None
        return msg if msg.metadata.sequence.stream == seq else None  # else seq was removed

    async def remove(self, seq: int) -> bool:
        """Remove letter `seq`; False when there was none."""
        try:
            return await self.js.delete_msg(self.stream, seq)
        except NotFoundError:  # no stream
            return False
        except APIError as exc:
            if exc.err_code == NO_MESSAGE_FOUND:
                return False
            raise


def _letter(msg: Msg) -> DeadLetter:
    letter = deadletter.read(msg)
    size = (msg.headers or {}).get(MSG_SIZE, "")
    if not letter.truncated and size.isdigit():  # a headers-only read leaves the payload out
        letter = msgspec.structs.replace(letter, size=int(size))
    return letter


def replay_problem(letter: DeadLetter, subjects: Subjects) -> str | None:
    """Why a letter cannot be replayed, or None when it can."""
    target = letter.original_subject
    if letter.truncated:
        return f"it keeps only part of its {letter.size} bytes (the original was too big); drop it instead"
    if not target:
        return "it does not say its original subject"
    if not target.startswith(f"{subjects.prefix}.") or target.startswith(
        f"{subjects.prefix}.{DEADLETTER_FAMILY}."
    ):
        return f"its original subject {clean(target)!r} is not one of {subjects.prefix}'s families"
    if any(c in target for c in "*> \t\r\n") or ".." in target or target.endswith("."):
        return f"its original subject {clean(target)!r} is not a subject one can publish to"
    return None


def _when(ts: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):
        return "?"


def render_letters(letters: Sequence[DeadLetter]) -> str:
    rows = [
        [
            str(letter.seq),
            _when(letter.ts),
            clean(letter.by, 30),
            str(letter.attempts),
            clean(letter.original_subject, 60),
            f"{letter.size} (cut)" if letter.truncated else str(letter.size),
            clean(letter.reason, 120),
        ]
        for letter in letters
    ]
    return table(["ID", "WHEN", "BY", "ATTEMPTS", "ORIGINAL SUBJECT", "BYTES", "REASON"], rows)


@contextlib.asynccontextmanager
async def _letters(config: Config) -> AsyncIterator[tuple[Bus, DeadLetters]]:
    bus = await connect(config.bus, "jarvis-monitor deadletter")
    try:
        yield bus, DeadLetters(bus.nc.jetstream(), bus.subjects)
    finally:
        await bus.close()


async def list_letters(config: Config, limit: int, as_json: bool) -> int:
    async with _letters(config) as (_, store):
        shown, total = await store.newest(limit)
    if as_json:
        print(msgspec.json.encode(shown).decode())
    elif not shown:
        print("no dead letters")
    else:
        print(render_letters(shown), end="")
        more = f"; the newest {len(shown)} shown, --limit 0 shows all" if len(shown) < total else ""
        print(f"{total} dead letter{'s' if total != 1 else ''} on {store.stream}{more}")
    return EXIT_OK


async def replay(config: Config, seq: int) -> int:
    async with _letters(config) as (bus, store):
        msg = await store.get(seq)
        if msg is None:
            error(f"no dead letter {seq} (see jarvis-monitor deadletter list)")
            return EXIT_FAILURE
        letter = _letter(msg)
        problem = replay_problem(letter, bus.subjects)
        if problem is not None:
            error(f"dead letter {seq} cannot be replayed: {problem}")
            return EXIT_FAILURE
        # the id holds the letter's time too: a recreated dead-letter stream starts its ids again
        msg_id = f"replay-{store.stream}-{seq}-{round(letter.ts * 1e6)}"
        headers = {"Nats-Msg-Id": msg_id, REPLAYED_FROM: f"{store.stream} {seq}"}
        try:
            ack = await store.js.publish(letter.original_subject, msg.data, headers=headers)
        except nats.errors.NoRespondersError:
            error(f"no stream keeps {clean(letter.original_subject)}: is the stack provisioned?")
            return EXIT_FAILURE
        await store.remove(seq)
    again = " (already replayed: the stream kept the first copy only)" if ack.duplicate else ""
    print(f"replayed {seq} to {clean(letter.original_subject)}{again}")
    return EXIT_OK


async def drop(config: Config, seq: int) -> int:
    async with _letters(config) as (_, store):
        if not await store.remove(seq):
            error(f"no dead letter {seq} (see jarvis-monitor deadletter list)")
            return EXIT_FAILURE
    print(f"dropped {seq}")
    return EXIT_OK


async def _guarded(work: Coroutine[Any, Any, int]) -> int:
    """`work`, with NATS refusing or not answering as one line and exit 1 rather than a traceback."""
    try:
        return await work
    except (nats.errors.Error, TimeoutError) as exc:
        error(f"NATS: {exc or type(exc).__name__}")
        return EXIT_FAILURE


def _seq(args: argparse.Namespace) -> int | None:
    seq = parse_id(args.id)
    if seq is None:
        error(f"{clean(args.id)!r} is not a dead letter id: ids are the numbers `deadletter list` shows")
    return seq


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    if args.limit < 0:
        error("--limit: give a number of letters, or 0 for all")
        return EXIT_CONFIG
    return run_async(_guarded(list_letters(config, args.limit, args.json)))


def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    seq = _seq(args)
    return EXIT_CONFIG if seq is None else run_async(_guarded(replay(config, seq)))


def cmd_drop(args: argparse.Namespace, config: Config) -> int:
    seq = _seq(args)
    return EXIT_CONFIG if seq is None else run_async(_guarded(drop(config, seq)))
