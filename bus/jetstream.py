"""JetStream provisioning: the contract's streams and KV buckets, created or updated at start."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Literal

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError
from nats.js.kv import KeyValue

from bus.config import StreamsConfig
from bus.subjects import Subjects

log = logging.getLogger(__name__)

FAMILIES = ("metrics", "health", "heartbeat", "alerts", "notifications", "logs")
# Families whose publishers deduplicate with Nats-Msg-Id.
DEDUPLICATED = ("alerts", "notifications")
KV_BUCKETS = {
    "state": "evaluator state: pending timers, alerts, groups, what was notified when",
    "silences": "silences, shared by every evaluator",
}

Change = Literal["created", "updated", "unchanged"]


# The server's codes for more replicas than it can place: not clustered, or too few servers.
_NOT_CLUSTERED = 10074
_INSUFFICIENT_RESOURCES = 10023


class ReplicasError(RuntimeError):
    """A stream or bucket cannot have the configured number of replicas on this server or cluster."""

    def __init__(self, names: list[str], replicas: int, where: str) -> None:
        super().__init__(
            f"{', '.join(names)}: cannot keep {replicas} replicas: {where}; set bus.replicas = 1 for a "
            "single server, or at most the number of servers of the cluster (3 for deploy/nats-cluster/)"
        )
        self.names = names
        self.replicas = replicas
        self.where = where


def replicas_error(name: str, replicas: int, exc: APIError) -> ReplicasError | None:
    """The error that says what to set, when `exc` is the server refusing `replicas` copies."""
    if replicas <= 1 or exc.err_code not in (_NOT_CLUSTERED, _INSUFFICIENT_RESOURCES):
        return None
    where = (
        "this nats-server is not part of a cluster"
        if exc.err_code == _NOT_CLUSTERED
        else "the cluster has fewer JetStream servers up than that"
    )
    return ReplicasError([name], replicas, f"{where} ({exc.description})")


class ProvisioningError(RuntimeError):
    """Some streams or buckets could not be created or updated; the others were."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__("; ".join(failures))
        self.failures = failures


def _base(prefix: str) -> str:
    """`JARVIS` for a plain lower-case prefix; any other prefix also gets a hash of itself, so
    prefixes that differ only in case or punctuation (`x-a`, `x_a`, `X_A`) never share a stream."""
    base = re.sub(r"[^A-Za-z0-9]", "_", prefix).upper()
    if re.fullmatch(r"[a-z0-9]+", prefix):
        return base
    return f"{base}_{hashlib.sha256(prefix.encode()).hexdigest()[:8]}"


def stream_name(prefix: str, family: str) -> str:
    """Stream name for one family, e.g. `JARVIS_METRICS`; distinct per prefix."""
    return f"{_base(prefix)}_{family.upper()}"


def bucket_name(prefix: str, bucket: str) -> str:
    """KV bucket name, e.g. `JARVIS_state`."""
    return f"{_base(prefix)}_{bucket}"


def stream_config(
    subjects: Subjects, streams: StreamsConfig, family: str, *, replicas: int = 1
) -> StreamConfig:
    """The desired config of one family's stream."""
    limits = getattr(streams, family)
    window = streams.duplicate_window.seconds if family in DEDUPLICATED else 120.0
    return StreamConfig(
        name=stream_name(subjects.prefix, family),
        subjects=[subjects.family(family)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=limits.max_age.seconds,
        max_bytes=streams.max_bytes(family),
        # the server refuses a duplicate window longer than the stream keeps messages
        duplicate_window=min(window, limits.max_age.seconds) if limits.max_age.seconds else window,
        num_replicas=replicas,
    )


# Not in FAMILIES: no agent publishes here; provision() makes it beside them.
DEADLETTER_FAMILY = "deadletter"
DEADLETTER_MAX_AGE = 30 * 86400.0
# per subject (jarvis.deadletter.input.metrics, jarvis.deadletter.notifications.<route>, ...):
# a flood of garbage on one input keeps its newest letters and never pushes out the others
DEADLETTER_PER_SUBJECT = 10_000


def deadletter_stream_config(subjects: Subjects, *, replicas: int = 1) -> StreamConfig:
    """The stream keeping what consumers gave up on (bus/deadletter.py), for a person to replay."""
    return StreamConfig(
        name=stream_name(subjects.prefix, DEADLETTER_FAMILY),
        subjects=[subjects.family(DEADLETTER_FAMILY)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=DEADLETTER_MAX_AGE,
        max_bytes=-1,
        max_msgs_per_subject=DEADLETTER_PER_SUBJECT,
        duplicate_window=120.0,
        num_replicas=replicas,
    )


def ack_reply(reply: str) -> tuple[int, int, int, int]:
    """(stream sequence, delivery sequence, stored at in ns, messages pending) from the reply
    subject of a message a JetStream consumer delivered: cheaper than nats-py's `msg.metadata`,
    which builds objects and a datetime. ValueError for a subject of another layout."""
    tokens = reply.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>, or with
    # <domain>.<account hash> after $JS.ACK (and a random token at the end) since nats-server 2.9
    if len(tokens) == 9:
        at = 0
    elif len(tokens) in (11, 12):
        at = 2
    else:
        raise ValueError(f"not a JetStream delivery: {reply!r}")
    return int(tokens[5 + at]), int(tokens[6 + at]), int(tokens[7 + at]), int(tokens[8 + at])


def _differs(current: StreamConfig, desired: StreamConfig) -> bool:
    return (
        sorted(current.subjects or []) != sorted(desired.subjects or [])
        or round(current.max_age or 0) != round(desired.max_age or 0)
        or (current.max_bytes or -1) != desired.max_bytes
        or round(current.duplicate_window or 0) != round(desired.duplicate_window)
        or (current.max_msgs_per_subject or -1) != (desired.max_msgs_per_subject or -1)
        or (current.num_replicas or 1) != (desired.num_replicas or 1)
    )


async def ensure_stream(js: JetStreamContext, desired: StreamConfig) -> Change:
    """Create the stream, or update it when its limits or replicas differ from `desired`.

    Raises ReplicasError when the server cannot keep `desired.num_replicas` copies.
    """
    assert desired.name is not None
    replicas = desired.num_replicas or 1
    try:
        info = await js.stream_info(desired.name)
    except NotFoundError:
        try:
            await js.add_stream(desired)
        except APIError as exc:
            raise replicas_error(f"stream {desired.name}", replicas, exc) or exc from None
        log.info("created stream %s (%d replicas)", desired.name, replicas)
        return "created"
    if not _differs(info.config, desired):
        return "unchanged"
    try:  # NATS scales a stream's replicas up or down in place
        await js.update_stream(desired)
    except APIError as exc:
        raise replicas_error(f"stream {desired.name}", replicas, exc) or exc from None
    log.info(
        "updated stream %s (max_age %.0fs, max_bytes %s, %d replicas)",
        desired.name,
        desired.max_age or 0,
        desired.max_bytes,
        replicas,
    )
    return "updated"


async def ensure_bucket(
    js: JetStreamContext, name: str, description: str, *, replicas: int | None = None
) -> Change:
    """Create a KV bucket if it does not exist yet, read through direct gets, with `replicas` copies.

    A direct get names its key in the request subject, so the NATS permissions can let a user
    read single keys of a bucket and not the others (deploy/nats-server.conf). `replicas` None
    creates one copy and leaves an existing bucket's count alone (a caller that does not know it).
    """
    try:
        info = await js.stream_info(f"KV_{name}")
    except NotFoundError:
        try:
            await js.create_key_value(
                KeyValueConfig(
                    bucket=name,
                    description=description,
                    history=5,
                    storage=StorageType.FILE,
                    direct=True,
                    replicas=replicas or 1,
                )
            )
        except APIError as exc:
            raise replicas_error(f"KV bucket {name}", replicas or 1, exc) or exc from None
        log.info("created KV bucket %s (%d replicas)", name, replicas or 1)
        return "created"
    count = replicas if replicas is not None else info.config.num_replicas
    wanted = info.config.evolve(allow_direct=True, num_replicas=count)
    if info.config.allow_direct and (info.config.num_replicas or 1) == (wanted.num_replicas or 1):
        return "unchanged"
    try:  # made by an earlier version or for another replica count; a user not allowed to update
        # it reads it as before
        await js.update_stream(wanted)
    except APIError as exc:
        error = replicas_error(f"KV bucket {name}", wanted.num_replicas or 1, exc)
        if error is not None:
            raise error from None
        _not_updated(name, exc)
        return "unchanged"
    except (nats.errors.Error, TimeoutError) as exc:
        _not_updated(name, exc)
        return "unchanged"
    log.info("KV bucket %s: direct gets on, %d replicas", name, wanted.num_replicas or 1)
    return "updated"


def _not_updated(name: str, exc: Exception) -> None:
    log.warning(
        "KV bucket %s: cannot update it to direct gets and the configured replicas (%s); users "
        "allowed single keys only cannot read it until the evaluator has",
        name,
        exc,
    )


async def provision(
    js: JetStreamContext, subjects: Subjects, streams: StreamsConfig, *, replicas: int = 1
) -> dict[str, Change]:
    """Make the streams and buckets match config, each with `replicas` copies; safe to run on every
    start."""
    changes: dict[str, Change] = {}
    failures: list[str] = []
    refused: list[ReplicasError] = []
    wanted = [stream_config(subjects, streams, family, replicas=replicas) for family in FAMILIES]
    for desired in [*wanted, deadletter_stream_config(subjects, replicas=replicas)]:
        assert desired.name is not None
        try:
            changes[desired.name] = await ensure_stream(js, desired)
        except ReplicasError as exc:
            refused.append(exc)
        except (nats.errors.Error, TimeoutError) as exc:  # the other streams must still be made
            failures.append(f"stream {desired.name}: {exc}")
    for bucket, description in KV_BUCKETS.items():
        name = bucket_name(subjects.prefix, bucket)
        try:
            changes[name] = await ensure_bucket(js, name, description, replicas=replicas)
        except ReplicasError as exc:
            refused.append(exc)
        except (nats.errors.Error, TimeoutError) as exc:
            failures.append(f"KV bucket {name}: {exc}")
    # the same refusal of every stream and bucket, said once
    for where in dict.fromkeys(exc.where for exc in refused):
        names = [name for exc in refused if exc.where == where for name in exc.names]
        failures.append(str(ReplicasError(names, replicas, where)))
    if failures:
        raise ProvisioningError(failures)
    return changes


@contextlib.asynccontextmanager
async def watching(kv: KeyValue) -> AsyncIterator[KeyValue.KeyWatcher]:
    """`kv.watchall()`, stopped when left (cancelled or failed too): its subscription would stay on
    the connection, one more at each retry or standby."""
    watcher = await kv.watchall()
    try:
        yield watcher
    finally:
        with contextlib.suppress(Exception):  # a closed connection has nothing left to drop
            await watcher.stop()  # type: ignore[no-untyped-call]
