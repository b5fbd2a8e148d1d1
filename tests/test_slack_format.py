"""Slack messages as people read them: titles, alert lines, the silence command, escaping and limits."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bus.events import Alert, Notification, NotificationStatus
from sinks.slack_format import (
    MAX_ALERTS_TEXT,
    MAX_BLOCKS,
    MAX_HEADER_TEXT,
    MAX_SECTION_TEXT,
    FormatOptions,
    console_text,
    escape,
    fit,
    render,
    resolved_reply,
    silence_command,
)

STARTS = 1764165720.0  # 2025-11-26 14:02 UTC
OPTIONS = FormatOptions()


def make_alert(
    rule: str = "disk_full",
    severity: str = "critical",
    *,
    host: str = "web01",
    status: str = "firing",
    **labels: str,
) -> Alert:
    return Alert(
        fingerprint=f"{rule}-{host}",
        rule=rule,
        severity=severity,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        labels={"host": host, "agent": "host", **labels},
        summary=f"{rule} on {host}",
        value=93.2,
        threshold=90.0,
        starts_at=STARTS,
        ends_at=STARTS + 600 if status == "resolved" else None,
    )


def make_notification(*alerts: Alert, status: NotificationStatus = "firing") -> Notification:
    return Notification(
        id="n1", group_key="host=web01", route="default", status=status, alerts=list(alerts), ts=STARTS
    )


def three_on_web01(status: str = "firing") -> list[Alert]:
    return [
        make_alert("disk_full", "critical", status=status, mount="/"),
        make_alert("mem_high", "warning", status=status),
        make_alert("cpu_high", "warning", status=status),
    ]


def blocks_of(payload: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = payload["attachments"][0]["blocks"]
    return blocks


def texts(value: Any) -> Iterator[str]:
    """Every string in a payload, wherever it is nested."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts(item)


def test_three_alerts_on_one_host_make_one_titled_message_with_a_line_each() -> None:
    payload = render(make_notification(*three_on_web01()), OPTIONS).payload()
    blocks = blocks_of(payload)
    assert payload["text"] == "🔴 [FIRING:3] web01"
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "🔴 [FIRING:3] web01", "emoji": True},
    }
    assert payload["attachments"][0]["color"] == "#d0021b"
    assert blocks[1]["text"]["text"] == (
        "🔴 *disk_full* disk_full on web01\n"
        "value *93.2* · threshold 90 · since 2025-11-26 14:02 UTC\n"
        "`mount=/`"
    )
    assert [b["text"]["text"].split(" ")[1] for b in blocks[1:4]] == [
        "*disk_full*",
        "*mem_high*",
        "*cpu_high*",
    ]
    assert blocks[4]["text"]["text"] == (
        "To silence: `jarvis-monitor silence add host=web01 --for 2h --comment investigating`"
    )


def test_a_single_alert_is_silenced_by_host_and_rule() -> None:
    payload = render(make_notification(make_alert()), OPTIONS).payload()
    assert payload["text"] == "🔴 [FIRING:1] web01 disk_full"
    silence = blocks_of(payload)[2]["text"]["text"]
    assert silence == (
        "To silence: `jarvis-monitor silence add host=web01 rule=disk_full --for 2h --comment investigating`"
    )


def test_a_hostile_container_name_pings_nobody() -> None:
    """`<!channel>` and friends arrive escaped in every text: Slack shows them, it does not act on them."""
    hostile = make_alert("container_down", host="web01", container="<!channel> <@U123> & <#C1|x>")
    payload = render(make_notification(hostile, make_alert("x", host="<!here>")), OPTIONS).payload()
    for text in texts(payload):
        assert not re.search(r"<[!@#]", text), text
        assert not re.search(r"&(?!amp;|lt;|gt;)", text), text
    line = blocks_of(payload)[1]["text"]["text"]
    assert "`container=&lt;!channel&gt; &lt;@U123&gt; &amp; &lt;#C1|x&gt;`" in line


def test_the_silence_command_is_quoted_for_a_posix_shell() -> None:
    host = "web 01'; rm -rf / #"
    command = silence_command([("host", host), ("rule", "disk_full")], "2h")
    assert command == (
        "jarvis-monitor silence add 'host=web 01'\"'\"'; rm -rf / #' rule=disk_full "
        "--for 2h --comment investigating"
    )
    assert shlex.split(command)[3:5] == [f"host={host}", "rule=disk_full"]


@pytest.mark.parametrize("value", ["web01", "~web", " padded ", "", '"quoted"', "a=b", "x'y"])
def test_the_silence_command_matches_the_exact_value(value: str) -> None:
    """The evaluator's matcher parser reads back exactly the label value the alert had."""
    from evaluator.silences import parse_matcher

    command = silence_command([("host", value)], "2h")
    parsed = parse_matcher(shlex.split(command)[3])
    assert (parsed.name, parsed.op, parsed.value) == ("host", "=", value)


def test_the_silence_command_is_escaped_for_mrkdwn_and_reads_back_exactly() -> None:
    """What Slack shows after unescaping is exactly the command: copy, paste, run."""
    payload = render(make_notification(make_alert(host="<!channel>&")), OPTIONS).payload()
    shown = blocks_of(payload)[2]["text"]["text"]
    assert shown == (
        "To silence: `jarvis-monitor silence add 'host=&lt;!channel&gt;&amp;' rule=disk_full "
        "--for 2h --comment investigating`"
    )
    unescaped = shown.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert shlex.split(unescaped.split("`")[1])[3] == "host=<!channel>&"


def test_alerts_without_shared_labels_get_one_silence_command_each() -> None:
    alerts = [make_alert("disk_full", host="web01"), make_alert("mem_high", host="db01")]
    payload = render(make_notification(*alerts), OPTIONS).payload()
    silence = blocks_of(payload)[3]["text"]["text"]
    assert "silence add host=web01 rule=disk_full" in silence
    assert "silence add host=db01 rule=mem_high" in silence


def test_resolved_groups_are_green_with_a_check_mark_and_no_silence_command() -> None:
    payload = render(make_notification(*three_on_web01("resolved"), status="resolved"), OPTIONS).payload()
    assert payload["text"] == "✅ [RESOLVED] web01"
    assert payload["attachments"][0]["color"] == "#2eb67d"
    assert not any("silence add" in t for t in texts(payload))
    assert "resolved 2025-11-26 14:12 UTC" in blocks_of(payload)[1]["text"]["text"]
    assert resolved_reply(make_notification(*three_on_web01("resolved"))).text == "✅ resolved: 3 alerts"


def test_reminders_and_flapping_alerts_are_marked() -> None:
    flapping = Alert(**{**_fields(make_alert()), "flapping": True})
    payload = render(make_notification(flapping, status="reminder"), OPTIONS).payload()
    assert payload["text"] == "🔴 [FIRING:1] web01 disk_full · ⏰ reminder"
    assert "🔁 flapping" in blocks_of(payload)[1]["text"]["text"]


def test_a_flapping_alert_says_its_outages_and_downtime_and_counts_even_while_up() -> None:
    up_now = Alert(
        **{**_fields(make_alert(status="resolved")), "flapping": True, "episodes": 3, "downtime": 75.0}
    )
    payload = render(make_notification(up_now), OPTIONS).payload()
    assert payload["text"].startswith("🔴 [FIRING:1] web01")
    assert "🔁 flapping: 3 outages, down 1m15s so far" in blocks_of(payload)[1]["text"]["text"]
    assert "🔁 flapping: 3 outages, down 1m15s so far" in console_text(make_notification(up_now), OPTIONS)


def test_the_end_of_a_flap_says_stable_again_with_the_whole_count() -> None:
    stable = Alert(**{**_fields(make_alert(status="resolved")), "episodes": 8, "downtime": 160.0})
    payload = render(make_notification(stable, status="resolved"), OPTIONS).payload()
    assert payload["text"] == "✅ [RESOLVED] web01 disk_full"
    assert "🟢 stable again after 8 outages (down 2m40s)" in blocks_of(payload)[1]["text"]["text"]


def _fields(alert: Alert) -> dict[str, Any]:
    return {name: getattr(alert, name) for name in alert.__struct_fields__}


def test_severity_sets_emoji_and_colour() -> None:
    warning = render(make_notification(make_alert("mem_high", "warning")), OPTIONS).payload()
    info = render(make_notification(make_alert("note", "info")), OPTIONS).payload()
    assert warning["text"].startswith("⚠️ [FIRING:1]")
    assert warning["attachments"][0]["color"] == "#f2a900"
    assert info["text"].startswith("\u2139\ufe0f [FIRING:1]")


def test_the_runbook_link_names_the_rule() -> None:
    options = FormatOptions(runbook_url="https://wiki.example.com/runbook?a=1&b=2#{rule}")
    payload = render(make_notification(make_alert("disk full/x")), options).payload()
    line = blocks_of(payload)[1]["text"]["text"]
    assert "<https://wiki.example.com/runbook?a=1&amp;b=2#disk%20full%2Fx|runbook>" in line


def test_many_alerts_are_cut_to_fifty_blocks_with_a_count_of_the_rest() -> None:
    alerts = [make_alert(f"rule{i}", host="web01") for i in range(200)]
    blocks = blocks_of(render(make_notification(*alerts), OPTIONS).payload())
    assert len(blocks) == MAX_BLOCKS
    alert_blocks = [b for b in blocks if b["type"] == "section" and "*rule" in b["text"]["text"]]
    more = [
        b["text"]["text"] for b in blocks if b["type"] == "section" and "more alerts" in b["text"]["text"]
    ]
    assert more == [f"+{200 - len(alert_blocks)} more alerts"]
    assert blocks[-1]["type"] == "context", "the silence command and context are never cut"


def test_a_big_incident_keeps_its_blocks_text_under_what_slack_takes_in_all() -> None:
    """Slack refuses blocks holding about 11,000+ characters in all (msg_blocks_too_long), though
    each section is under 3,000: forty containers with long summaries must still fit."""
    alerts = [
        Alert(
            **{**_fields(make_alert(f"container_down{i}", container=f"worker-{i:02}")), "summary": "x" * 400}
        )
        for i in range(40)
    ]
    blocks = blocks_of(render(make_notification(*alerts), OPTIONS).payload())
    sections = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert sum(map(len, sections)) <= MAX_ALERTS_TEXT + 200  # the silence command and the count
    shown = [t for t in sections if "*container_down" in t]
    assert 0 < len(shown) < 40
    assert f"+{40 - len(shown)} more alerts" in sections


def test_the_short_form_keeps_the_title_and_counts_the_alerts() -> None:
    payload = render(make_notification(*three_on_web01()), OPTIONS, short=True).payload()
    blocks = blocks_of(payload)
    assert blocks[0]["text"]["text"] == "🔴 [FIRING:3] web01"
    assert blocks[1]["text"]["text"].startswith("3 alerts: too long for Slack to show here")
    assert payload["text"] == "🔴 [FIRING:3] web01"


def test_long_texts_are_cut_to_slacks_limits() -> None:
    huge = Alert(
        **{**_fields(make_alert(host="h" * 500)), "summary": "&" * 10_000, "description": "<" * 9000}
    )
    payload = render(make_notification(huge), OPTIONS).payload()
    blocks = blocks_of(payload)
    assert len(blocks[0]["text"]["text"]) <= MAX_HEADER_TEXT
    assert blocks[0]["text"]["text"].endswith("more")
    for block in blocks:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= MAX_SECTION_TEXT
    assert "more" in blocks[1]["text"]["text"]
    for text in texts(payload):
        assert not re.search(r"&(?!amp;|lt;|gt;)", text), "an entity was cut in half"


@given(st.text(alphabet="a&<>é", max_size=400), st.integers(min_value=20, max_value=300))
@example("&" * 100, 20)
def test_fit_stays_within_the_limit_and_never_splits_an_entity(raw: str, limit: int) -> None:
    text = fit(raw, limit)
    assert len(text) <= limit
    assert not re.search(r"&(?!amp;|lt;|gt;)", text)
    assert not re.search("[<>]", text)
    if len(escape(raw)) <= limit:
        assert text == escape(raw)
    else:
        assert re.search(r"… \+\d+ more$", text)


def test_console_text_is_readable_and_strips_terminal_escapes() -> None:
    alert = make_alert(host="web01\x1b[2J")
    text = console_text(make_notification(alert), OPTIONS)
    assert "\x1b" not in text
    assert text.splitlines() == [
        "🔴 [FIRING:1] web01?[2J disk_full  (route default)",
        "  🔴 disk_full: disk_full on web01?[2J (value 93.2, threshold 90, since 2025-11-26 14:02 UTC)",
        "  silence: jarvis-monitor silence add 'host=web01?[2J' rule=disk_full --for 2h "
        "--comment investigating",
    ]


def test_a_start_time_no_calendar_holds_renders_as_its_number_not_an_error() -> None:
    """Nanoseconds sent as seconds made time.gmtime raise, and the message was retried forever."""
    alert = msgspec.structs.replace(make_alert(), starts_at=1.764e18)
    payload = render(make_notification(alert), OPTIONS).payload()
    assert "since 1.764e+18 (not a time)" in blocks_of(payload)[1]["text"]["text"]
    assert "since 1.764e+18 (not a time)" in console_text(make_notification(alert), OPTIONS)
