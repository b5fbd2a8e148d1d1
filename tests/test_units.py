"""Durations as written in config: parsing, printing, and the msgspec hooks."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bus.units import Duration, dec_hook, enc_hook, schema_hook


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("30d", 30 * 86400.0),
        ("1.5h", 5400.0),
        ("2w", 14 * 86400.0),
        ("0s", 0.0),
        (" 30s ", 30.0),
    ],
)
def test_parse_reads_prometheus_style_durations(text: str, seconds: float) -> None:
    assert Duration.parse(text).seconds == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "   ", "10", "10x", "-5s", "s", "5 m", "1h 30m", "5m!", "h1"])
def test_parse_refuses_text_without_a_clear_unit(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        Duration.parse(text)


def test_parse_error_shows_how_to_write_a_duration() -> None:
    with pytest.raises(ValueError, match=r'"30s", "5m" or "1h30m"'):
        Duration.parse("10")


def test_negative_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0s and 3650d"):
        Duration(-1)


def test_a_duration_beyond_ten_years_is_refused() -> None:
    """NATS cannot keep anything that long; check-config must say so, not the server at start."""
    with pytest.raises(ValueError, match="between 0s and 3650d"):
        Duration.parse("99999999999999d")
    assert Duration.parse("3650d").seconds == 3650 * 86400


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("250ms", "250ms"),
        ("10s", "10s"),
        ("5m", "5m"),
        ("1h30m", "1h30m"),
        ("30d", "30d"),
        ("1.5h", "1h30m"),
        ("90s", "1m30s"),
        ("0s", "0s"),
    ],
)
def test_str_prints_the_canonical_form_that_parses_back(text: str, shown: str) -> None:
    duration = Duration.parse(text)
    assert str(duration) == shown
    assert Duration.parse(str(duration)) == duration


@given(st.integers(min_value=0, max_value=400 * 86400 * 1000))
@example(1001)
def test_str_round_trips_any_whole_number_of_milliseconds(millis: int) -> None:
    """Any duration written in milliseconds prints as text that parses to an equal duration."""
    duration = Duration.parse(f"{millis}ms")
    assert Duration.parse(str(duration)) == duration


def test_repr_names_the_duration() -> None:
    assert repr(Duration.parse("1h30m")) == "Duration('1h30m')"


def test_equal_durations_are_equal_and_hash_alike() -> None:
    a, b = Duration.parse("90m"), Duration.parse("1h30m")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, Duration(5400)}) == 1


def test_different_durations_and_other_types_are_not_equal() -> None:
    assert Duration.parse("5m") != Duration.parse("6m")
    assert Duration(300) != 300
    assert Duration(300) != "5m"


def test_dec_hook_parses_strings() -> None:
    assert dec_hook(Duration, "5m") == Duration(300)


@pytest.mark.parametrize("value", [5, 5.0, None, ["5m"]])
def test_dec_hook_refuses_non_strings_with_a_message(value: object) -> None:
    with pytest.raises(ValueError, match=r'write it as a string with a unit, as in "30s"'):
        dec_hook(Duration, value)


def test_dec_hook_refuses_types_it_does_not_know() -> None:
    with pytest.raises(NotImplementedError):
        dec_hook(complex, "1+2j")


class _Timeouts(msgspec.Struct, forbid_unknown_fields=True):
    interval: Duration


def test_msgspec_decodes_and_encodes_durations_through_the_hooks() -> None:
    decoded = msgspec.json.decode(b'{"interval": "1h30m"}', type=_Timeouts, dec_hook=dec_hook)
    assert decoded.interval == Duration(5400)
    assert msgspec.json.encode(decoded, enc_hook=enc_hook) == b'{"interval":"1h30m"}'


def test_msgspec_reports_an_integer_duration_with_its_path() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"invalid duration 5.*\$\.interval"):
        msgspec.convert({"interval": 5}, _Timeouts, dec_hook=dec_hook)


def test_enc_hook_refuses_unknown_objects() -> None:
    with pytest.raises(NotImplementedError, match="object"):
        enc_hook(object())


def test_schema_hook_pattern_matches_what_parse_accepts() -> None:
    schema = schema_hook(Duration)
    assert schema["type"] == "string"
    pattern = re.compile(schema["pattern"])
    for text in ("250ms", "1h30m", "1.5h", "2w"):
        assert pattern.match(text)
        Duration.parse(text)
    for text in ("10", "5 m", "-5s"):
        assert not pattern.match(text)
