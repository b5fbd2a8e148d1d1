"""The sinks' config table: each sink's own struct."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from sinks.console.config import ConsoleConfig
from sinks.report.config import ReportSinkConfig
from sinks.slack_config import SlackSinkConfig


class SinksConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    slack: Annotated[SlackSinkConfig, Meta(description="Slack alerts")] = SlackSinkConfig()
    report: Annotated[ReportSinkConfig, Meta(description="the daily report")] = ReportSinkConfig()
    console: Annotated[
        ConsoleConfig, Meta(description="the web console and its /metrics endpoint (http://127.0.0.1:10201)")
    ] = ConsoleConfig()
