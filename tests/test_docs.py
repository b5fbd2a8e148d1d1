"""docs/events.md is the same text whatever the installed msgspec does with docstrings."""

from __future__ import annotations

import pytest

from jarvis_monitor import docs


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
