"""The report sink's subcommands: `report` (write a report now) and `sink report` (run the sink)."""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jarvis_monitor import stack
from jarvis_monitor.commands import EXIT_FAILURE, EXIT_OK, error, run_async, sink_commands
from sinks.report.model import Report
from sinks.report.render import produce
from sinks.report.rollups import STORE_FILE, RollupStore
from sinks.report.service import ReportSink, out_dir_of

if TYPE_CHECKING:
    from bus.connection import Bus
    from jarvis_monitor.commands import Subparsers
    from jarvis_monitor.config import Config


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r}: write it as YYYY-MM-DD") from None


def register(commands: Subparsers) -> None:
    """Add this part's subcommands to `commands`."""
    report = commands.add_parser(
        "report",
        help="write the post-go-live report now from the stored rollups (no NATS needed)",
    )
    report.add_argument(
        "--date",
        type=_date,
        metavar="YYYY-MM-DD",
        help="the day (or last day of the week); default: today so far",
    )
    report.add_argument(
        "--period", choices=("day", "week"), default="day", help="one day or the 7 days ending --date"
    )
    report.add_argument(
        "--out", metavar="DIR", help="write to DIR/reports/post-golive (default: sinks.report.out_dir)"
    )
    report.set_defaults(handler=cmd_report)
    sink = sink_commands(commands).add_parser(
        "report", help="run the report sink: consume events and write the daily report"
    )
    sink.set_defaults(handler=cmd_sink_report)


def _summary(report: Report) -> str:
    s = report.summary
    availability = "no data" if s.availability_percent is None else f"{s.availability_percent:.3f}%"
    return (
        f"status {s.status}, availability {availability}, {s.incidents} incidents, "
        f"{s.sla_breaches} SLA breaches, {len(report.recommendations)} recommendations"
    )


def cmd_report(args: argparse.Namespace, config: Config) -> int:
    sink = config.sinks.report
    data_dir = config.resolved_data_dir()
    out_dir = out_dir_of(sink, data_dir) if args.out is None else Path(args.out)
    now = time.time()
    day = args.date or dt.datetime.fromtimestamp(now, sink.zone).date()
    path = data_dir / STORE_FILE
    try:
        if path.exists():
            store = RollupStore(path, readonly=True)
        else:
            print(
                f"jarvis-monitor: warning: no rollups at {path} yet; the report will be empty",
                file=sys.stderr,
            )
            store = RollupStore.empty()
        try:
            report, paths = produce(store, sink, args.period, day, out_dir, now)
        finally:
            store.close()
    except sqlite3.Error as exc:
        error(f"cannot read {path}: {exc}")
        return EXIT_FAILURE
    except OSError as exc:
        error(f"cannot write the report: {exc}")
        return EXIT_FAILURE
    for written in paths:
        print(written)
    print(_summary(report))
    return EXIT_OK


def open_sink(config: Config, bus: Bus) -> ReportSink:
    """The report sink, its store opened: run alone, a sink that cannot keep rollups is an error."""
    sink = ReportSink(config.sinks.report, bus, config.resolved_data_dir())
    try:
        sink.open()
    except sqlite3.Error as exc:
        raise OSError(f"cannot open {sink.store_path}: {exc}") from None
    return sink


def cmd_sink_report(args: argparse.Namespace, config: Config) -> int:
    return run_async(stack.service(config, "sink report", lambda bus: open_sink(config, bus)))
