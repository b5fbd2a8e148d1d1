"""Outputs cut to the server's max_payload: a notification too big is split into parts that fit."""

from __future__ import annotations

import msgspec

from bus.events import Alert, Notification, encode

# room for the headers (Nats-Msg-Id, ...) and the protocol line beside a payload
PUBLISH_HEADROOM = 4096


def payload_limit(max_payload: int) -> int:
    """The largest payload that fits beside its headers in a server message."""
    return max(max_payload - PUBLISH_HEADROOM, 1024)


def split_notification(notification: Notification, limit: int) -> tuple[list[Notification], list[Alert]]:
    """Parts of `notification` whose JSON fits in `limit` bytes, and the alerts too big for any part.

    Parts keep the alerts' order; each part's id is the notification's id with `/k` so that each
    is published (and deduplicated) on its own; `part` and `parts` say which of how many it is.
    """
    if len(encode(notification)) <= limit:
        return [notification], []
    shell = msgspec.structs.replace(notification, alerts=[], id=f"{notification.id}/00000", part=99999)
    empty = len(encode(msgspec.structs.replace(shell, parts=99999)))
    groups: list[list[Alert]] = [[]]
    used = empty
    too_big = []
    for alert in notification.alerts:
        size = len(encode(alert)) + 1  # the comma between array items
        if empty + size > limit:
            too_big.append(alert)
            continue
        if used + size > limit and groups[-1]:
            groups.append([])
            used = empty
        groups[-1].append(alert)
        used += size
    groups = [group for group in groups if group]
    parts = [
        msgspec.structs.replace(
            notification, id=f"{notification.id}/{k}", alerts=group, part=k, parts=len(groups)
        )
        for k, group in enumerate(groups, start=1)
    ]
    return parts, too_big
