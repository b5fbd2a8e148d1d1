"""Idle CPU of `jarvis-monitor up` against Debian's node_exporter + Prometheus + Alertmanager, same window.

`python -m tests.bench idle_cpu [--warmup=30] [--window=60]`: `up` runs the config `jarvis-monitor init`
writes (host and probe agents, evaluator, Slack sink printing to its log, report sink, console,
embedded nats-server) with only the ports, the data dir and the container agent (no Docker here)
changed; beside it node_exporter, Prometheus scraping it and itself every 15 s and evaluating three
node rules, and Alertmanager, each with its own temp data dir on loopback ports; and the same
nats-server alone with JetStream and one stream, no client: the floor under `up`'s server. After
the warm-up, each process tree's CPU seconds and voluntary context switches (how often it went to
sleep: its wakeups) are read over the same window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
import psutil

from bus.server import find_binary, free_port
from tests.bench.versus_stack import Child, write_json

TOOLS = {
    "node_exporter": "prometheus-node-exporter",
    "prometheus": "prometheus",
    "alertmanager": "prometheus-alertmanager",
}
INSTALL = "apt-get install -y prometheus prometheus-node-exporter prometheus-alertmanager"
TARGET_RATIO = 2.0  # issue 13: `up` idle under twice the Prometheus stack's CPU


@dataclass(frozen=True)
class Options:
    warmup: float
    window: float


def options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m tests.bench idle_cpu", add_help=False)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the window opens")
    parser.add_argument("--window", type=float, default=60.0, help="seconds CPU is measured over")
    known, _ = parser.parse_known_args(list(argv))
    return Options(known.warmup, known.window)


def set_key(text: str, table: str, key: str, value: str) -> str:
    """`text` (a config `init` wrote) with `key = value` in `[table]`; "" is the top level."""
    header = re.compile(rf"^\[{re.escape(table)}\]$", re.M).search(text) if table else None
    if table and header is None:
        raise ValueError(f"no [{table}] in the init config")
    start = header.end() if header is not None else 0
    next_table = re.compile(r"^\[", re.M).search(text, start)
    end = next_table.start() if next_table else len(text)
    body, found = re.subn(
        rf"^#? ?{re.escape(key)} = .*$", f"{key} = {value}", text[start:end], count=1, flags=re.M
    )
    if not found:
        raise ValueError(f"no {key} in [{table}] of the init config")
    return text[:start] + body + text[end:]


def jarvis_config(text: str, data_dir: Path, nats_port: int, console_port: int) -> str:
    text = set_key(text, "", "data_dir", f'"{data_dir}"')
    text = set_key(text, "server", "port", str(nats_port))
    text = set_key(text, "agents.container", "enabled", "false")
    return set_key(text, "sinks.console", "port", str(console_port))


NODE_RULES = {
    "groups": [
        {
            "name": "node",
            "rules": [
                {
                    "alert": "cpu_high",
                    "expr": "100 * (1 - avg by (instance) "
                    '(rate(node_cpu_seconds_total{mode="idle"}[1m]))) > 90',
                    "for": "5m",
                },
                {
                    "alert": "memory_high",
                    "expr": "100 * (1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes) > 90",
                    "for": "5m",
                },
                {
                    "alert": "disk_full",
                    "expr": "100 * (1 - node_filesystem_avail_bytes / node_filesystem_size_bytes) > 90",
                    "for": "5m",
                },
            ],
        }
    ]
}


def prometheus_config(work: Path, node: int, prometheus: int, alertmanager: int) -> dict[str, object]:
    return {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": [str(work / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager}"]}]}]},
        "scrape_configs": [
            {"job_name": "node", "static_configs": [{"targets": [f"127.0.0.1:{node}"]}]},
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{prometheus}"]}]},
        ],
    }


ALERTMANAGER = {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}


def prometheus_stack(tools: Mapping[str, str], work: Path) -> tuple[list[Child], list[str]]:
    """The three Go programs, and the URLs that answer once each is ready."""
    node, prometheus, alertmanager = free_port(), free_port(), free_port()
    write_json(work / "rules.yml", NODE_RULES)
    write_json(work / "prometheus.yml", prometheus_config(work, node, prometheus, alertmanager))
    write_json(work / "alertmanager.yml", ALERTMANAGER)
    children = [
        Child(
            "node_exporter",
            [tools["node_exporter"], f"--web.listen-address=127.0.0.1:{node}"],
            work / "node_exporter.log",
        ),
        Child(
            "alertmanager",
            [
                tools["alertmanager"],
                f"--config.file={work / 'alertmanager.yml'}",
                f"--storage.path={work / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{alertmanager}",
                "--cluster.listen-address=",
            ],
            work / "alertmanager.log",
        ),
        Child(
            "prometheus",
            [
                tools["prometheus"],
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'prometheus'}",
                f"--web.listen-address=127.0.0.1:{prometheus}",
            ],
            work / "prometheus.log",
        ),
    ]
    ready = [
        f"http://127.0.0.1:{node}/metrics",
        f"http://127.0.0.1:{alertmanager}/-/ready",
        f"http://127.0.0.1:{prometheus}/-/ready",
    ]
    return children, ready


def jarvis_stack(work: Path) -> tuple[Child, str]:
    """`jarvis-monitor up` on the init config, and the console URL that answers once it runs."""
    nats_port, console_port = free_port(), free_port()
    init = subprocess.run(
        [sys.executable, "-m", "jarvis_monitor", "init", "-"], capture_output=True, text=True, check=True
    )
    config = work / "jarvis.toml"
    config.write_text(jarvis_config(init.stdout, work / "jarvis-data", nats_port, console_port))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("JARVIS_", "SLACK_"))}
    child = Child(
        "jarvis-monitor up",
        [sys.executable, "-m", "jarvis_monitor", "-c", str(config), "up"],
        work / "jarvis.log",
        env=env,
    )
    return child, f"http://127.0.0.1:{console_port}/metrics"


async def wait_ready(children: Sequence[Child], urls: Sequence[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            for child in children:
                if not child.alive:
                    raise RuntimeError(child.failure())
            try:
                await asyncio.to_thread(urllib.request.urlopen, url, None, 5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s") from None
                await asyncio.sleep(0.2)


def server_floor(work: Path) -> tuple[Child, int]:
    """The nats-server `up` runs, with JetStream and no client: what the bus costs before any traffic."""
    port = free_port()
    argv = [find_binary(), "-js", "-sd", str(work / "floor"), "-a", "127.0.0.1", "-p", str(port)]
    return Child("nats-server alone", argv, work / "floor.log"), port


async def add_one_stream(port: int) -> None:
    """One stream, and no client left: nats-server's idle cost steps up with its first stream."""
    nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=10)
    try:
        await nc.jetstream().add_stream(name="FLOOR", subjects=["floor.>"])
    finally:
        await nc.close()


@dataclass(frozen=True)
class Usage:
    cpu: float  # seconds, user + system
    wakeups: int  # voluntary context switches


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of `pid` (psutil reads the main thread's alone)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended
            continue
        match = re.search(r"^voluntary_ctxt_switches:\s+(\d+)$", text, re.M)
        total += int(match[1]) if match else 0
    return total


def tree_usage(pid: int) -> dict[str, Usage]:
    """CPU and wakeups of a process and of each of its descendants, by name (pid when names repeat)."""
    root = psutil.Process(pid)
    found: dict[str, Usage] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            with process.oneshot():
                times = process.cpu_times()
                name = process.name()
            switches = wakeups(process.pid)
        except psutil.NoSuchProcess:
            continue
        key = name if name not in found else f"{name}[{process.pid}]"
        found[key] = Usage(times.user + times.system, switches)
    return found


def difference(before: Mapping[str, Usage], after: Mapping[str, Usage]) -> dict[str, Usage]:
    zero = Usage(0.0, 0)
    return {
        name: Usage(usage.cpu - before.get(name, zero).cpu, usage.wakeups - before.get(name, zero).wakeups)
        for name, usage in after.items()
    }


def share(cpu: float, window: float) -> str:
    return f"{100 * cpu / window:.2f}% of a core"


async def run() -> list[tuple[str, str, str]]:
    opts = options(sys.argv[1:])
    found = {role: shutil.which(name) for role, name in TOOLS.items()}
    missing = [TOOLS[role] for role, path in found.items() if path is None]
    if missing:
        return [("idle CPU", f"missing: {', '.join(missing)}", f"as root: {INSTALL}")]
    tools = {role: path for role, path in found.items() if path is not None}
    with tempfile.TemporaryDirectory(prefix="idle-cpu-") as temp:
        work = Path(temp)
        theirs, ready = prometheus_stack(tools, work)
        ours, console = jarvis_stack(work)
        floor, floor_port = server_floor(work)
        everything = [*theirs, ours, floor]
        try:
            for child in everything:
                await child.start()
            await wait_ready(everything, [*ready, console])
            await add_one_stream(floor_port)
            await asyncio.sleep(opts.warmup)
            pids = {child.name: child.process.pid for child in everything if child.process is not None}
            before = {name: tree_usage(pid) for name, pid in pids.items()}
            start = time.monotonic()
            await asyncio.sleep(opts.window)
            after = {name: tree_usage(pid) for name, pid in pids.items()}
            window = time.monotonic() - start
            for child in everything:
                if not child.alive:
                    raise RuntimeError(child.failure())
        finally:
            for child in reversed(everything):
                await child.stop()
    used = {name: difference(before[name], after[name]) for name in pids}
    rows = [
        ("window", f"{window:.0f} s after {opts.warmup:.0f} s warm-up; load {os.getloadavg()[0]:.1f}", "-")
    ]
    for name, processes in used.items():
        for index, (process, usage) in enumerate(processes.items()):
            label = name if index == 0 else f"  {process} (child of {name})"
            rows.append(
                (
                    f"{label}",
                    f"{share(usage.cpu, window)}, {usage.wakeups / window:.1f} wakeups/s",
                    "-",
                )
            )
    our_cpu = sum(usage.cpu for usage in used[ours.name].values())
    their_cpu = sum(usage.cpu for child in theirs for usage in used[child.name].values())
    floor_cpu = sum(usage.cpu for usage in used[floor.name].values())
    rows.append(("node_exporter + Prometheus + Alertmanager", share(their_cpu, window), "baseline"))
    rows.append(("jarvis-monitor up (with its nats-server)", share(our_cpu, window), "-"))
    ratio = our_cpu / their_cpu if their_cpu > 0 else float("inf")
    rows.append(("up / Prometheus stack", f"{ratio:.2f} x", f"< {TARGET_RATIO:g} x"))
    floor_ratio = floor_cpu / their_cpu if their_cpu > 0 else float("inf")
    rows.append(("nats-server alone, one stream / Prometheus stack", f"{floor_ratio:.2f} x", "-"))
    return rows
