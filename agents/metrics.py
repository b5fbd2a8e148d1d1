"""Metric declarations: every metric an agent emits is declared beside it with unit and meaning."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    """One metric: dotted lower-case name, unit, meaning and the labels it carries."""

    name: str
    unit: str
    description: str
    labels: tuple[str, ...] = ()


def catalog(*specs: MetricSpec) -> dict[str, MetricSpec]:
    """Index specs by name, refusing duplicates so one name never means two things."""
    by_name: dict[str, MetricSpec] = {}
    for spec in specs:
        if spec.name in by_name:
            raise ValueError(f"metric {spec.name} declared twice")
        by_name[spec.name] = spec
    return by_name
