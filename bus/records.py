"""Records several parts share through KV: label matchers, silences, acks and the active alerts.

The evaluator writes the active alerts and obeys silences and acks; the command line and the
console read them and write silences and acks. Their types and keys live here, on the wire.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
import re2
from msgspec import Meta
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from bus.kvblob import BlobStore, StoreError

log = logging.getLogger(__name__)

MatchOp = Literal["=", "!=", "=~", "!~"]
MATCH_OPS: tuple[str, ...] = ("=", "!=", "=~", "!~")
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

SILENCE_PREFIX = "silence."
ACK_PREFIX = "ack."
ACTIVE_KEY = "active"  # in the state bucket, written by the evaluator as a chunked blob
PARTITIONS_KEY = "active.partitions"  # how many partitions keep active alerts (none: one)
# Expired silences stay listed (`silence list --all`) this long, as in Alertmanager.
SILENCE_RETENTION = 5 * 86400.0
_KEY_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(=~|!~|!=|=)\s*(.*?)\s*")


# A match costs time in proportion to the value's length and the pattern's program size, more
# than that past the DFA's cache: about 2 ms for a 4,096-character value at the largest program a
# new silence may have, 16 ms at 500 (google-re2, measured). Rules, routes and windows in the
# config, and silences stored before, are not held to it.
MAX_REGEX = 4096
MAX_REGEX_PROGRAM = 300
_RE2 = re2.Options()
_RE2.log_errors = False  # RE2 would print each refused pattern on stderr: the ValueError says it


@functools.lru_cache(maxsize=4096)
def compile_regex(pattern: str) -> Any:
    """A label regex in RE2's syntax (Prometheus's and Alertmanager's), always matched whole.

    RE2 matches in time linear in the value, so no pattern (a silence of `(a+)+$`) can stall the
    evaluator; ValueError names the pattern and what is wrong with it.
    """
    try:
        compiled = re2.compile(pattern, _RE2)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"invalid regex {pattern!r}: {reason}") from None
    except UnicodeEncodeError:
        raise ValueError(f"invalid regex {pattern!r}: not UTF-8") from None
    return compiled


def regex_matches(pattern: str, value: str) -> bool:
    """Does all of `value` match `pattern`? The same short label values come again and again, and
    a match through RE2 costs about 3 µs, a cached answer a tenth of that; long ones are not kept
    (hostile values could pin megabytes)."""
    return _cached_match(pattern, value) if len(value) <= CACHED_VALUE else _match(pattern, value)


CACHED_VALUE = 256


@functools.lru_cache(maxsize=16384)
def _cached_match(pattern: str, value: str) -> bool:
    return _match(pattern, value)


def _match(pattern: str, value: str) -> bool:
    try:
        return compile_regex(pattern).fullmatch(value) is not None
    except UnicodeEncodeError:  # a lone surrogate (never from the wire): matched as "?"
        return compile_regex(pattern).fullmatch(value.encode("utf-8", "replace").decode()) is not None


class Matcher(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One label matcher as in Prometheus: a missing label matches as the empty string."""

    name: Annotated[str, Meta(description="label name", examples=["host"])]
    op: Annotated[
        MatchOp, Meta(description="=, !=, =~ (regex in RE2 syntax, fully anchored) or !~", examples=["=~"])
    ] = "="
    value: Annotated[str, Meta(description="value, or regex for =~ and !~", examples=["web0[1-3]"])]

    def __post_init__(self) -> None:
        if not LABEL_NAME.fullmatch(self.name):
            raise ValueError(f"invalid label name {self.name!r} in matcher")
        if self.op not in MATCH_OPS:
            raise ValueError(f"unknown matcher operator {self.op!r}: use one of {', '.join(MATCH_OPS)}")
        if self.op in ("=~", "!~"):
            compile_regex(self.value)

    def matches_value(self, value: str) -> bool:
        """Does a label value (empty string when the label is missing) satisfy this matcher?"""
        op = self.op
        if op == "=":
            return value == self.value
        if op == "!=":
            return value != self.value
        return regex_matches(self.value, value) == (op == "=~")

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def parse_matcher(text: str) -> Matcher:
    """A matcher from "host=web01", "rule=~disk.*", 'severity!="info"'; ValueError if malformed."""
    match = _MATCHER.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid matcher {text!r}: write label=value, label!=value, label=~regex or label!~regex"
        )
    name, op, value = match.groups()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return Matcher(name=name, op=op, value=value)  # type: ignore[arg-type]  # op is one of MatchOp


def matches_all(matchers: Sequence[Matcher], labels: Mapping[str, str]) -> bool:
    """Do all matchers hold for these labels (a missing label being the empty string)?"""
    return all(m.matches_value(labels.get(m.name, "")) for m in matchers)


MAX_COMMENT = 1000  # characters of a silence's comment: the evaluator's state carries every silence


def too_costly(matchers: Sequence[Matcher]) -> str | None:
    """Why a new silence's regex would cost too much on every alert it is held against (None: no
    regex would): longer than MAX_REGEX, or an RE2 program over MAX_REGEX_PROGRAM."""
    for matcher in matchers:
        if matcher.op not in ("=~", "!~"):
            continue
        if len(matcher.value) > MAX_REGEX:
            return f"the regex {matcher.value[:40]!r}... is longer than {MAX_REGEX} characters"
        size = compile_regex(matcher.value).programsize
        if size > MAX_REGEX_PROGRAM:
            return (
                f"the regex {matcher.value!r} is too complex (RE2 program size {size}, at most "
                f"{MAX_REGEX_PROGRAM}); split it into several silences"
            )
    return None


def too_broad(matchers: Sequence[Matcher]) -> str | None:
    """Why a silence of these matchers would mute nearly every alert (None: it would not).

    As in Alertmanager, one matcher at least must refuse the empty string: `host=~.*`,
    `nolabel=` or `rule!=x` alone hold for an alert without labels, and so for nearly all.
    """
    if matchers and matches_all(matchers, {}):
        return "every matcher also holds for a label that is missing: it would mute nearly every alert"
    return None


class Silence(msgspec.Struct, frozen=True, kw_only=True):
    """Mutes notifications of matching alerts from starts_at until ends_at."""

    id: str
    matchers: list[Matcher]
    starts_at: float
    ends_at: float
    author: str
    comment: str

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: Mapping[str, str]) -> bool:
        # A silence without matchers would mute everything by accident: it matches nothing.
        return bool(self.matchers) and matches_all(self.matchers, labels)


def silence_state(silence: Silence, now: float) -> str:
    """`active`, `pending` (starts later) or `expired`."""
    if silence.ends_at <= now:
        return "expired"
    return "active" if silence.starts_at <= now else "pending"


class AckRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Someone acknowledged an alert: no reminders until it resolves."""

    fingerprint: str
    author: str
    at: float


class ActiveAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A pending or firing alert as `jarvis-monitor alerts` lists it."""

    fingerprint: str
    rule: str
    severity: str
    state: str
    labels: dict[str, str]
    summary: str
    value: float | None
    since: float
    silenced_by: list[str]
    inhibited_by: list[str]
    acked: bool
    flapping: bool


class ActiveAlerts(msgspec.Struct, frozen=True, kw_only=True):
    """What `jarvis-monitor alerts` shows: the evaluator's active alerts at `ts`."""

    ts: float
    alerts: list[ActiveAlert]


def valid_key_token(value: str) -> bool:
    """True for an id or fingerprint usable as one KV key token."""
    return _KEY_TOKEN.fullmatch(value) is not None


def new_silence_id() -> str:
    return uuid.uuid4().hex[:12]


_silence_decoder = msgspec.json.Decoder(Silence)
_ack_decoder = msgspec.json.Decoder(AckRecord)
_active_decoder = msgspec.json.Decoder(ActiveAlerts)


def decode_silence(data: bytes) -> Silence | None:
    """A stored silence, or None for a value that is not one (written by hand, or deleted)."""
    silence = silence_or_reason(data)
    return silence if isinstance(silence, Silence) else None


def silence_or_reason(data: bytes) -> Silence | str:
    """A stored silence, or why the value is not one (a regex RE2 refuses among them)."""
    try:
        return _silence_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return str(exc)


def decode_ack(data: bytes) -> AckRecord | None:
    try:
        return _ack_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def active_key(partition: int | None) -> str:
    """Where one evaluator partition (None: the only evaluator) keeps its active alerts."""
    return ACTIVE_KEY if partition is None else f"{ACTIVE_KEY}.p{partition}"


class Partitions(msgspec.Struct, frozen=True, kw_only=True):
    """How many partitions the evaluators split the hosts into (written by each at start), and
    how many they did before the latest change (whose states the new partitions take over)."""

    partitions: int
    previous: int = 1


_partitions_decoder = msgspec.json.Decoder(Partitions)


async def _stored_partitions(blobs: BlobStore) -> Partitions:
    """The partitions record; one partition when there is none; StoreError if damaged."""
    try:
        value = (await blobs.kv.get(PARTITIONS_KEY)).value or b""
    except KeyNotFoundError:
        return Partitions(partitions=1, previous=1)
    try:
        return _partitions_decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StoreError(f"KV key {PARTITIONS_KEY}: {exc}") from None


async def save_partitions(blobs: BlobStore, partitions: int) -> Partitions:
    """Say how many partitions there are now, unless the bucket says so already; the layout in
    effect (with the one before it). A damaged record is written over."""
    try:
        stored = await _stored_partitions(blobs)
    except StoreError:
        stored = Partitions(partitions=1, previous=1)
    if stored.partitions == partitions:
        return stored
    layout = Partitions(partitions=partitions, previous=stored.partitions)
    await blobs.kv.put(PARTITIONS_KEY, msgspec.json.encode(layout))
    return layout


async def save_active(blobs: BlobStore, active: ActiveAlerts, partition: int | None = None) -> None:
    """Store the active alerts of one partition, or of the only evaluator (the evaluator's job)."""
    await blobs.put(active_key(partition), msgspec.json.encode(active))


async def load_active(blobs: BlobStore) -> ActiveAlerts | None:
    """The active alerts last stored, those of every partition together; None before the
    evaluator's first save; StoreError if damaged."""
    partitions = (await _stored_partitions(blobs)).partitions
    keys = [ACTIVE_KEY] if partitions <= 1 else [active_key(p) for p in range(partitions)]
    parts = []
    for key in keys:
        data = await blobs.get(key)
        if data is None:
            continue
        try:
            parts.append(_active_decoder.decode(data))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StoreError(f"KV key {key}: {exc}") from None
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    # as of the partition written longest ago: what the list shows is at least that fresh
    alerts = [alert for part in parts for alert in part.alerts]
    return ActiveAlerts(ts=min(part.ts for part in parts), alerts=alerts)


class SilenceStore:
    """Silences and acks, shared by every evaluator, the command line and the console."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def add(self, silence: Silence) -> None:
        await self.kv.put(SILENCE_PREFIX + silence.id, msgspec.json.encode(silence))

    async def silences(self) -> list[Silence]:
        """Every stored silence, expired ones included."""
        found = []
        for key in await self.keys(SILENCE_PREFIX):
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:  # deleted meanwhile
                continue
            silence = silence_or_reason(entry.value or b"") if entry.value else None
            if isinstance(silence, Silence):
                found.append(silence)
            elif silence is not None:  # kept from before RE2, or written by hand: it mutes nothing
                log.warning(
                    "silence %s cannot be read and mutes nothing: %s", key[len(SILENCE_PREFIX) :], silence
                )
        return sorted(found, key=lambda s: (s.starts_at, s.id))

    async def expire(self, silence_id: str, now: float) -> Silence:
        """End the silence now; KeyError if there is no such silence."""
        if not valid_key_token(silence_id):
            raise KeyError(silence_id)
        try:
            entry = await self.kv.get(SILENCE_PREFIX + silence_id)
        except KeyNotFoundError:
            raise KeyError(silence_id) from None
        silence = decode_silence(entry.value or b"")
        if silence is None:
            raise KeyError(silence_id)
        ended = msgspec.structs.replace(
            silence, ends_at=min(silence.ends_at, now), starts_at=min(silence.starts_at, now)
        )
        await self.add(ended)
        return ended

    async def ack(self, record: AckRecord) -> None:
        await self.kv.put(ACK_PREFIX + record.fingerprint, msgspec.json.encode(record))

    async def acks(self) -> list[AckRecord]:
        """Every stored ack."""
        found = []
        for key in await self.keys(ACK_PREFIX):
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                continue
            record = decode_ack(entry.value or b"")
            if record is not None:
                found.append(record)
        return found

    async def delete(self, key: str) -> None:
        await self.kv.purge(key)

    async def keys(self, prefix: str) -> list[str]:
        """The stored keys starting with `prefix`."""
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return []
        return [key for key in keys if key.startswith(prefix)]
