"""Report store writes with days kept: the tables clustered by hour against the same tables
clustered by series (layout 0, the baseline), in the same run.

100 hosts of report_fanin's fleet; `--days` of hourly rows stored before (7 by default, the
rows of the first hour copied back). Then two windows of six cycles (60 s each, as commit_every
1m takes them): the first after a restart makes every series' id, the second is the steady write
measured: its CPU and the bytes it appends to the WAL (checkpointed before it).

`python -m tests.bench report_store [--days=7]` (about two minutes).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from sinks.report import intake, model
from sinks.report.layout import SCHEMA
from sinks.report.rollups import RollupStore
from tests.bench.report_fanin import days_kept, fill_history, fleet

HOSTS = 100
CYCLES_PER_WINDOW = 6
# layout 0's clustering, everything else as the current layout: what the baseline differs in
BY_SERIES = (
    SCHEMA.replace("PRIMARY KEY (hour, series)", "PRIMARY KEY (series, hour)").replace(
        "PRIMARY KEY (hour, host, agent, target)", "PRIMARY KEY (host, agent, target, hour)"
    )
    + "CREATE INDEX metric_hour_hour ON metric_hour (hour);\n"
    + "CREATE INDEX health_hour_hour ON health_hour (hour);\n"
)
# a schema no longer spelled as above would make the baseline the layout it is compared with
assert "PRIMARY KEY (series, hour)" in BY_SERIES, "layout 0's metric_hour not rebuilt"
assert "PRIMARY KEY (host, agent, target, hour)" in BY_SERIES, "layout 0's health_hour not rebuilt"


def steady_write(
    path: Path, schema: str | None, days: int, cycles: list[list[tuple[str, bytes, str]]]
) -> tuple[float, int]:
    """CPU seconds and WAL bytes of the steady write with `days` kept; `schema` made first if given."""
    if schema is not None:
        db = sqlite3.connect(path, isolation_level=None)
        db.executescript(schema)
        db.execute("PRAGMA user_version = 1")
        db.close()
    store = RollupStore(path, metrics=model.METRICS_READ)
    for family, payload, subject in cycles[0]:
        store.add(intake.decode(family, payload, subject))
    store.write(store.take(), {})
    store.close()
    fill_history(path, days)
    store = RollupStore(path, metrics=model.METRICS_READ)  # a restart: every series new to the process
    cost, wal = 0.0, 0
    for window in range(2):
        for cycle in cycles[1 + window * CYCLES_PER_WINDOW : 1 + (window + 1) * CYCLES_PER_WINDOW]:
            for family, payload, subject in cycle:
                store.add(intake.decode(family, payload, subject))
        taken = store.take()
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        began = time.process_time()
        store.write(taken, {})
        cost, wal = time.process_time() - began, os.path.getsize(f"{path}-wal")
    store.close()
    return cost, wal


async def run() -> list[tuple[str, str, str]]:
    days = days_kept(sys.argv[1:], "report_store", default=7)
    cycles = [
        [(subject.split(".")[1], payload, subject) for subject, payload in fleet(HOSTS, 1, first=step)]
        for step in range(1 + 2 * CYCLES_PER_WINDOW)
    ]
    messages = sum(len(cycle) for cycle in cycles[1 + CYCLES_PER_WINDOW :])
    with tempfile.TemporaryDirectory() as tmp:
        by_series = steady_write(Path(tmp) / "by-series.sqlite3", BY_SERIES, days, cycles)
        by_hour = steady_write(Path(tmp) / "by-hour.sqlite3", None, days, cycles)
    (old_cpu, old_wal), (cpu, wal) = by_series, by_hour
    return [
        (
            f"report store: a 60 s write, {HOSTS} hosts, {days} days kept, clustered by series (baseline)",
            f"{old_cpu:.2f} s CPU ({old_cpu / messages * 1e6:.1f} us/msg), WAL {old_wal / 2**20:.1f} MB",
            "-",
        ),
        (
            "report store: the same write clustered by hour",
            f"{cpu:.2f} s CPU = {cpu / old_cpu:.2f} x baseline ({cpu / messages * 1e6:.1f} us/msg), "
            f"WAL {wal / 2**20:.1f} MB = {wal / old_wal:.3f} x baseline",
            "less than the baseline",
        ),
    ]
