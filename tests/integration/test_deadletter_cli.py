"""`jarvis-monitor deadletter list|replay|drop` against a real nats-server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bus import deadletter
from bus.config import StreamsConfig
from bus.connection import Bus
from bus.events import encode
from bus.jetstream import deadletter_stream_config, ensure_stream, provision, stream_name
from bus.server import EmbeddedServer
from jarvis_monitor import deadletter_cli
from jarvis_monitor.cli import main
from sinks.slack import SlackSink
from tests.conftest import wait_until
from tests.fakeslack import FakeClock, FakeSlack, slack_error
from tests.integration.test_slack_sink import BOT_ENV, bot_config, notification, publish, running

pytestmark = pytest.mark.integration


@pytest.fixture
def config_file(nats_server: EmbeddedServer, prefix: str, tmp_path: Path) -> Path:
    path = tmp_path / "jarvis.toml"
    path.write_text(f'[bus]\nservers = ["{nats_server.url}"]\nprefix = "{prefix}"\n', encoding="utf-8")
    return path


@pytest.fixture
async def streams(bus: Bus) -> Bus:
    js = bus.nc.jetstream()
    await provision(js, bus.subjects, StreamsConfig())
    await ensure_stream(js, deadletter_stream_config(bus.subjects))
    return bus


async def run(config_file: Path, *args: str) -> int:
    """`jarvis-monitor -c FILE deadletter ARGS...` in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, ["-c", str(config_file), "deadletter", *args])


async def keep(bus: Bus, data: bytes, reason: str, *, route: str = "default", seq: int = 1) -> None:
    """A dead letter as the Slack sink keeps one."""
    head = deadletter.headers(
        reason,
        original_subject=bus.subjects.notifications(route),
        by="sink slack (slack)",
        attempts=3,
        msg_id=f"test-{seq}",
    )
    kept = await deadletter.publish(
        bus.nc.jetstream(), bus.subjects.deadletter(route), data, head, max_payload=bus.nc.max_payload
    )
    assert kept


async def stream_messages(bus: Bus, family: str) -> int:
    info = await bus.nc.jetstream().stream_info(stream_name(bus.subjects.prefix, family))
    return info.state.messages


async def test_no_dead_letters_is_said_plainly(
    bus: Bus, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(config_file, "list") == 0  # the stream does not even exist yet
    assert capsys.readouterr().out == "no dead letters\n"


async def test_list_shows_every_dead_letter_with_why_and_nothing_for_the_terminal_to_obey(
    streams: Bus, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await keep(streams, encode(notification("firing", 1)), "channel_not_found")
    hostile = {
        deadletter.REASON: "\x1b[2J\x1b]0;pwned\x07 wiped",
        deadletter.ORIGINAL_SUBJECT: streams.subjects.notifications("default"),
        deadletter.BY: "\x1b[31mred",
    }
    await streams.nc.jetstream().publish(streams.subjects.deadletter("x"), b"junk", headers=hostile)
    assert await run(config_file, "list") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\x07" not in out
    header, first, second, summary = out.splitlines()
    assert header.split() == ["ID", "WHEN", "BY", "ATTEMPTS", "ORIGINAL", "SUBJECT", "BYTES", "REASON"]
    assert first.split()[0] == "1"
    assert "sink slack (slack)" in first
    assert first.endswith("channel_not_found")
    assert f"{streams.subjects.prefix}.notifications.default" in first
    assert str(len(encode(notification("firing", 1)))) in first, "the size, though the list reads no payload"
    assert second.split()[0] == "2"
    assert second.endswith("?[2J?]0;pwned? wiped")
    assert summary == f"2 dead letters on {stream_name(streams.subjects.prefix, 'deadletter')}"

    assert await run(config_file, "list", "--json") == 0
    raw = capsys.readouterr().out
    assert "\x1b" not in raw, "JSON escapes controls"
    assert [(r["seq"], r["reason"], r["attempts"]) for r in json.loads(raw)] == [
        (1, "channel_not_found", 3),
        (2, hostile[deadletter.REASON], 1),
    ]

    assert await run(config_file, "list", "--limit", "1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[0] == "2", "the newest"
    assert lines[-1].endswith("the newest 1 shown, --limit 0 shows all")


async def test_replay_publishes_the_payload_to_its_original_subject_and_removes_the_letter(
    streams: Bus, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = encode(notification("firing", 1))
    await keep(streams, payload, "channel_not_found")
    before = await stream_messages(streams, "notifications")
    assert await run(config_file, "replay", "1") == 0
    assert capsys.readouterr().out == f"replayed 1 to {streams.subjects.prefix}.notifications.default\n"
    assert await stream_messages(streams, "notifications") == before + 1
    assert await stream_messages(streams, "deadletter") == 0
    js = streams.nc.jetstream()
    info = await js.stream_info(stream_name(streams.subjects.prefix, "notifications"))
    replayed = await js.get_msg(stream_name(streams.subjects.prefix, "notifications"), info.state.last_seq)
    assert replayed.data == payload
    assert replayed.subject == streams.subjects.notifications("default")

    assert await run(config_file, "replay", "1") == 1
    assert "no dead letter 1" in capsys.readouterr().err


async def test_a_replay_run_twice_publishes_once(
    streams: Bus, config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if the first run died between publishing and removing the letter."""

    async def kept_anyway(self: deadletter_cli.DeadLetters, seq: int) -> bool:
        return True

    monkeypatch.setattr(deadletter_cli.DeadLetters, "remove", kept_anyway)
    await keep(streams, encode(notification("firing", 1)), "channel_not_found")
    before = await stream_messages(streams, "notifications")
    assert await run(config_file, "replay", "1") == 0
    assert await run(config_file, "replay", "1") == 0
    assert "already replayed" in capsys.readouterr().out.splitlines()[1]
    assert await stream_messages(streams, "notifications") == before + 1


async def test_a_letter_cut_to_fit_is_not_replayed(
    streams: Bus, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = deadletter.headers(
        "too big",
        original_subject=streams.subjects.notifications("default"),
        by="evaluator",
        attempts=1,
        msg_id="big",
    )
    await deadletter.publish(
        streams.nc.jetstream(),
        streams.subjects.deadletter("default"),
        b"x" * 2_000_000,
        head,
        max_payload=streams.nc.max_payload,
    )
    assert await run(config_file, "list") == 0
    assert "2000000 (cut)" in capsys.readouterr().out
    assert await run(config_file, "replay", "1") == 1
    assert "keeps only part of its 2000000 bytes" in capsys.readouterr().err
    assert await stream_messages(streams, "deadletter") == 1


async def test_drop_removes_a_letter_and_bad_ids_are_named(
    streams: Bus, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await keep(streams, b"{}", "not a notification", seq=1)
    await keep(streams, b"{}", "not a notification", seq=2)
    assert await run(config_file, "drop", "1") == 0
    assert capsys.readouterr().out == "dropped 1\n"
    assert await run(config_file, "list") == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-1]] == ["2"]
    assert await run(config_file, "drop", "1") == 1
    assert "no dead letter 1 (see jarvis-monitor deadletter list)" in capsys.readouterr().err
    assert await run(config_file, "replay", "999") == 1
    assert "no dead letter 999" in capsys.readouterr().err
    for bad in ("abc", "0", "1.5", "²", "\x1b[2J"):
        assert await run(config_file, "drop", bad) == 2, bad
        err = capsys.readouterr().err
        assert "is not a dead letter id" in err
        assert "\x1b" not in err
    assert await stream_messages(streams, "deadletter") == 1


async def test_a_notification_slack_refused_reaches_slack_once_replayed(
    streams: Bus, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator's path: the sink dead-letters it, the cause is fixed, `replay` delivers it."""
    slack = FakeSlack()
    await slack.start()
    try:
        slack.script = [slack_error("channel_not_found")]
        async with running(SlackSink(bot_config(slack), streams, BOT_ENV, clock=FakeClock())):
            await publish(streams, notification("firing", 1))
            await wait_until(lambda: len(slack.requests) == 1)
            await asyncio.wait_for(_until_letters(streams, 1), 10)
            assert await run(config_file, "list") == 0
            assert "channel_not_found" in capsys.readouterr().out
            assert await run(config_file, "replay", "1") == 0
            await wait_until(lambda: len(slack.accepted()) == 1)
        assert slack.accepted()[0].json["text"] == "🔴 [FIRING:3] web01"
        assert await stream_messages(streams, "deadletter") == 0
    finally:
        await slack.stop()


async def _until_letters(bus: Bus, count: int) -> None:
    while await stream_messages(bus, "deadletter") < count:
        await asyncio.sleep(0.05)
