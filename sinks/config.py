"""The sinks' config table: each sink's own struct."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from sinks.report.config import ReportSinkConfig
from sinks.slack import SlackSinkConfig


class SinksConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    slack: Annotated[SlackSinkConfig, Meta(description="Slack alerts")] = SlackSinkConfig()
    report: Annotated[ReportSinkConfig, Meta(description="the daily report")] = ReportSinkConfig()
