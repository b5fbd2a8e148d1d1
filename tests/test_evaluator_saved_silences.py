"""A saved state holding a silence that no longer validates (a regex RE2 refuses, kept from before
regexes went to RE2) keeps the rest of the state: only that silence is dropped, and said so."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from evaluator.silences import Silence, parse_matcher
from evaluator.store import JournalEntry, SavedState, _decode

GOOD = Silence(
    id="good", matchers=[parse_matcher("host=web01")], starts_at=0, ends_at=9, author="", comment=""
)


def _with_an_old_silence(record: SavedState | JournalEntry) -> bytes:
    raw: dict[str, Any] = msgspec.msgpack.decode(msgspec.msgpack.encode(record))
    old = {**raw["silences"][0], "id": "old", "matchers": [{"name": "host", "op": "=~", "value": "(?=web)x"}]}
    raw["silences"].append(old)
    return msgspec.msgpack.encode(raw)


def test_a_base_keeps_its_engine_and_the_silences_that_can_be_read(caplog: pytest.LogCaptureFixture) -> None:
    base = SavedState(engine=b"engine", cursors={"metrics": 7}, silences=[GOOD], journal="j", first_slot=3)
    restored = _decode(SavedState, _with_an_old_silence(base), "snapshot")
    assert restored == base
    assert "a silence kept in KV key snapshot cannot be read and mutes nothing: invalid regex" in caplog.text


def test_a_journal_entry_too() -> None:
    entry = JournalEntry(journal="j", slot=4, delta=b"delta", cursors={"metrics": 8}, silences=[GOOD])
    assert _decode(JournalEntry, _with_an_old_silence(entry), "journal.4") == entry


def test_a_record_wrong_otherwise_is_still_refused() -> None:
    data = msgspec.msgpack.encode({"engine": "not bytes", "cursors": {}})
    with pytest.raises(msgspec.ValidationError):
        _decode(SavedState, data, "snapshot")
