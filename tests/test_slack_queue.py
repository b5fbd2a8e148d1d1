"""A channel's queue: the most severe group first, each group in order, retries out of the way."""

from __future__ import annotations

from sinks.slack_queue import ChannelQueue

CRITICAL, WARNING, INFO = 0, 1, 2


def popped(queue: ChannelQueue[str], now: float = 0.0) -> list[str]:
    out = []
    while (item := queue.pop(now)) is not None:
        out.append(item)
    return out


def test_a_critical_goes_before_the_warnings_queued_before_it_and_equal_ranks_go_oldest_first() -> None:
    queue: ChannelQueue[str] = ChannelQueue()
    for seq in range(1, 4):
        queue.push(f"web{seq}", WARNING, seq, f"warning {seq}")
    queue.push("info", INFO, 4, "info")
    queue.push("db", CRITICAL, 5, "critical")
    assert popped(queue) == ["critical", "warning 1", "warning 2", "warning 3", "info"]
    assert queue.next_ready() is None


def test_a_group_leaves_in_the_order_it_came_whatever_its_later_ranks() -> None:
    queue: ChannelQueue[str] = ChannelQueue()
    queue.push("web", WARNING, 1, "web firing")
    queue.push("db", WARNING, 2, "db firing")
    queue.push("web", CRITICAL, 3, "web escalated")  # behind web's first, ahead of db once free
    assert popped(queue) == ["web firing", "web escalated", "db firing"]


def test_a_group_put_back_for_a_retry_lets_the_others_go_and_then_comes_first_in_its_group() -> None:
    queue: ChannelQueue[str] = ChannelQueue()
    queue.push("web", CRITICAL, 1, "web firing")
    queue.push("web", CRITICAL, 2, "web resolved")
    queue.push("db", WARNING, 3, "db firing")
    item = queue.pop(0)
    assert item == "web firing"
    queue.retry_later("web", CRITICAL, 1, item, at=60)
    assert queue.next_ready() == 0
    assert popped(queue, 10) == ["db firing"], "web waits for its retry, its resolve with it"
    assert queue.next_ready() == 60
    assert popped(queue, 60) == ["web firing", "web resolved"]


def test_one_redelivered_after_a_later_one_of_its_group_goes_first() -> None:
    queue: ChannelQueue[str] = ChannelQueue()
    queue.push("web", WARNING, 7, "web resolved")
    queue.push("db", WARNING, 6, "db firing")
    queue.push("web", WARNING, 5, "web firing")  # handed back by a stopped sink, come again late
    assert popped(queue) == ["web firing", "db firing", "web resolved"]
