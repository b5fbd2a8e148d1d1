"""Bidirectional overrides from outside text never reorder what a person reads, wherever it is shown."""

from __future__ import annotations

import pytest

from bus import deadletter
from jarvis_monitor.tail import clean
from sinks.report.charts import printable
from sinks.report.render import md_cell
from sinks.slack_format import console_safe, escape, fit

SPOOF = "invoice\u202egpj.exe"  # shows as "invoiceexe.jpg" where the override is obeyed
OVERRIDES = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]


@pytest.mark.parametrize(
    "show",
    [escape, console_safe, clean, printable, md_cell, lambda text: fit(text, 100)],
    ids=["slack-mrkdwn", "console", "tail", "html-and-markdown-report", "markdown-cell", "slack-fit"],
)
def test_every_override_is_neutralised_where_text_is_shown(show: object) -> None:
    assert callable(show)
    for override in OVERRIDES:
        shown = show(f"a{override}b")
        assert override not in shown
        assert "a" in shown
        assert "b" in shown
    assert "\u202e" not in show(SPOOF)


def test_a_dead_letter_reason_carries_no_override() -> None:
    head = deadletter.headers(SPOOF, original_subject="s", by="b", attempts=1, msg_id="i")
    assert "\u202e" not in head[deadletter.REASON]
