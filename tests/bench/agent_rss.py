"""Resident memory of `jarvis-monitor agent host` against Debian's prometheus-node-exporter, same run."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import psutil

from bus.server import EmbeddedServer, ServerConfig, free_port
from tests.bench.__main__ import agent_rss

NODE_EXPORTER = "prometheus-node-exporter"


async def node_exporter_rss() -> float | None:
    """RSS (MB) of node_exporter on loopback after three scrapes; None when it is not installed."""
    binary = shutil.which(NODE_EXPORTER)
    if binary is None:
        return None
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - the benchmark measures this very process
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                for _ in range(3):
                    await asyncio.to_thread(
                        urllib.request.urlopen, f"http://127.0.0.1:{port}/metrics", None, 5
                    )
                break
            except OSError:
                await asyncio.sleep(0.1)
        return float(psutil.Process(process.pid).memory_info().rss) / 1024**2
    finally:
        process.terminate()
        process.wait(10)


async def run() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedServer(ServerConfig(port=0), Path(data))
        await server.start()
        try:
            ours = await agent_rss(server.url)
        finally:
            await server.stop()
    theirs = await node_exporter_rss()
    rows = [("agent host resident memory", f"{ours:.1f} MB", "< 35 MB")]
    if theirs is None:
        rows.append(("node_exporter resident memory", f"{NODE_EXPORTER} not installed", "apt-get install it"))
    else:
        rows.append(("node_exporter resident memory", f"{theirs:.1f} MB", "baseline"))
        rows.append(("agent host / node_exporter", f"{ours / theirs:.2f} x", "< 1.7 x"))
    return rows
