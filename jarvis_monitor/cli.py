"""The `jarvis-monitor` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bus.units import Duration
from jarvis_monitor import (
    __version__,
    console_cli,
    deadletter_cli,
    discover_cli,
    evaluator_cli,
    logs_cli,
    report_cli,
    slack_cli,
    stack,
    status_cli,
)
from jarvis_monitor.commands import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, run_async
from jarvis_monitor.config import ConfigError, load_config
from jarvis_monitor.docs import event_schema, render_events_doc
from jarvis_monitor.interval import with_agent_interval
from jarvis_monitor.rules_doc import render_rules_doc
from jarvis_monitor.tail import tail
from jarvis_monitor.template import render_config

log = logging.getLogger("jarvis_monitor")

# Each part's own subcommands; each module's `register` adds parsers that set `handler`.
EXTENSIONS = (
    evaluator_cli,
    slack_cli,
    report_cli,
    deadletter_cli,
    status_cli,
    console_cli,
    logs_cli,
    discover_cli,
)
DEFAULT_INIT_PATH = "jarvis-monitor.toml"


def build_parser() -> argparse.ArgumentParser:
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
    agent.add_argument("name", choices=stack.AGENT_NAMES, help="which agent")

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
    for extension in EXTENSIONS:
        extension.register(commands)
    return parser


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
    if args.rules:
        sys.stdout.write(render_rules_doc())
    elif args.markdown:
        sys.stdout.write(render_events_doc())
    else:
        print(json.dumps(event_schema(), indent=2))  # cleaned as docs/events.md is
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    if args.command == "up":
        try:
            config = with_agent_interval(config, args.interval) if args.interval else config
        except ConfigError as exc:
            print(f"jarvis-monitor: config: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return run_async(stack.up(config))
    if args.command == "agent":
        return run_async(stack.agent(config, args.name))
    if args.command == "tail":
        return run_async(tail(config, args.subject, args.json, args.count))
    raise AssertionError(f"unhandled command {args.command}")
