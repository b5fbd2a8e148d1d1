"""Subject names: every outside value becomes exactly one safe token under a valid prefix."""

from __future__ import annotations

import string
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bus.subjects import MAX_TOKEN, Subjects, sanitize_token, validate_prefix

SAFE = string.ascii_letters + string.digits + "_-"

prefixes = st.lists(st.text(alphabet=SAFE, min_size=1, max_size=8), min_size=1, max_size=3).map(".".join)


def is_unsafe(char: str) -> bool:
    """What may not appear in a token: separators, wildcards, whitespace, control characters."""
    return char in ".*>" or char.isspace() or unicodedata.category(char) == "Cc"


@given(st.text())
@example("")
@example("web.01 *>\t\n\r\x00\x1b\x7f")
@example("\u00a0\u2028\u3000")  # no-break space, line separator, ideographic space
@example("a\x80b\x9bc")  # C1 control characters (0x9b is the 8-bit terminal CSI)
@example("é" * (MAX_TOKEN + 5))
def test_sanitize_token_gives_one_safe_non_empty_token(value: str) -> None:
    token = sanitize_token(value)
    assert token
    assert len(token) <= MAX_TOKEN
    assert not [c for c in token if is_unsafe(c)], f"unsafe characters left in {token!r}"


@given(st.text())
def test_sanitize_token_is_idempotent(value: str) -> None:
    """A token that is already safe comes back unchanged, so sanitising twice changes nothing."""
    once = sanitize_token(value)
    assert sanitize_token(once) == once


@given(st.text(alphabet=SAFE + "äöü中文", min_size=1, max_size=MAX_TOKEN))
def test_safe_values_pass_through_unchanged(value: str) -> None:
    assert sanitize_token(value) == value


@given(st.text(), st.text(), st.text())
def test_health_subject_always_has_four_tokens_after_the_prefix(host: str, agent: str, target: str) -> None:
    subjects = Subjects("acme.jarvis")
    tokens = subjects.health(host, agent, target).split(".")
    assert len(tokens) == 2 + 4
    assert tokens[:3] == ["acme", "jarvis", "health"]
    assert all(tokens), "no empty token"
    assert not {"*", ">"} & set(tokens)


@given(prefixes, st.text(), st.text(), st.text())
def test_every_subject_builder_keeps_its_token_count(prefix: str, a: str, b: str, c: str) -> None:
    subjects = Subjects(prefix)
    base = len(prefix.split("."))
    built = {
        subjects.metrics(a, b): 3,
        subjects.health(a, b, c): 4,
        subjects.heartbeat(a, b): 3,
        subjects.alerts(a, b, c): 4,
        subjects.notifications(a): 2,
    }
    for subject, count in built.items():
        tokens = subject.split(".")
        assert len(tokens) == base + count, subject
        assert subject.startswith(prefix + ".")
        assert all(t and t not in ("*", ">") for t in tokens), subject


@given(st.text(min_size=MAX_TOKEN + 1), st.text(min_size=MAX_TOKEN + 1))
def test_long_distinct_values_stay_distinct(a: str, b: str) -> None:
    if a != b:
        assert sanitize_token(a) != sanitize_token(b)


@given(st.text(min_size=1), st.text(min_size=1))
@example("a", "b")
@example(".", "_")
def test_long_values_differing_only_in_their_tail_stay_distinct(tail_a: str, tail_b: str) -> None:
    """Two long container names with the same first 200 characters get different tokens."""
    head = "jarvis-backend-" * 14
    if tail_a != tail_b:
        token_a, token_b = sanitize_token(head + tail_a), sanitize_token(head + tail_b)
        assert token_a != token_b
        assert len(token_a) == len(token_b) == MAX_TOKEN


def test_value_of_exactly_max_token_length_is_not_cut() -> None:
    value = "x" * MAX_TOKEN
    assert sanitize_token(value) == value
    assert len(sanitize_token(value + "y")) == MAX_TOKEN
    assert sanitize_token(value + "y") != value


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("web.01", "web_01"),
        ("a b", "a_b"),
        ("*", "_"),
        (">", "_"),
        ("<!channel>", "<!channel_"),
        ("", "_"),
        ("line\nbreak", "line_break"),
        ("tab\there", "tab_here"),
        ("db-primary_2", "db-primary_2"),
        ("Überwachung", "Überwachung"),
    ],
)
def test_hostile_names_become_expected_tokens(value: str, token: str) -> None:
    assert sanitize_token(value) == token


def test_hostile_host_name_stays_inside_its_token() -> None:
    assert Subjects().health("web.01", "probe", "api > *") == "jarvis.health.web_01.probe.api____"
    assert Subjects().metrics("*", ">") == "jarvis.metrics._._"


def test_family_and_everything_wildcards() -> None:
    subjects = Subjects("acme.jarvis")
    assert subjects.family("metrics") == "acme.jarvis.metrics.>"
    assert subjects.everything == "acme.jarvis.>"


def test_default_prefix_is_jarvis() -> None:
    assert Subjects().heartbeat("h", "host") == "jarvis.heartbeat.h.host"


@pytest.mark.parametrize("prefix", ["jarvis", "acme.jarvis", "j-1_x", "A.b.C"])
def test_validate_prefix_accepts_plain_tokens(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "*",
        ">",
        "jarvis.*",
        "jarvis.>",
        "a b",
        " jarvis",
        "jar\tvis",
        "jarvis\n",
        "a..b",
        ".jarvis",
        "jarvis.",
    ],
)
def test_validate_prefix_refuses_wildcards_spaces_and_empty_tokens(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid subject prefix"):
        validate_prefix(prefix)


def test_subjects_refuses_an_invalid_prefix() -> None:
    with pytest.raises(ValueError, match="invalid subject prefix"):
        Subjects("jarvis.>")
