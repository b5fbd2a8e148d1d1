"""check-config names every problem of a file in one run, and knows which metrics exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from jarvis_monitor.cli import main
from jarvis_monitor.commands import EXIT_CONFIG
from jarvis_monitor.config import ConfigError, load_config


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "jarvis.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    return info.value.problems


def test_two_bad_keys_in_one_table_are_both_named(tmp_path: Path) -> None:
    """msgspec stops at the first rule a table breaks; check-config does not."""
    problems = problems_of(tmp_path, '[sinks.report]\ndaily_at = "25:00"\ntimezone = "Mars/Base"\n')
    assert problems == [
        "sinks.report: daily_at '25:00' is not a time HH:MM (00:00 to 23:59)",
        "sinks.report: timezone 'Mars/Base' is not a known IANA time zone",
    ]


def test_a_wrong_value_does_not_hide_a_broken_rule_of_the_same_table(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[sinks.report]\nweekly_on = "mon"\ndaily_at = "7"\nbatch_size = 0\n')
    assert problems == [
        "sinks.report.weekly_on: Invalid enum value 'mon'",
        "sinks.report.batch_size: Expected `int` >= 1",
        "sinks.report: daily_at '7' is not a time HH:MM (00:00 to 23:59)",
    ]


def test_errors_in_two_tables_are_each_named(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[agents.host]\ninterval = "20s"\njitter = "30s"\n[sinks.report]\ndaily_at = "7"\nkeep = 1\n',
    )
    assert problems == [
        "agents.host: jitter must be shorter than interval",
        "sinks.report.keep: unknown key",
        "sinks.report: daily_at '7' is not a time HH:MM (00:00 to 23:59)",
    ]


def test_each_table_of_a_list_is_checked_with_its_index(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[[evaluator.rules]]\nname = "a"\nmetric = "cpu.percent"\nthreshold = "high"\nseverity = "loud"\n'
        '[[evaluator.rules]]\nname = "b"\nmetric = "cpu.percent"\nthreshold = 1\nfour = 4\n'
        '[[sinks.report.services]]\nname = "api"\ncheck = ["api"]\n',
    )
    assert problems == [
        "evaluator.rules[0].threshold: Expected `float | null`, got `str`",
        "evaluator.rules[0].severity: Invalid enum value 'loud'",
        "evaluator.rules[1].four: unknown key",
        "sinks.report.services[0].check: unknown key",
        "sinks.report.services[0]: Object missing required field `checks`",
        "sinks.report.services[0]: Object missing required field `availability_percent`",
        "sinks.report.services[0]: Object missing required field `latency_p95`",
    ]


def test_a_key_set_aside_for_its_own_error_does_not_break_the_rules_of_its_table(tmp_path: Path) -> None:
    """A threshold of the wrong type is one problem, not also a rule without its threshold."""
    problems = problems_of(
        tmp_path, '[[evaluator.rules]]\nname = "a"\nmetric = "cpu.percent"\nthreshold = "9"\n'
    )
    assert problems == ["evaluator.rules[0].threshold: Expected `float | null`, got `str`"]


def test_rules_across_keys_are_still_judged_on_the_whole_table(tmp_path: Path) -> None:
    """A jitter of 15 s is fine with an interval of 20 s written in the same table."""
    path = tmp_path / "ok.toml"
    path.write_text('[agents.host]\ninterval = "20s"\njitter = "15s"\n', encoding="utf-8")
    assert load_config(path, environ={}).agents.host.jitter.seconds == 15


def test_a_rule_on_a_metric_no_agent_publishes_names_the_nearest(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[[evaluator.rules]]\nname = "cpu"\nmetric = "cpu.percent"\nthreshold = 1\n'
        '[[evaluator.rules]]\nname = "typo"\nmetric = "cpu.percnt"\nthreshold = 90\n',
    )
    assert len(problems) == 1
    assert problems[0].startswith("evaluator.rules[1].metric: no agent publishes 'cpu.percnt'; did you mean ")
    assert problems[0].endswith("?")
    assert "cpu.percent" in problems[0]


def test_an_unknown_metric_is_named_beside_the_other_problems_of_the_file(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[agents.host]\nintervall = "10s"\n'
        '[[evaluator.rules]]\nname = "a"\nmetric = "cpu.percent"\nthreshold = "x"\n'
        '[[evaluator.rules]]\nname = "b"\nmetric = "zz.top"\nthreshold = 1\n',
    )
    assert problems[:2] == [
        "agents.host.intervall: unknown key",
        "evaluator.rules[0].threshold: Expected `float | null`, got `str`",
    ]
    assert problems[2].startswith("evaluator.rules[1].metric: no agent publishes 'zz.top'; docs/events.md")


def test_metrics_named_by_the_probes_promql_queries_count_as_published(tmp_path: Path) -> None:
    path = tmp_path / "jarvis.toml"
    path.write_text(
        '[[agents.probe.promql]]\nname = "p95"\nquery = "up"\n'
        '[[agents.probe.promql]]\nname = "rate"\nquery = "up"\nmetric = "jarvis.request_rate"\n'
        '[[evaluator.rules]]\nname = "a"\nmetric = "promql.p95"\nthreshold = 1\n'
        '[[evaluator.rules]]\nname = "b"\nmetric = "jarvis.request_rate"\nthreshold = 1\n',
        encoding="utf-8",
    )
    assert [rule.metric for rule in load_config(path, environ={}).evaluator.rules] == [
        "promql.p95",
        "jarvis.request_rate",
    ]


def test_a_promql_metric_no_query_of_the_config_publishes_is_refused(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[[agents.probe.promql]]\nname = "p95"\nquery = "up"\n'
        '[[evaluator.rules]]\nname = "a"\nmetric = "promql.p99"\nthreshold = 1\n',
    )
    assert problems == [
        "evaluator.rules[0].metric: no agent publishes 'promql.p99'; did you mean promql.p95?"
    ]


def test_health_and_heartbeat_rules_name_no_metric(tmp_path: Path) -> None:
    path = tmp_path / "jarvis.toml"
    path.write_text(
        '[[evaluator.rules]]\nname = "down"\nkind = "health"\n'
        '[[evaluator.rules]]\nname = "silent"\nkind = "heartbeat"\nthreshold = 5\n',
        encoding="utf-8",
    )
    assert len(load_config(path, environ={}).evaluator.rules) == 2


def test_check_config_exits_2_on_an_unknown_metric(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "jarvis.toml"
    path.write_text(
        '[[evaluator.rules]]\nname = "cpu"\nmetric = "cpu.percnt"\nthreshold = 90\n', encoding="utf-8"
    )
    assert main(["check-config", str(path)]) == EXIT_CONFIG
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(
        "evaluator.rules[0].metric: no agent publishes 'cpu.percnt'; did you mean cpu.percent"
    )
