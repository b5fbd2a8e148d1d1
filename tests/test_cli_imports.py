"""Light agents: a command imports only the parts it runs, and --help still lists every command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

import pytest

from jarvis_monitor import cli

# What `agent host` never runs. The config structs of every part are still loaded to validate the
# whole file, and with them (for now) the modules they live in: agents.container (aiodocker),
# agents.postgres (psycopg) and sinks.slack (slack_sdk); see docs/performance.md, "Light agents".
NOT_FOR_A_HOST_AGENT = (
    "evaluator.service",
    "evaluator.engine",
    "evaluator.rules",
    "sinks.report.service",
    "sinks.report.render",
    "sinks.console.service",
    "sinks.console.app",
    "jinja2",
    "sqlite3",
)

START_PATH = textwrap.dedent(
    """
    import json, sys
    from jarvis_monitor import cli, stack
    from jarvis_monitor.config import load_config

    argv = sys.argv[1:]
    args = cli.build_parser(cli.chosen_command(argv)).parse_args(argv)
    stack.make_collector(args.name, load_config(None))  # what `agent` does before it connects
    print(json.dumps(sorted(sys.modules)))
    """
)


def modules_loaded_by(*argv: str) -> set[str]:
    """The modules a fresh interpreter holds after the start path of `jarvis-monitor argv`."""
    done = subprocess.run(
        [sys.executable, "-c", START_PATH, *argv], capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(done.stdout))


def test_agent_host_imports_no_evaluator_sink_or_other_agent() -> None:
    loaded = modules_loaded_by("agent", "host")

    assert "agents.host" in loaded
    found = sorted(m for m in loaded if m in NOT_FOR_A_HOST_AGENT)
    assert found == []


def _commands(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {choice.dest: choice.help for choice in action._choices_actions}
    raise AssertionError("no subcommands")


def test_help_lists_every_command_with_the_help_its_own_module_gives() -> None:
    """The stubs `agent host` sees are the commands every module registers, in the same order."""
    real = _commands(cli.build_parser())

    assert _commands(cli.build_parser("agent")) == real
    assert {"up", "agent", "evaluator", "sink", "report", "status", "console", "discover"} <= set(real)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["-c", "x.toml", "agent", "host"], "agent"),
        (["--log-level", "debug", "sink", "slack"], "sink"),
        (["--config=x.toml", "status", "--json"], "status"),
        (["--help"], None),
        ([], None),
    ],
)
def test_the_command_is_found_before_any_part_is_imported(argv: list[str], command: str | None) -> None:
    assert cli.chosen_command(argv) == command


def test_a_command_of_a_lazily_loaded_module_still_parses_its_own_arguments() -> None:
    args = cli.build_parser("sink").parse_args(["sink", "report"])

    assert (args.command, args.sink) == ("sink", "report")
    assert args.handler is not None
