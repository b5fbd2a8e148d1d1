"""Dead letters: what a consumer gave up on, kept on `jarvis.deadletter.<family>.<...>` with why.

The payload is the original message (cut to fit the server's max_payload if it was too big,
which headers say); headers carry the reason, the original subject, who gave up and after how
many attempts. `jarvis-monitor deadletter list|replay|drop` reads them; a replay publishes the
payload to its original subject again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import NamedTuple

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bus.aio import Backoff, wait_unless
from bus.text import BIDI_CONTROLS

log = logging.getLogger(__name__)

REASON = "Jarvis-Dead-Letter-Reason"
ATTEMPTS = "Jarvis-Dead-Letter-Attempts"
ORIGINAL_SUBJECT = "Jarvis-Original-Subject"
BY = "Jarvis-Dead-Letter-By"
ORIGINAL_SIZE = "Jarvis-Original-Size"  # set when the payload kept is cut from a larger one
MAX_REASON = 500
# headers and the protocol line take room in a message too
HEADER_ROOM = 2048

_CONTROL = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{BIDI_CONTROLS}]")
_DIGITS = re.compile(r"\d+")


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One dead letter as the CLI lists it."""

    seq: int
    subject: str
    original_subject: str
    reason: str
    by: str
    attempts: int
    ts: float
    size: int
    truncated: bool


def headers(reason: str, *, original_subject: str, by: str, attempts: int, msg_id: str) -> dict[str, str]:
    """The headers of a dead letter; a header is one line, so controls become spaces."""
    return {
        "Nats-Msg-Id": msg_id,
        REASON: _CONTROL.sub(" ", reason)[:MAX_REASON],
        ATTEMPTS: str(attempts),
        ORIGINAL_SUBJECT: original_subject,
        BY: _CONTROL.sub(" ", by)[:100],
    }


class Rejections:
    """Rejected inputs counted by reason (digits folded, at most MAX_REASONS kinds), for heartbeats."""

    MAX_REASONS = 50

    def __init__(self) -> None:
        self.by_reason: dict[str, int] = {}
        self.total = 0

    def count(self, reason: str) -> None:
        self.total += 1
        key = _DIGITS.sub("N", _CONTROL.sub(" ", reason))[:120]
        if key not in self.by_reason and len(self.by_reason) >= self.MAX_REASONS:
            key = "other"
        self.by_reason[key] = self.by_reason.get(key, 0) + 1


class Letter(NamedTuple):
    """A dead letter to keep: subject, payload and headers."""

    subject: str
    data: bytes
    headers: dict[str, str]


def input_letter(
    dead_subject: str, msg: Msg, reason: str, *, by: str, stream_seq: int, subject: str | None = None
) -> Letter:
    """The dead letter of an input message refused at decode; consumers of one stream share its id
    (a partitioned evaluator's mirror keeps the stream's sequences, so its letters share it too).

    `subject`: where it was published, when the stream stored it under another subject (a mirror)."""
    original = subject or msg.subject
    family = dead_subject.rsplit(".", 1)[-1]  # `<prefix>.deadletter.input.<family>`: prefixes may hold dots
    head = headers(
        reason,
        original_subject=original,
        by=by,
        attempts=1,
        msg_id=f"input-{family}-{stream_seq}",
    )
    return Letter(dead_subject, msg.data, head)


def fit(data: bytes, head: dict[str, str], max_payload: int) -> bytes:
    """The payload cut to fit `max_payload` with its headers; ORIGINAL_SIZE is set when it was cut."""
    room = max_payload - HEADER_ROOM - sum(len(k) + len(v) + 4 for k, v in head.items())
    if len(data) <= room:
        return data
    head[ORIGINAL_SIZE] = str(len(data))
    return data[: max(room, 0)]


def read(msg: Msg) -> DeadLetter:
    """A dead letter from a message of the dead-letter stream."""
    head = msg.headers or {}
    meta = msg.metadata
    try:
        attempts = int(head.get(ATTEMPTS, "1"))
    except ValueError:
        attempts = 1
    return DeadLetter(
        seq=meta.sequence.stream,
        subject=msg.subject,
        original_subject=head.get(ORIGINAL_SUBJECT, ""),
        reason=head.get(REASON, ""),
        by=head.get(BY, ""),
        attempts=attempts,
        ts=meta.timestamp.timestamp(),
        size=int(head[ORIGINAL_SIZE]) if head.get(ORIGINAL_SIZE, "").isdigit() else len(msg.data),
        truncated=ORIGINAL_SIZE in head,
    )


async def publish(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    head: dict[str, str],
    *,
    max_payload: int,
    stopped: asyncio.Event | None = None,
) -> bool:
    """Keep a dead letter, waiting for NATS rather than lose it; False only if stopped first."""
    data = fit(data, head, max_payload)
    backoff = Backoff(0.2, 5.0)
    started = time.monotonic()
    while True:
        try:
            await js.publish(subject, data, headers=head)
            return True
        except (nats.errors.Error, TimeoutError) as exc:
            if backoff.attempts == 0:
                log.warning("cannot keep a dead letter on %s yet, retrying: %s", subject, exc)
            wait = backoff.next()
            if stopped is not None:
                if await wait_unless(stopped, wait):
                    log.error(
                        "stopped before a dead letter was kept on %s (%.0f s of retries)",
                        subject,
                        time.monotonic() - started,
                    )
                    return False
            else:
                await asyncio.sleep(wait)
