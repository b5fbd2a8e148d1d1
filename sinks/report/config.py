"""The report sink's config table."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta


class ReportSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: Annotated[bool, Meta(description="run the report sink in `up`")] = True
