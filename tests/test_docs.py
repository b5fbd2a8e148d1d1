"""docs/events.md is the same text whatever the installed msgspec does with docstrings."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluator.rules import DEFAULT_RULES
from jarvis_monitor import docs
from jarvis_monitor.rules_doc import render_rules_doc


def test_descriptions_are_cleaned_as_inspect_cleandoc_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """msgspec before 0.23 kept a docstring's indent, 0.23 strips it: the docs must not care."""
    raw = {
        "$defs": {
            "Sample": {
                "description": "One line.\n\n    More, indented as in the source.\n    ",
                "properties": {"description": {"type": "string", "description": "kept as it is"}},
            }
        }
    }
    monkeypatch.setattr(docs, "json_schema", lambda: raw)
    assert docs.event_schema() == {
        "$defs": {
            "Sample": {
                "description": "One line.\n\nMore, indented as in the source.",
                "properties": {"description": {"type": "string", "description": "kept as it is"}},
            }
        }
    }


def test_a_field_called_description_keeps_its_schema() -> None:
    """Alert has a `description` field: only description texts are cleaned, never a property."""
    schema = docs.event_schema()
    alert = schema["$defs"]["Alert"]  # type: ignore[index]
    assert alert["properties"]["description"]["type"] == "string"


def test_the_rules_doc_is_generated_from_the_built_in_rules() -> None:
    """docs/rules.md lists every built-in rule, inhibition and route as the code defines them."""
    text = (Path(__file__).parents[1] / "docs" / "rules.md").read_text()
    assert text == render_rules_doc(), "regenerate: jarvis-monitor schema --rules > docs/rules.md"
    for rule in DEFAULT_RULES:
        assert f"| `{rule.name}` |" in text


def test_the_rules_doc_names_each_rules_condition_and_timers() -> None:
    text = render_rules_doc()
    assert "| `cpu_usage_high` | `cpu.percent > 90`; resolves past `85` | 5m | 0s | warning |" in text
    assert "| `agent_down` | no heartbeat for 3 of the agent's intervals | 0s | 0s | critical |" in text
