"""Evaluator config validation, matchers, silences and maintenance window arithmetic."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from bus.units import Duration, dec_hook
from evaluator.config import EvaluatorConfig, MaintenanceWindow, Matcher, Route, Rule, ignore_for
from evaluator.rules import DEFAULT_RULES, effective_rules
from evaluator.silences import Silence, parse_matcher, window_state


def load(document: dict[str, Any]) -> EvaluatorConfig:
    return msgspec.convert(document, EvaluatorConfig, dec_hook=dec_hook)


def test_no_config_gives_the_runbook_rules() -> None:
    rules = {rule.name: rule for rule in effective_rules(load({}))}
    assert rules["disk_usage_high"].threshold == 85
    assert rules["disk_usage_high"].severity == "critical"
    assert rules["memory_usage_high"].threshold == 85
    assert rules["cpu_usage_high"].threshold == 90
    assert rules["http_error_rate_high"].threshold == 0.05
    assert rules["http_latency_p95_high"].threshold == 2
    assert rules["performance_degradation"].for_ == Duration(900)
    assert rules["agent_down"].kind == "heartbeat"
    assert rules["agent_down"].threshold == 3
    assert len(rules) == len(DEFAULT_RULES)


def test_a_rule_from_toml_like_data_with_for_and_matchers() -> None:
    config = load(
        {
            "rules": [
                {
                    "name": "root_full",
                    "metric": "disk.percent",
                    "threshold": 95,
                    "for": "2m",
                    "matchers": [{"name": "mount", "value": "/"}],
                    "severity": "critical",
                }
            ]
        }
    )
    assert config.rules[0].for_ == Duration(120)
    assert msgspec.to_builtins(config.rules[0], enc_hook=str)["for"] == "2m"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "metric": "m",
                        "threshold": 1,
                        "matchers": [{"name": "a", "op": "=~", "value": "("}],
                    }
                ]
            },
            "invalid regex '\\('",
        ),
        (
            {"rules": [{"name": "x", "metric": "m", "threshold": 1, "op": "=>"}]},
            "Invalid enum value '=>' - at `\\$.rules\\[0\\].op`",
        ),
        ({"rules": [{"name": "maintenance", "metric": "m", "threshold": 1}]}, "reserved"),
        (
            {
                "rules": [
                    {"name": "x", "metric": "m", "threshold": 1},
                    {"name": "x", "metric": "n", "threshold": 2},
                ]
            },
            "duplicate rule names: x",
        ),
        ({"rules": [{"name": "x", "threshold": 1}]}, "needs `metric`"),
        ({"rules": [{"name": "x", "metric": "m", "threshold": 5, "clear_threshold": 6}]}, "must not exceed"),
        (
            {"rules": [{"name": "x", "metric": "m", "threshold": 5, "summary": "{value.__class__}"}]},
            "not a plain name",
        ),
        ({"rules": [{"name": "x", "kind": "health", "events": ["deployed"]}]}, "keep_firing_for"),
        ({"rules": [{"name": "x", "metric": "m", "threshold": 1, "labels": {"rule": "y"}}]}, "reserved"),
        ({"routes": [{"name": "a.b", "receiver": "#x"}]}, "subject token"),
        ({"routes": [{"name": "default", "receiver": "#x"}]}, "duplicate route names: default"),
        ({"maintenance_windows": [{"name": "w", "start": "25:00", "end": "01:00"}]}, "HH:MM"),
        (
            {
                "maintenance_windows": [
                    {"name": "w", "start": "01:00", "end": "02:00", "timezone": "Mars/Base"}
                ]
            },
            "unknown time zone",
        ),
        ({"flapping": {"low": 40, "high": 30}}, "low < high"),
    ],
)
def test_config_errors_are_clear_value_errors(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load(document)


def test_structs_built_in_code_are_validated_too() -> None:
    with pytest.raises(ValueError, match="unknown matcher operator '~~'"):
        Matcher(name="host", op="~~", value="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown operator '=>'"):
        Rule(name="x", metric="m", threshold=1, op="=>")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate rule names"):
        EvaluatorConfig(rules=[Rule(name="x", metric="m", threshold=1)] * 2)
    with pytest.raises(ValueError, match="no matchers or severity"):
        EvaluatorConfig(default_route=Route(name="default", receiver="#x", severity=["critical"]))
    with pytest.raises(ValueError, match="route 'ops': invalid group_by label 'a b'"):
        Route(name="ops", receiver="#x", group_by=["a b"])


def test_ignore_for_zeroes_every_for_and_keeps_the_rules() -> None:
    config = ignore_for(EvaluatorConfig())
    assert not config.default_rules
    assert [r.name for r in config.rules] == [r.name for r in DEFAULT_RULES]
    assert all(r.for_ == Duration(0) for r in config.rules)


@pytest.mark.parametrize(
    ("text", "name", "op", "value"),
    [
        ("host=web01", "host", "=", "web01"),
        ("rule=~disk.*", "rule", "=~", "disk.*"),
        ("severity!=info", "severity", "!=", "info"),
        ('mount!~"/boot.*"', "mount", "!~", "/boot.*"),
        (" host = web 01 ", "host", "=", "web 01"),
        ("url=http://x/?a=b", "url", "=", "http://x/?a=b"),
    ],
)
def test_parse_matcher(text: str, name: str, op: str, value: str) -> None:
    assert parse_matcher(text) == Matcher(name=name, op=op, value=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "host", "=web01", "9host=x", "host=~("])
def test_parse_matcher_refuses_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        parse_matcher(text)


def test_regex_matchers_are_fully_anchored() -> None:
    matcher = parse_matcher("host=~web0[12]")
    assert matcher.matches_value("web01")
    assert not matcher.matches_value("web012")
    assert not matcher.matches_value("xweb01")
    assert parse_matcher("team!~ops|dev").matches_value("")


def test_silence_activity_and_matching() -> None:
    silence = Silence(
        id="1", matchers=[parse_matcher("host=web01")], starts_at=100, ends_at=200, author="a", comment="c"
    )
    assert not silence.active(99)
    assert silence.active(100)
    assert not silence.active(200)
    assert silence.matches({"host": "web01", "rule": "cpu"})
    assert not silence.matches({"host": "web02"})
    empty = Silence(id="2", matchers=[], starts_at=0, ends_at=1e12, author="a", comment="c")
    assert not empty.matches({"host": "web01"}), "a silence without matchers mutes nothing"


def ts(zone: str, year: int, month: int, day: int, hour: int, minute: int) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()


def test_window_crossing_midnight_belongs_to_the_day_it_starts() -> None:
    window = MaintenanceWindow(
        name="w", days=["fri"], start="22:00", end="02:00", timezone="America/New_York"
    )
    zone = "America/New_York"
    assert window_state(window, ts(zone, 2026, 11, 27, 21, 59)) == (False, ts(zone, 2026, 11, 27, 22, 0))
    assert window_state(window, ts(zone, 2026, 11, 28, 1, 59)) == (True, ts(zone, 2026, 11, 28, 2, 0))
    assert window_state(window, ts(zone, 2026, 11, 28, 23, 0))[0] is False  # Saturday night: not a Friday
    assert window_state(window, ts(zone, 2026, 11, 27, 1, 0))[0] is False  # Friday 01:00: Thursday's window


def test_window_follows_daylight_saving_time() -> None:
    window = MaintenanceWindow(name="w", days=["sun"], start="03:30", end="04:00", timezone="Europe/Berlin")
    # 2026-03-29: clocks jump from 02:00 to 03:00; the window still opens at 03:30 local (01:30 UTC)
    assert window_state(window, ts("UTC", 2026, 3, 29, 1, 45))[0] is True
    assert window_state(window, ts("UTC", 2026, 3, 22, 2, 45))[0] is True  # a week before: UTC+1
    assert window_state(window, ts("UTC", 2026, 3, 22, 1, 45))[0] is False


def test_tuning_a_built_in_by_name_changes_only_the_fields_given() -> None:
    config = load({"tune": {"cpu_usage_high": {"threshold": 95, "for": "10m", "labels": {"team": "ops"}}}})
    tuned = {rule.name: rule for rule in effective_rules(config)}["cpu_usage_high"]
    builtin = {rule.name: rule for rule in DEFAULT_RULES}["cpu_usage_high"]
    assert (tuned.threshold, tuned.for_, tuned.labels) == (95, Duration(600), {"team": "ops"})
    assert msgspec.structs.replace(tuned, threshold=90, for_=builtin.for_, labels={}) == builtin


def test_a_tuned_built_in_can_be_turned_off_alone() -> None:
    names = [rule.name for rule in effective_rules(load({"tune": {"cpu_usage_high": {"enabled": False}}}))]
    assert "cpu_usage_high" not in names
    assert "memory_usage_high" in names


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"cpu_usge_high": {"threshold": 95}}, "tune.cpu_usge_high: no built-in rule of that name "),
        ({"cpu_usge_high": {"threshold": 95}}, "did you mean cpu_usage_high"),
        ({"memory_usage_high": {"clear_threshold": 99}}, "clear_threshold 99.0 must not exceed threshold 85"),
        ({"service_down": {"threshold": 3}}, "a health rule matches `status`"),
    ],
)
def test_a_bad_tuning_is_refused_with_the_rule_named(tune: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        load({"tune": tune})


def test_a_bad_tuning_field_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `treshold`"):
        load({"tune": {"cpu_usage_high": {"treshold": 95}}})
