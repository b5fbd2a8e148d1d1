"""Shared fixtures: a real nats-server per session, a fresh subject prefix per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import pytest

from bus.config import BusConfig
from bus.connection import Bus, connect
from bus.server import EmbeddedServer, ServerConfig, ServerError, find_binary

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip when a real dependency is missing, but fail under CI=true: CI never skips silently."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def nats_server_binary() -> str:
    try:
        return find_binary()
    except ServerError as exc:
        require(False, str(exc))
        raise


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition` until it holds, failing the test after `timeout` seconds."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A real nats-server with JetStream on a free loopback port, shared by the session."""
    server = EmbeddedServer(ServerConfig(port=0), tmp_path_factory.mktemp("nats"), nats_server_binary())
    asyncio.run(server.start())
    yield server
    asyncio.run(server.stop())


async def _delete_streams(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name:
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


@pytest.fixture(autouse=True)
def _drop_streams_after_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Streams reserve their byte limits on the shared server: delete each test's, or the server fills up.

    Every test has its own prefix, so no stream outlives the test that made it in any useful way.
    """
    yield
    if "nats_server" in request.fixturenames:
        server: EmbeddedServer = request.getfixturevalue("nats_server")
        if server.running:
            asyncio.run(_delete_streams(server.url))


@pytest.fixture
def prefix() -> str:
    """A subject prefix no other test uses, so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bus_config(prefix: str) -> BusConfig:
    return BusConfig(prefix=prefix)


@pytest.fixture
async def bus(nats_server: EmbeddedServer, bus_config: BusConfig) -> AsyncIterator[Bus]:
    """A connected `Bus` on the session server under the test's own prefix."""
    connection = await connect(bus_config, "test", servers=[nats_server.url])
    yield connection
    await connection.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def own_nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    """A nats-server of the test's own: `stop()` then `start()` restarts it on the same port and
    JetStream store, as an outage does."""
    server = EmbeddedServer(ServerConfig(port=0), tmp_path / "own-nats", nats_server_binary())
    await server.start()
    yield server
    await server.stop()
