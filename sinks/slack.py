"""The Slack sink (slack-sdk): notifications from the bus, delivered once each, in order per group."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta


class SlackSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: Annotated[bool, Meta(description="run the Slack sink in `up`")] = True
