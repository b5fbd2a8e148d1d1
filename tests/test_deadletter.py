"""Dead-letter records: one-line headers that say why, and payloads cut to fit max_payload."""

from __future__ import annotations

from bus import deadletter


def test_headers_are_one_line_each_and_bounded() -> None:
    head = deadletter.headers(
        "bad\r\nInjected: yes" + "x" * 900,
        original_subject="jarvis.a",
        by="evaluator",
        attempts=3,
        msg_id="i",
    )
    assert "\n" not in head[deadletter.REASON]
    assert "\r" not in head[deadletter.REASON]
    assert len(head[deadletter.REASON]) == deadletter.MAX_REASON
    assert head[deadletter.ATTEMPTS] == "3"


def test_a_payload_over_max_payload_is_cut_and_says_its_original_size() -> None:
    head = deadletter.headers("too big", original_subject="s", by="b", attempts=1, msg_id="i")
    data = deadletter.fit(b"x" * 2_000_000, head, 1_048_576)
    assert len(data) + sum(len(k) + len(v) for k, v in head.items()) < 1_048_576
    assert head[deadletter.ORIGINAL_SIZE] == "2000000"
    small = deadletter.headers("r", original_subject="s", by="b", attempts=1, msg_id="i")
    assert deadletter.fit(b"ok", small, 1_048_576) == b"ok"
    assert deadletter.ORIGINAL_SIZE not in small
