"""Evaluator partitions: the inputs split by host on the server, each partition a subject range.

With `evaluator.partitions` N > 1, one stream sources the metrics, health and heartbeat streams
and stores each message under `<prefix>.partition.<k>.<family>.<host>...`, where k is the
server's `partition(N, host)` (FNV-1a of the host token, modulo N). The wire stays as it is: the
family streams and core subscribers see the subjects the agents published; only the evaluators
read this stream, each partition through consumers filtered to its own k.
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


def partition_stream(prefix: str) -> str:
    """The name of the partitioned inputs' stream, e.g. `JARVIS_PARTITION`."""
    return stream_name(prefix, PARTITION_FAMILY)


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
    prefix: str, partitions: int, *, replicas: int = 1, start: dict[str, int] | None = None
) -> StreamConfig:
    """The partitioned stream: the input families' streams as sources, each subject renamed, each
    from the sequence `start` gives its family (a new stream copies none of the families' past:
    stored again now, old messages would look new)."""
    if partitions < 2:
        raise ValueError("a partitioned stream needs at least 2 partitions")
    sources = []
    for family, tokens in INPUT_TOKENS.items():
        wildcards = ".".join(f"{{{{wildcard({n})}}}}" for n in range(1, tokens + 1))
        transform = SubjectTransform(
            src=f"{prefix}.{family}" + ".*" * tokens,
            dest=f"{prefix}.{PARTITION_FAMILY}.{{{{partition({partitions},1)}}}}.{family}.{wildcards}",
        )
        sources.append(
            StreamSource(
                name=stream_name(prefix, family),
                opt_start_seq=(start or {}).get(family),
                subject_transforms=[transform],
            )
        )
    return StreamConfig(
        name=partition_stream(prefix),
        sources=sources,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=PARTITION_MAX_AGE,
        max_bytes=PARTITION_MAX_BYTES,
        num_replicas=replicas,
    )


def _transforms(config: StreamConfig) -> list[tuple[str | None, str | None]]:
    return sorted(
        (source.name, transform.dest)
        for source in config.sources or []
        for transform in source.subject_transforms or []
    )


async def ensure_partition_stream(
    js: JetStreamContext, prefix: str, partitions: int, *, replicas: int = 1
) -> Change:
    """Create the partitioned stream, or update it to another number of partitions or replicas.

    After a change of N, messages already stored keep the partition they were given; each
    evaluator partition reads only what is stored after its saved position.
    """
    # from what comes next: by sequence, as a start time races with the sources' set-up
    start = {}
    for family in INPUT_TOKENS:
        start[family] = (await js.stream_info(stream_name(prefix, family))).state.last_seq + 1
    desired = partition_stream_config(prefix, partitions, replicas=replicas, start=start)
    assert desired.name is not None
    try:
        info = await js.stream_info(desired.name)
    except NotFoundError:
        try:
            await js.add_stream(desired)
        except APIError as exc:
            raise replicas_error(f"stream {desired.name}", replicas, exc) or exc from None
        log.info("created stream %s (%d partitions, %d replicas)", desired.name, partitions, replicas)
        return "created"
    current = info.config
    if _transforms(current) == _transforms(desired) and (current.num_replicas or 1) == replicas:
        return "unchanged"
    if _transforms(current) == _transforms(desired):  # the replicas alone: the sources as made
        made = {source.name: source.opt_start_seq or 0 for source in current.sources or []}
        start = {family: made.get(stream_name(prefix, family), 0) for family in INPUT_TOKENS}
        desired = partition_stream_config(prefix, partitions, replicas=replicas, start=start)
    try:
        await js.update_stream(desired)
    except APIError as exc:
        raise replicas_error(f"stream {desired.name}", replicas, exc) or exc from None
    log.info("updated stream %s (%d partitions, %d replicas)", desired.name, partitions, replicas)
    return "updated"
