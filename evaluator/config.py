"""The evaluator's config table: rules, routes, silences' maintenance windows, inhibition."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta


class EvaluatorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: Annotated[bool, Meta(description="run the evaluator in `up`")] = True
