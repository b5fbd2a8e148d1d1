"""The mute stage: silences, maintenance windows and inhibition, each alone on an injected clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import pytest

from bus.events import Alert
from bus.records import too_costly
from evaluator.config import InhibitRule, MaintenanceWindow, Matcher
from evaluator.mute import Inhibitor, MaintenanceWindows, Muter, MuteStage, Silences
from evaluator.silences import Silence, parse_matcher

WEB01 = {"host": "web01", "rule": "cpu_usage_high", "severity": "warning"}


def silence(id_: str, matcher: str, starts: float, ends: float) -> Silence:
    return Silence(
        id=id_, matchers=[parse_matcher(matcher)], starts_at=starts, ends_at=ends, author="ops", comment=""
    )


def test_a_silence_mutes_matching_labels_only_between_its_start_and_end() -> None:
    silences = Silences([silence("s1", "host=web01", 100, 200)])
    assert silences.mutes(WEB01, 99) == []
    assert silences.mutes(WEB01, 100) == ["s1"]
    assert silences.mutes({**WEB01, "host": "web02"}, 150) == []
    assert silences.mutes(WEB01, 200) == []
    assert silences.next_boundary(0) == 100
    assert silences.next_boundary(150) == 200
    assert silences.next_boundary(200) is None


@pytest.mark.timeout(60)  # Python's backtracking would take longer than the universe's age
def test_a_silence_regex_that_backtracks_forever_in_python_is_matched_at_once() -> None:
    """`(a+)+!` against 60 a's: 2^60 ways to split them for a backtracking engine, which would
    stall the evaluator and every notification with it; RE2 reads the value once."""
    silences = Silences(
        [silence("s1", "container=~(a+)+!", 0, 100), silence("s2", "host=~web0[1-3]", 0, 100)]
    )
    assert silences.mutes({**WEB01, "container": "a" * 60}, 50) == ["s2"]
    assert silences.mutes({**WEB01, "container": "a" * 60 + "!"}, 50) == ["s1", "s2"]
    assert silences.mutes({**WEB01, "host": "web04"}, 50) == []


@pytest.mark.parametrize(
    ("matcher", "problem"),
    [
        ("host=~(?=web)web01", "invalid regex '(?=web)web01': invalid perl operator: (?="),
        ("host=~(web)\\1", "invalid regex '(web)\\\\1': invalid escape sequence: \\1"),
        ("host=~web[", "invalid regex 'web[': missing ]: ["),
    ],
)
def test_a_regex_outside_prometheus_syntax_is_refused_with_what_is_wrong(matcher: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid regex") as refused:
        parse_matcher(matcher)
    assert str(refused.value) == problem


def test_a_new_silences_regex_too_costly_is_refused_but_a_kept_one_still_reads() -> None:
    costly = parse_matcher("host=~[ab]*a[ab]{400}c")  # a rule, a window or a stored silence: read
    assert too_costly([costly]) == (
        "the regex '[ab]*a[ab]{400}c' is too complex (RE2 program size 407, at most 300); "
        "split it into several silences"
    )
    assert too_costly([parse_matcher("host=~" + "a" * 4097)]) == (
        f"the regex {'a' * 40!r}... is longer than 4096 characters"
    )
    hosts = parse_matcher("host=~" + "|".join(f"jarvis-worker-{n:03d}" for n in range(60)))
    assert too_costly([hosts, parse_matcher("rule=disk")]) is None


def test_a_silence_without_matchers_mutes_nothing() -> None:
    empty = Silence(id="s", matchers=[], starts_at=0, ends_at=100, author="", comment="")
    assert Silences([empty]).mutes(WEB01, 50) == []


def test_a_maintenance_window_mutes_while_open_in_its_time_zone_but_never_its_own_announcement() -> None:
    window = MaintenanceWindow(
        name="nightly",
        start="02:00",
        end="02:30",
        timezone="Europe/Berlin",
        matchers=[Matcher(name="host", value="web01")],
    )
    windows = MaintenanceWindows([window])
    berlin = dt.timezone(dt.timedelta(hours=1))  # December: CET
    opens = dt.datetime(2026, 12, 1, 2, 0, tzinfo=berlin).timestamp()
    assert windows.update("nightly", opens - 1) == (False, opens)
    assert windows.mutes(WEB01, opens - 1) == []
    changed, closes = windows.update("nightly", opens)
    assert changed
    assert closes == opens + 1800
    assert windows.mutes(WEB01, opens) == ["maintenance:nightly"]
    assert windows.mutes({**WEB01, "host": "db01"}, opens) == []
    assert windows.mutes({"rule": "maintenance", "window": "nightly"}, opens) == []
    assert windows.update("nightly", opens + 1800)[0]
    assert windows.mutes(WEB01, opens + 1800) == []


def firing(fingerprint: str, **labels: str) -> Alert:
    return Alert(
        fingerprint=fingerprint,
        rule=labels["rule"],
        severity="critical",
        status="firing",
        labels=labels,
        summary="",
        starts_at=0,
    )


def test_inhibition_mutes_targets_sharing_the_equal_labels_and_never_the_source_itself() -> None:
    rule = InhibitRule(
        source_matchers=[Matcher(name="rule", value="agent_down")],
        target_matchers=[Matcher(name="rule", op="!=", value="disk")],
        equal=["host"],
    )
    sources = [firing("fp-down", rule="agent_down", host="web01")]
    inhibitor = Inhibitor([rule], lambda: sources)
    assert inhibitor.mutes(WEB01, 0) == ["fp-down"]
    assert inhibitor.mutes({**WEB01, "host": "web02"}, 0) == []
    assert inhibitor.mutes({"rule": "disk", "host": "web01"}, 0) == [], "not a target"
    assert inhibitor.mutes({"rule": "agent_down", "host": "web01"}, 0) == [], "a source never mutes itself"


def test_alerts_matching_both_sides_of_a_rule_never_mute_each_other_but_one_sided_sources_mute_them() -> None:
    rule = InhibitRule(  # "a critical mutes the rest of its host": criticals match both sides
        source_matchers=[Matcher(name="severity", value="critical")],
        target_matchers=[],
        equal=["host"],
    )
    api = {"host": "web01", "rule": "service_down", "check": "api", "severity": "critical"}
    web = {**api, "check": "web"}
    sources = [firing("fp-api", **api), firing("fp-web", **web)]
    inhibitor = Inhibitor([rule], lambda: sources)
    assert inhibitor.mutes(api, 0) == [], "two services down on one host: both are notified"
    assert inhibitor.mutes(web, 0) == []
    assert inhibitor.mutes(WEB01, 0) == ["fp-api", "fp-web"], "the warning of their host is muted"
    one_sided = InhibitRule(
        source_matchers=[Matcher(name="rule", value="agent_down")],
        target_matchers=[Matcher(name="severity", value="critical")],
        equal=["host"],
    )
    sources.append(firing("fp-down", rule="agent_down", host="web01", severity="warning"))
    both = Inhibitor([rule, one_sided], lambda: sources)
    assert both.mutes(api, 0) == ["fp-down"], "a source not matching the target side still mutes"


def test_inhibition_follows_the_firing_set_once_invalidated() -> None:
    rule = InhibitRule(source_matchers=[Matcher(name="rule", value="agent_down")], target_matchers=[])
    sources: list[Alert] = []
    inhibitor = Inhibitor([rule], lambda: sources)
    assert inhibitor.mutes(WEB01, 0) == []
    sources.append(firing("fp", rule="agent_down", host="x"))
    inhibitor.invalidate()
    assert inhibitor.mutes(WEB01, 0) == ["fp"]


def test_the_stage_asks_every_muter_and_keeps_silences_apart_from_inhibitions() -> None:
    class Always:
        def __init__(self, ref: str) -> None:
            self.ref = ref

        def mutes(self, labels: Mapping[str, str], now: float) -> list[str]:
            return [self.ref] if labels.get("host") == "web01" else []

    silencer: Muter = Always("s1")
    stage = MuteStage([Silences(), silencer], [Always("fp")])
    assert stage.mutes(WEB01, 0)
    assert stage.silenced_by(WEB01, 0) == ["s1"]
    assert stage.inhibited_by(WEB01, 0) == ["fp"]
    assert not stage.mutes({"host": "web02"}, 0)
