"""What every subcommand shares: exit codes, running a coroutine with one-line errors, registration."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import nats.errors

from bus.connection import BusConfigError, BusUnavailableError
from bus.server import ServerError

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def error(message: str) -> None:
    print(f"jarvis-monitor: error: {message}", file=sys.stderr)


def run_async(coro: Coroutine[Any, Any, int | None]) -> int:
    """Run `coro`; the usual failures (no NATS, no server, a refused file) are one line and exit 1."""
    try:
        code = asyncio.run(coro)
    except (ServerError, BusUnavailableError, BusConfigError) as exc:
        error(str(exc))
        return EXIT_FAILURE
    except nats.errors.BadSubjectError:
        error("invalid subject filter (tokens separated by '.', no spaces)")
        return EXIT_FAILURE
    except OSError as exc:  # the machine refused something (a directory, a file): one line, no traceback
        error(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK if code is None else code


def sink_commands(commands: Subparsers) -> Subparsers:
    """The `sink` group's own subcommands (`sink slack`, `sink report`), created by whoever comes first."""
    parser = commands.choices.get("sink")
    if parser is None:
        parser = commands.add_parser("sink", help="run one sink against the configured NATS")
        parser.add_subparsers(dest="sink", required=True, metavar="SINK")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise AssertionError("the sink parser has no subcommands")
