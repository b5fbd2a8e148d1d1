"""Dead-letter records: one-line headers that say why, and payloads cut to fit max_payload."""

from __future__ import annotations

import types

from bus import deadletter
from bus.subjects import Subjects


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


def test_input_letters_of_two_families_never_share_an_id_under_a_prefix_with_dots() -> None:
    """The id makes JetStream drop a second letter of the same input; a prefix `acme.jarvis` made
    every family `jarvis`, so a metrics letter and a heartbeat letter of one sequence were one."""
    subjects = Subjects("acme.jarvis")
    ids = set()
    for family, subject in (
        ("metrics", subjects.metrics("web01", "host")),
        ("heartbeat", subjects.heartbeat("web01", "host")),
    ):
        assert subjects.family_of(subject) == family
        msg = types.SimpleNamespace(subject=subject, data=b"x", headers=None)
        dead = subjects.dead_letter("input", family)
        letter = deadletter.input_letter(dead, msg, "bad", by="evaluator", stream_seq=7)  # type: ignore[arg-type]
        ids.add(letter.headers["Nats-Msg-Id"])
    assert ids == {"input-metrics-7", "input-heartbeat-7"}
