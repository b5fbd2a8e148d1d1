"""Evaluator partitions: the inputs split by host on the server, each partition a subject range.

With `evaluator.partitions` N > 1, each input family's stream (metrics, health, heartbeat) has a
mirror that stores each message under `<prefix>.partition.<k>.<family>.<host>...`, where k is
the server's `partition(N, host)` (FNV-1a of the host token, modulo N). The wire stays as it is:
the family streams and core subscribers see the subjects the agents published; only the
evaluators read the mirrors, each partition through consumers filtered to its own k.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import APIError, NotFoundError

from bus.jetstream import Change, replicas_error, stream_name
from bus.subjects import sanitize_token

log = logging.getLogger(__name__)

# the families an evaluator reads, and how many tokens after the family their subjects have
INPUT_TOKENS = {"metrics": 2, "health": 3, "heartbeat": 2}
PARTITION_FAMILY = "partition"
# The partition stream only needs to hold what an evaluator has not evaluated yet, and the recent
# past a partition taken over afresh starts with (evaluator LOOKBACK): not the family streams' days.
PARTITION_MAX_AGE = 3600.0
PARTITION_MAX_BYTES = 2 << 30

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def partition_of(host_token: str, partitions: int) -> int:
    """The partition of a host (its subject token), as nats-server's `partition()` computes it."""
    digest = _FNV_OFFSET
    for byte in host_token.encode():
        digest = ((digest ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return digest % partitions


def host_partition(host: str, partitions: int) -> int:
    """The partition whose evaluator evaluates `host` (the server splits by its subject token)."""
    return partition_of(sanitize_token(host), partitions)


def partition_stream(prefix: str, family: str) -> str:
    """The partitioned copy of one input family's stream, e.g. `JARVIS_PARTITION_METRICS`."""
    return stream_name(prefix, f"{PARTITION_FAMILY}_{family}")


def partition_subject(prefix: str, partition: int, family: str) -> str:
    """The filter of one partition's inputs of one family."""
    return f"{prefix}.{PARTITION_FAMILY}.{partition}.{family}.>"


def original_subject(prefix: str, subject: str) -> str:
    """The subject an agent published a partitioned message on (the stream stores it renamed)."""
    head = f"{prefix}.{PARTITION_FAMILY}."
    if not subject.startswith(head):
        return subject
    _, _, rest = subject[len(head) :].partition(".")
    return f"{prefix}.{rest}"


def partition_stream_config(
    prefix: str, family: str, partitions: int, *, replicas: int = 1, start: int | None = None
) -> StreamConfig:
    """A mirror of one input family's stream with each subject renamed to its partition, from
    sequence `start` on. A mirror keeps the family's sequences and times and adds no header, so
    a message costs its reader what it costs from the family stream."""
    if partitions < 2:
        raise ValueError("a partitioned stream needs at least 2 partitions")
    tokens = INPUT_TOKENS[family]
    wildcards = ".".join(f"{{{{wildcard({n})}}}}" for n in range(1, tokens + 1))
    transform = SubjectTransform(
        src=f"{prefix}.{family}" + ".*" * tokens,
        dest=f"{prefix}.{PARTITION_FAMILY}.{{{{partition({partitions},1)}}}}.{family}.{wildcards}",
    )
    return StreamConfig(
        name=partition_stream(prefix, family),
        mirror=StreamSource(
            name=stream_name(prefix, family), opt_start_seq=start, subject_transforms=[transform]
        ),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=PARTITION_MAX_AGE,
        max_bytes=PARTITION_MAX_BYTES,
        num_replicas=replicas,
    )


def _transform(config: StreamConfig) -> list[str | None]:
    return [t.dest for t in (config.mirror.subject_transforms or [])] if config.mirror else []


async def ensure_partition_streams(
    js: JetStreamContext, prefix: str, partitions: int, *, replicas: int = 1
) -> dict[str, Change]:
    """Make each input family's partitioned mirror, or make it again for another number of
    partitions (a mirror's own config cannot change; it holds nothing its family does not)."""
    return {
        partition_stream(prefix, family): await _ensure_mirror(js, prefix, family, partitions, replicas)
        for family in INPUT_TOKENS
    }


async def _ensure_mirror(
    js: JetStreamContext, prefix: str, family: str, partitions: int, replicas: int
) -> Change:
    # from what comes next, by sequence: no past stored twice
    start = (await js.stream_info(stream_name(prefix, family))).state.last_seq + 1
    desired = partition_stream_config(prefix, family, partitions, replicas=replicas, start=start)
    assert desired.name is not None
    try:
        current = (await js.stream_info(desired.name)).config
    except NotFoundError:
        current = None
    if current is not None and _transform(current) == _transform(desired):
        if (current.num_replicas or 1) == replicas:
            return "unchanged"
        try:
            await js.update_stream(current.evolve(num_replicas=replicas))
        except APIError as exc:
            raise replicas_error(f"stream {desired.name}", replicas, exc) or exc from None
        log.info("stream %s: %d replicas", desired.name, replicas)
        return "updated"
    if current is not None:
        await js.delete_stream(desired.name)
    try:
        await js.add_stream(desired)
    except APIError as exc:
        raise replicas_error(f"stream {desired.name}", replicas, exc) or exc from None
    log.info(
        "%s stream %s (%d partitions, %d replicas)",
        "made again" if current else "created",
        desired.name,
        partitions,
        replicas,
    )
    return "updated" if current else "created"
