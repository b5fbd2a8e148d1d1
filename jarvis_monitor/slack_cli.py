"""The Slack sink's subcommands: sink slack, notify-test."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jarvis_monitor.commands import Subparsers


def register(commands: Subparsers) -> None:
    """Add this part's subcommands to `commands`."""
