"""One vocabulary on the wire: what rules and the report read is what the agents declare."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from agents.container import ContainerCollector
from agents.host import HostCollector
from agents.postgres import PostgresCollector
from agents.probe import ProbeCollector
from bus import vocabulary
from evaluator.rules import DEFAULT_RULES
from sinks.report.model import METRICS_READ

METRIC_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")
BUS = Path(__file__).parents[1] / "bus"
OURS = ("agents", "evaluator", "sinks", "jarvis_monitor", "tests")


def test_every_metric_a_built_in_rule_reads_is_declared_by_an_agent() -> None:
    """A built-in rule on a metric no agent publishes could never fire."""
    read = {rule.name: rule.metric for rule in DEFAULT_RULES if rule.kind == "metrics"}
    assert read, "no built-in metrics rule to check"
    undeclared = {
        name: metric for name, metric in read.items() if metric not in vocabulary.declared_metrics()
    }
    assert not undeclared


def test_every_metric_the_report_reads_is_declared_by_an_agent() -> None:
    undeclared = set(METRICS_READ) - vocabulary.declared_metrics()
    assert not undeclared


def test_every_metric_name_in_the_vocabulary_has_its_spec() -> None:
    """A name constant without a spec would be published undocumented (docs/events.md lists specs)."""
    names = {
        value
        for key, value in vars(vocabulary).items()
        if key.isupper() and isinstance(value, str) and METRIC_NAME.fullmatch(value)
    }
    assert names == vocabulary.declared_metrics()


def test_each_metric_is_declared_by_one_agent_only() -> None:
    catalogues = list(vocabulary.AGENT_METRICS.values())
    assert sum(len(c) for c in catalogues) == len({name for c in catalogues for name in c})


def test_each_agent_publishes_under_its_declared_name() -> None:
    """The subject token of each collector is the agent name rules and the report match on."""
    collectors = (HostCollector, ContainerCollector, ProbeCollector, PostgresCollector)
    assert tuple(c.name for c in collectors) == vocabulary.AGENTS


@pytest.mark.parametrize("path", sorted(BUS.glob("*.py")), ids=lambda p: p.name)
def test_bus_imports_nothing_of_ours(path: Path) -> None:
    """The wire is the bottom layer: every other part imports it, it imports none of them."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
    assert [m for m in modules if m.split(".")[0] in OURS] == []
