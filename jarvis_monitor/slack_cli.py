"""The Slack sink's subcommands: sink slack, notify-test."""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING

from jarvis_monitor import stack
from jarvis_monitor.commands import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, error, run_async, sink_commands
from sinks.slack import (
    SlackConfigError,
    SlackSink,
    SlackSinkConfig,
    format_options,
    make_transport,
    resolve_secrets,
    runbook_test_notification,
)
from sinks.slack_delivery import DeliveryError
from sinks.slack_format import render

if TYPE_CHECKING:
    from jarvis_monitor.commands import Subparsers
    from jarvis_monitor.config import Config


def register(commands: Subparsers) -> None:
    """Add this part's subcommands to `commands`."""
    slack = sink_commands(commands).add_parser(
        "slack", help="deliver notifications to Slack (or the console when none is configured)"
    )
    slack.set_defaults(handler=cmd_sink_slack)
    notify = commands.add_parser(
        "notify-test", help="send a test notification through the configured Slack; prints ok or the error"
    )
    notify.set_defaults(handler=cmd_notify_test)


def cmd_sink_slack(args: argparse.Namespace, config: Config) -> int:
    try:
        resolve_secrets(config.sinks.slack)  # a bad secret file fails before connecting
    except SlackConfigError as exc:
        error(str(exc))
        return EXIT_CONFIG
    return run_async(stack.service(config, "sink slack", lambda bus: SlackSink(config.sinks.slack, bus)))


async def notify_test(config: SlackSinkConfig, host: str) -> int:
    """Send the test notification once through the configured mode; print ok or the reason."""
    secrets = resolve_secrets(config, os.environ)
    transport = make_transport(config, secrets)
    if transport is None:
        error("no Slack configured: set SLACK_WEBHOOK_URL or SLACK_BOT_TOKEN (or sinks.slack.*_file)")
        return EXIT_FAILURE
    message = render(runbook_test_notification(host, time.time()), format_options(config))
    try:
        await transport.post(transport.channel_for("default"), message)
    except DeliveryError as exc:
        error(f"Slack ({secrets.mode}) refused the test notification: {exc.reason}")
        return EXIT_FAILURE
    finally:
        await transport.close()
    print(f"ok: test notification sent ({secrets.mode})")
    return EXIT_OK


def cmd_notify_test(args: argparse.Namespace, config: Config) -> int:
    try:
        return run_async(notify_test(config.sinks.slack, config.agents.resolved_hostname()))
    except SlackConfigError as exc:
        error(str(exc))
        return EXIT_CONFIG
