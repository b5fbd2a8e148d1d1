"""A ws:// server still works though nats-py's aiohttp is deferred (bus/deferred.py): the WebSocket
transport loads it when it connects."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from bus.server import free_port
from tests.conftest import nats_server_binary

pytestmark = pytest.mark.integration

# A fresh interpreter, as `jarvis-monitor agent ...` is: in this one pytest's plugins loaded aiohttp.
CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from bus.config import BusConfig
    from bus.connection import connect

    async def main(url):
        deferred = "aiohttp.client" not in sys.modules
        bus = await connect(BusConfig(prefix="ws"), "ws-test", servers=[url])
        sub = await bus.nc.subscribe("ws.echo")
        await bus.nc.publish("ws.echo", b"over websocket")
        msg = await sub.next_msg(timeout=10)
        await bus.close()
        print(deferred, msg.data.decode())

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_a_websocket_server_is_reached_with_aiohttp_loaded_only_then(tmp_path: Path) -> None:
    port, ws_port = free_port(), free_port()
    conf = tmp_path / "ws.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\nwebsocket {{\n  listen: "127.0.0.1:{ws_port}"\n  no_tls: true\n}}\n'
    )
    log_file = tmp_path / "nats.log"
    server = await asyncio.create_subprocess_exec(
        nats_server_binary(), "-c", str(conf), "-l", str(log_file), stdin=asyncio.subprocess.DEVNULL
    )
    try:

        async def ready() -> None:
            while "Server is ready" not in (log_file.read_text() if log_file.exists() else ""):
                assert server.returncode is None, "nats-server refused the websocket config"
                await asyncio.sleep(0.02)

        await asyncio.wait_for(ready(), 15)
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, f"ws://127.0.0.1:{ws_port}", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(client.communicate(), 60)
    finally:
        server.terminate()
        await server.wait()

    assert client.returncode == 0
    assert out.decode().split(maxsplit=1) == ["True", "over websocket\n"]
