"""`EmbeddedServer.wait()`, what `up` watches its server with: it returns as soon as the process dies."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from bus.server import EmbeddedServer, ServerConfig
from tests.conftest import nats_server_binary

pytestmark = pytest.mark.integration


async def test_wait_returns_when_the_server_is_killed_and_says_how(tmp_path: Path) -> None:
    server = EmbeddedServer(ServerConfig(port=0), tmp_path, nats_server_binary())
    await server.start()
    try:
        assert server.process is not None
        watcher = asyncio.create_task(server.wait())
        await asyncio.sleep(0)  # the watcher is waiting now
        assert not watcher.done()

        os.kill(server.process.pid, signal.SIGKILL)
        await asyncio.wait_for(watcher, 5)

        assert not server.running
        assert server.exit_reason() == "killed by SIGKILL"
    finally:
        await server.stop()


async def test_wait_on_a_server_already_gone_returns_at_once(tmp_path: Path) -> None:
    server = EmbeddedServer(ServerConfig(port=0), tmp_path, nats_server_binary())
    await server.start()
    await server.stop()

    await asyncio.wait_for(server.wait(), 1)
