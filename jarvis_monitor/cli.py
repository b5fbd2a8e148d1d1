"""The `jarvis-monitor` command."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bus.units import Duration
from bus.vocabulary import AGENTS
from jarvis_monitor import __version__
from jarvis_monitor.commands import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, run_async, sink_commands
from jarvis_monitor.config import ConfigError, load_config

log = logging.getLogger("jarvis_monitor")

# Each part's own subcommands, by module: its `register` adds parsers that set `handler`. A module
# is imported only for its own commands (and for --help), so `agent host` loads no evaluator or
# sink; the others appear as stubs with the same help, which a test holds equal to the real ones.
EXTENSIONS: dict[str, dict[str, str]] = {
    "jarvis_monitor.evaluator_cli": {
        "evaluator": "run the evaluator against the configured NATS",
        "once": "collect and evaluate once without NATS, print checks and alerts, "
        "exit 0/1/2/3 (ok/warning/critical/unknown) as a Nagios plugin",
        "alerts": "list active alerts: firing, pending, silenced, inhibited, acked",
        "silence": "add, list or expire silences",
        "ack": "acknowledge an alert: no reminders until it resolves",
    },
    "jarvis_monitor.slack_cli": {
        "sink": "run one sink against the configured NATS",
        "notify-test": "send a test notification through the configured Slack; prints ok or the error",
    },
    "jarvis_monitor.report_cli": {
        "report": "write the post-go-live report now from the stored rollups (no NATS needed)",
        "sink": "run one sink against the configured NATS",
    },
    "jarvis_monitor.deadletter_cli": {
        "deadletter": "list, replay or drop what the consumers gave up on, with why",
    },
    "jarvis_monitor.status_cli": {
        "status": "every agent's and part's last heartbeat and counters; exit 1 if one is silent",
    },
    "jarvis_monitor.console_cli": {
        "console": "serve the web console and /metrics (http://127.0.0.1:10201 by default) from NATS",
    },
    "jarvis_monitor.logs_cli": {
        "logs": "search the containers' kept error and warning lines (7 days), as with Loki",
    },
    "jarvis_monitor.discover_cli": {
        "discover": "print the HTTP checks found on Docker's containers (jarvis.check.* labels) as TOML",
    },
}
DEFAULT_INIT_PATH = "jarvis-monitor.toml"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `command`, only the modules that command needs are imported."""
    parser = argparse.ArgumentParser(
        prog="jarvis-monitor",
        description="Event-driven monitoring on NATS: agents publish, an evaluator alerts, sinks deliver.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=os.environ.get("JARVIS_CONFIG"),
        help="TOML config file (default: $JARVIS_CONFIG, else built-in defaults)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="override log_level from the config",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up", help="run the whole stack in one process (embedded NATS unless a URL is configured)"
    )
    up.add_argument("--interval", type=_duration, help="every agent collects this often, as 60s")

    agent = commands.add_parser("agent", help="run one agent against the configured NATS")
    agent.add_argument("name", choices=AGENTS, help="which agent")

    tail = commands.add_parser("tail", help="watch the stream live, one readable line per event")
    tail.add_argument("subject", nargs="?", help="subject filter (default: <prefix>.>)")
    tail.add_argument("--json", action="store_true", help="print each payload as a raw JSON line")
    tail.add_argument("-n", "--count", type=int, metavar="N", help="exit after N messages")

    check = commands.add_parser(
        "check-config", help="check a config file: prints ok, or one line per error (exit 2)"
    )
    check.add_argument("file", nargs="?", help="file to check (default: --config)")

    init = commands.add_parser("init", help="write a commented config documenting every key")
    init.add_argument(
        "path",
        nargs="?",
        default=DEFAULT_INIT_PATH,
        help=f"where to write it, - for stdout (default: {DEFAULT_INIT_PATH})",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    schema = commands.add_parser("schema", help="print the JSON Schema of every event type")
    schema.add_argument(
        "--markdown", action="store_true", help="print the event reference (docs/events.md) instead"
    )
    schema.add_argument(
        "--rules", action="store_true", help="print the built-in rules reference (docs/rules.md) instead"
    )
    for module, names in EXTENSIONS.items():
        if command is None or command in names:
            importlib.import_module(module).register(commands)
            continue
        for name, text in names.items():
            if name == "sink":
                sink_commands(commands)  # the group the sinks' own modules add to
            elif name not in commands.choices:
                commands.add_parser(name, help=text)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` names, found without importing any part (None: none, or --help alone)."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("-c", "--config")
    peek.add_argument("--log-level")
    peek.add_argument("command", nargs="?")
    try:
        known, _ = peek.parse_known_args(argv)
    except SystemExit:  # a malformed option: the real parser says what is wrong
        return None
    command: str | None = known.command
    return command


def _duration(text: str) -> Duration:
    try:
        return Duration.parse(text if text[-1:].isalpha() else f"{text}s")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config
    if path is None:
        print(
            "jarvis-monitor: error: name a file (check-config FILE or --config FILE)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        return EXIT_CONFIG
    print("ok")
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from jarvis_monitor.template import render_config

    text = render_config()
    if args.path == "-":
        sys.stdout.write(text)
        return EXIT_OK
    path = Path(args.path)
    if path.exists() and not args.force:
        print(f"jarvis-monitor: error: {path} exists; use --force to overwrite it", file=sys.stderr)
        return EXIT_FAILURE
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"jarvis-monitor: error: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {path}; check it with: jarvis-monitor check-config {path}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from jarvis_monitor.docs import event_schema, render_events_doc
    from jarvis_monitor.rules_doc import render_rules_doc

    if args.rules:
        sys.stdout.write(render_rules_doc())
    elif args.markdown:
        sys.stdout.write(render_events_doc())
    else:
        print(json.dumps(event_schema(), indent=2))  # cleaned as docs/events.md is
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(chosen_command(argv)).parse_args(argv)
    simple: dict[str, Callable[[argparse.Namespace], int]] = {
        "check-config": cmd_check_config,
        "init": cmd_init,
        "schema": cmd_schema,
    }
    if args.command in simple:
        return simple[args.command](args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"jarvis-monitor: config: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    # tail's output is the point; its connection chatter is not
    quiet = "warning" if args.command == "tail" else config.log_level
    setup_logging(args.log_level or quiet)
    if getattr(args, "handler", None) is not None:
        code: int = args.handler(args, config)
        return code
    from jarvis_monitor import stack

    if args.command == "up":
        from jarvis_monitor.interval import with_agent_interval

        try:
            config = with_agent_interval(config, args.interval) if args.interval else config
        except ConfigError as exc:
            print(f"jarvis-monitor: config: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return run_async(stack.up(config))
    if args.command == "agent":
        return run_async(stack.agent(config, args.name))
    if args.command == "tail":
        from jarvis_monitor.tail import tail

        return run_async(tail(config, args.subject, args.json, args.count))
    raise AssertionError(f"unhandled command {args.command}")
