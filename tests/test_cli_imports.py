"""Light agents: a command imports only the parts it runs, and --help still lists every command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

import pytest

from jarvis_monitor import cli

# What no agent runs: the evaluator, the sinks and their libraries.
NOT_FOR_ANY_AGENT = (
    "evaluator.service",
    "evaluator.engine",
    "evaluator.rules",
    "evaluator.watchdog",
    "sinks.slack",
    "sinks.report.service",
    "sinks.report.render",
    "sinks.console.service",
    "sinks.console.app",
    "slack_sdk",
    "jinja2",
    "sqlite3",
)
# Each agent's own module, and the other agents' libraries it never needs. `aiohttp.client` stands for
# aiohttp itself: nats-py's `import aiohttp` is deferred (bus/deferred.py) and executes nothing.
AGENTS = {
    "host": ("agents.host", ("aiohttp.client", "aiodocker", "psycopg", "prometheus_client")),
    "container": ("agents.container", ("psutil", "psycopg", "prometheus_client")),
    "probe": ("agents.probe", ("psutil", "psycopg")),
    "postgres": ("agents.postgres", ("aiohttp.client", "aiodocker", "psutil", "prometheus_client")),
}
OTHER_AGENTS = {name: {module for other, (module, _) in AGENTS.items() if other != name} for name in AGENTS}

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


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_an_agent_imports_only_what_it_runs(name: str) -> None:
    """Loading the whole config and making the collector loads no evaluator, sink or other agent."""
    own, foreign = AGENTS[name]
    loaded = modules_loaded_by("agent", name)

    assert own in loaded
    found = sorted(loaded & {*NOT_FOR_ANY_AGENT, *foreign, *OTHER_AGENTS[name]})
    assert found == []


DEFERRED = textwrap.dedent(
    """
    import sys
    import bus.connection
    import nats.aio.transport
    before = "aiohttp.client" in sys.modules
    from aiohttp import web
    import aiohttp
    print(before, nats.aio.transport.aiohttp.ClientSession is aiohttp.ClientSession, web.Application.__name__)
    """
)


def test_aiohttp_is_executed_only_when_used_and_then_is_the_real_module() -> None:
    done = subprocess.run(
        [sys.executable, "-c", DEFERRED], capture_output=True, text=True, timeout=60, check=True
    )

    assert done.stdout.split() == ["False", "True", "Application"]


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
