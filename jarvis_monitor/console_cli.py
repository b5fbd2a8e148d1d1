"""`jarvis-monitor console`: the web console and /metrics alone, against the configured NATS."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import msgspec

from jarvis_monitor import stack
from jarvis_monitor.commands import EXIT_CONFIG, error, run_async
from sinks.console.config import ConsoleConfigError, resolve_token
from sinks.console.service import console_service

if TYPE_CHECKING:
    from jarvis_monitor.commands import Subparsers
    from jarvis_monitor.config import Config


def register(commands: Subparsers) -> None:
    console = commands.add_parser(
        "console",
        help="serve the web console and /metrics (http://127.0.0.1:10201 by default) from NATS",
    )
    console.add_argument("--bind", metavar="ADDRESS", help="override sinks.console.bind")
    console.add_argument("--port", type=int, metavar="PORT", help="override sinks.console.port")
    console.set_defaults(handler=cmd_console)


def cmd_console(args: argparse.Namespace, config: Config) -> int:
    changes = {key: value for key in ("bind", "port") if (value := getattr(args, key)) is not None}
    try:
        settings = msgspec.structs.replace(config.sinks.console, **changes)
        if not 0 <= settings.port <= 65535:
            raise ConsoleConfigError(f"--port: {settings.port} is not a TCP port")
        resolve_token(settings)  # a public bind without a token never starts
    except ConsoleConfigError as exc:
        error(str(exc))
        return EXIT_CONFIG
    report = config.sinks.report
    return run_async(stack.service(config, "console", lambda bus: console_service(settings, report, bus)))
