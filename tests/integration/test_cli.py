"""The command line as a user runs it: up, agent, tail, check-config, init, schema."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import nats
import psutil
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bus.events import Heartbeat, MetricBatch, any_event
from bus.server import INSTALL_HINT, EmbeddedServer, free_port
from jarvis_monitor.cli import main
from jarvis_monitor.config import Config, parse_config
from tests.conftest import nats_server_binary

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "jarvis_monitor"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JARVIS_", "NATS_"))}
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env or cli_env()
    )


def write_config(path: Path, text: str) -> Path:
    """The config file of a test; its console takes any free port unless the test says otherwise,
    so that an `up` still stopping (or another suite on the machine) never holds the test's port."""
    if "[sinks.console]" not in text:
        text += "\n[sinks.console]\nport = 0\n"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def up_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, float]]:
    """`jarvis-monitor up` on a free port with the default 10 s interval; yields (process, port, start)."""
    port = free_port()
    config = write_config(
        tmp_path / "up.toml",
        f'data_dir = "{tmp_path / "data"}"\n[server]\nport = {port}\n[agents]\nhostname = "web.01 *>"\n',
    )
    env = cli_env(NATS_SERVER_BIN=nats_server_binary())
    started = time.monotonic()
    process = subprocess.Popen(
        [*CLI, "-c", str(config), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    yield process, port, started
    if process.poll() is None:
        leftovers = psutil.Process(process.pid).children(recursive=True)
        process.kill()
        process.wait(10)
        for child in leftovers:  # only up's own: the session's nats-server must live on
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


async def connect_when_up(port: int, deadline: float) -> NATS:
    while True:
        try:
            return await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False, connect_timeout=1)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def wait_until_running(port: int, deadline: float) -> None:
    """Until `up` is past its start-up: its first heartbeat is on the bus."""
    nc = await connect_when_up(port, deadline)
    try:
        sub = await nc.subscribe("jarvis.heartbeat.>")
        await sub.next_msg(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        await nc.close()


async def test_up_publishes_metrics_and_heartbeats_within_5s(
    up_process: tuple[subprocess.Popen[str], int, float],
) -> None:
    """A plain NATS client sees the host's metrics and heartbeat within 5 s of `up`, values as the OS says.

    The client subscribes only 2.5 s after the start, as a person typing `nats sub` would.
    """
    _, port, started = up_process
    await asyncio.sleep(max(0.0, started + 2.5 - time.monotonic()))  # the late subscriber itself
    nc = await connect_when_up(port, started + 5)
    try:
        received: dict[str, tuple[str, bytes]] = {}
        got_both = asyncio.Event()

        async def on_msg(msg: Msg) -> None:
            if not msg.subject.endswith(".host"):  # the other agents publish too, in no set order
                return
            kind = json.loads(msg.data)["kind"]
            received.setdefault(kind, (msg.subject, msg.data))
            if {"metrics", "heartbeat"} <= received.keys():
                got_both.set()

        await nc.subscribe("jarvis.>", cb=on_msg)
        await asyncio.wait_for(got_both.wait(), timeout=max(0.1, started + 5 - time.monotonic()))
    finally:
        await nc.close()

    subject, data = received["metrics"]
    assert subject == "jarvis.metrics.web_01___.host"
    raw = json.loads(data)
    assert {"v", "kind", "host", "agent", "ts", "interval", "samples"} <= raw.keys()
    batch = any_event.decode(data)
    assert isinstance(batch, MetricBatch)
    assert batch.host == "web.01 *>"  # the payload keeps the original name
    assert abs(batch.ts - time.time()) < 10
    values = {(s.name, s.labels.get("mount")): s.value for s in batch.samples}
    mem = psutil.virtual_memory()
    assert values[("mem.percent", None)] == pytest.approx(
        100 * (mem.total - mem.available) / mem.total, abs=2
    )
    assert values[("disk.percent", "/")] == pytest.approx(psutil.disk_usage("/").percent, abs=1)

    subject, data = received["heartbeat"]
    assert subject == "jarvis.heartbeat.web_01___.host"
    heartbeat = any_event.decode(data)
    assert isinstance(heartbeat, Heartbeat)
    assert heartbeat.interval == 10.0
    assert heartbeat.dropped == 0


async def test_up_stops_cleanly_on_sigterm(
    up_process: tuple[subprocess.Popen[str], int, float],
) -> None:
    """SIGTERM ends `up` with exit 0 and takes the embedded nats-server down with it."""
    process, port, started = up_process
    await wait_until_running(port, started + 10)
    pid = _embedded_server_pid(process)
    process.send_signal(signal.SIGTERM)
    try:
        _, err = await asyncio.to_thread(process.communicate, None, 15)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"up did not stop within 15 s; it said:\n{process.communicate()[1][-4000:]}")
    assert process.returncode == 0, err[-4000:]
    assert "still running" not in err
    assert _gone(pid)


def test_up_reports_a_port_in_use_instead_of_hanging(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    """`up` on a port already taken exits 1 at once with a line that says so."""
    config = write_config(
        tmp_path / "c.toml", f'data_dir = "{tmp_path}"\n[server]\nport = {nats_server.port}\n'
    )
    started = time.monotonic()
    result = run_cli("-c", str(config), "up", env=cli_env(NATS_SERVER_BIN=nats_server_binary()))
    assert result.returncode == 1
    assert "already in use" in result.stderr
    assert time.monotonic() - started < 15


def test_up_with_a_wrong_nats_server_bin_says_so(tmp_path: Path) -> None:
    """A NATS_SERVER_BIN that is not there is one clear line, not a traceback."""
    config = write_config(tmp_path / "c.toml", f'data_dir = "{tmp_path}"\n[server]\nport = {free_port()}\n')
    result = run_cli("-c", str(config), "up", env=cli_env(NATS_SERVER_BIN=str(tmp_path / "missing")))
    assert result.returncode == 1
    assert "NATS_SERVER_BIN" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_with_no_nats_server_anywhere_prints_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No NATS_SERVER_BIN, none in the environment's bin, none on PATH: exit 1 and the install line."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(empty))
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("NATS_SERVER_BIN", raising=False)
    monkeypatch.delenv("JARVIS_NATS_URL", raising=False)
    config = write_config(tmp_path / "c.toml", f'data_dir = "{tmp_path}"\n[server]\nport = {free_port()}\n')

    assert main(["-c", str(config), "up"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"jarvis-monitor: error: {INSTALL_HINT}"


def test_up_names_the_monitoring_port_when_that_is_the_one_in_use(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.toml",
        f'data_dir = "{tmp_path}"\n[server]\nport = {free_port()}\nhttp_port = {nats_server.port}\n',
    )
    result = run_cli("-c", str(config), "up", env=cli_env(NATS_SERVER_BIN=nats_server_binary()))
    assert result.returncode == 1
    assert f"server.http_port {nats_server.port} on 127.0.0.1 is already in use" in result.stderr


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ('data_dir = "/proc/jarvis"\n[server]\nport = {port}', "cannot use data_dir /proc/jarvis"),
        ('[server]\nhost = "192.0.2.1"\nport = {port}', "cannot listen on 192.0.2.1"),
    ],
)
def test_up_explains_a_machine_that_refuses_what_the_config_asks(
    setting: str, expected: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.toml", setting.format(port=free_port()) + "\n")
    result = run_cli("-c", str(config), "up", env=cli_env(NATS_SERVER_BIN=nats_server_binary()))
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


async def test_sigterm_while_an_agent_waits_for_nats_is_a_clean_stop(tmp_path: Path) -> None:
    """An agent started before its NATS server stops cleanly on SIGTERM while it waits."""
    env = cli_env(JARVIS_NATS_URL=f"nats://127.0.0.1:{free_port()}")
    process = await asyncio.create_subprocess_exec(
        *CLI, "agent", "host", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    assert process.stderr is not None
    while b"waiting for NATS" not in await asyncio.wait_for(process.stderr.readline(), 20):
        pass
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 10) == 0


def test_tail_with_a_filter_nats_refuses_says_so(nats_server: EmbeddedServer) -> None:
    result = run_cli("tail", "jarvis. bad", env=cli_env(JARVIS_NATS_URL=nats_server.url))
    assert result.returncode == 1
    assert "invalid subject filter" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[agents.host]\ninterval = "10x"\n', "agents.host.interval: invalid duration '10x'"),
        ('[agents.host]\nintervall = "10s"\n', "agents.host.intervall: unknown key"),
        ('[bus]\nreconnect_buffer = "big"\n', "bus.reconnect_buffer: Expected `int`, got `str`"),
        ("[server]\nport = 70000\n", "server.port: Expected `int` <= 65535"),
        ("[agents\n", "not valid TOML"),
    ],
)
def test_check_config_names_the_key_path_and_exits_2(tmp_path: Path, text: str, expected: str) -> None:
    """A broken config: exit 2 and one line naming the key path and what is wrong."""
    config = write_config(tmp_path / "bad.toml", text)
    result = run_cli("check-config", str(config))
    assert result.returncode == 2
    assert expected in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1


def test_every_command_refuses_a_broken_config_before_starting(tmp_path: Path) -> None:
    """`up` with a typo in the config exits 2 before starting anything."""
    config = write_config(tmp_path / "bad.toml", '[agents.host]\nenabled = "yes"\n')
    result = run_cli("-c", str(config), "up")
    assert result.returncode == 2
    assert "agents.host.enabled" in result.stderr
    assert not (tmp_path / "data").exists()


def test_up_refuses_an_unreadable_slack_secret_before_starting(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "up.toml",
        f'data_dir = "{tmp_path / "data"}"\n[sinks.slack]\nwebhook_url_file = "/nope"\n',
    )
    result = run_cli("-c", str(config), "up")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "jarvis-monitor: config: sinks.slack.webhook_url_file: cannot read /nope: No such file or directory"
    ]
    assert not (tmp_path / "data").exists()


def test_check_config_reports_every_problem_of_a_table_and_unreadable_files_too(tmp_path: Path) -> None:
    """Three mistakes in one table and two missing files: five lines, in one run."""
    config = write_config(
        tmp_path / "bad.toml",
        '[agents.host]\ninterval = "x"\nfoo = 1\nbar = 2\n'
        '[bus]\nuser = "u"\npassword_file = "/nope"\n[bus.tls]\nca_file = "/nope2"\n',
    )
    result = run_cli("check-config", str(config))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "agents.host.interval: invalid duration 'x': write a number and a unit (us, ms, s, m, h, d, w), "
        'as in "30s", "5m" or "1h30m"',
        "agents.host.foo: unknown key",
        "agents.host.bar: unknown key",
        "bus.password_file: cannot read /nope: No such file or directory",
        "bus.tls.ca_file: no such file /nope2",
    ]


def test_check_config_judges_rules_across_keys_on_the_whole_table(tmp_path: Path) -> None:
    """A jitter of 15 s is fine with an interval of 20 s written in the same table."""
    config = write_config(tmp_path / "ok.toml", '[agents.host]\ninterval = "20s"\njitter = "15s"\n')
    assert run_cli("check-config", str(config)).stdout == "ok\n"


def test_check_config_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[agents]\nhostname = "caf\xe9"\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "not UTF-8" in result.stdout


def test_check_config_reports_each_broken_section(tmp_path: Path) -> None:
    """Errors in several sections are all reported, one line each."""
    config = write_config(
        tmp_path / "bad.toml", 'colour = 1\n[bus]\nprefix = "a b"\n[agents.host]\njitter = "1m"\n'
    )
    result = run_cli("check-config", str(config))
    assert result.returncode == 2
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "colour: unknown key"
    assert any(line.startswith("bus: invalid subject prefix") for line in lines)
    assert any(line.startswith("agents.host: jitter must be shorter") for line in lines)


def test_init_writes_a_config_that_checks_ok_and_documents_every_key(tmp_path: Path) -> None:
    """`init` writes a commented config: it checks ok, equals the defaults, and names every key."""
    path = tmp_path / "jarvis.toml"
    result = run_cli("init", str(path))
    assert result.returncode == 0, result.stderr
    assert run_cli("check-config", str(path)).stdout.strip() == "ok"
    text = path.read_text()
    assert parse_config(tomllib.loads(text)) == Config()

    def keys(struct: type[msgspec.Struct], path: str) -> Iterator[str]:
        for field in msgspec.structs.fields(struct):
            tp = field.type
            inner = getattr(tp, "__origin__", tp)
            if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
                yield from keys(inner, f"{path}{field.encode_name}.")
            else:
                yield f"{path}{field.encode_name}"

    for key in keys(Config, ""):
        table, _, name = key.rpartition(".")
        assert f"[{table}]" in text or not table, f"table {table} missing"
        assert f"\n{name} = " in text or f"\n# {name} = " in text, f"{key} is not documented"
    assert run_cli("init", str(path)).returncode == 1  # never overwrites without --force


def test_schema_prints_every_event_type() -> None:
    """`schema` prints a JSON Schema with the five event types of the contract."""
    result = run_cli("schema")
    schema = json.loads(result.stdout)
    assert {"MetricBatch", "HealthEvent", "Heartbeat", "Alert", "Notification"} <= schema["$defs"].keys()


def test_events_doc_is_generated_from_the_code() -> None:
    """docs/events.md matches `schema --markdown`, so the doc never drifts from what agents emit."""
    doc = Path(__file__).parents[2] / "docs" / "events.md"
    assert doc.read_text() == run_cli("schema", "--markdown").stdout, (
        "run: jarvis-monitor schema --markdown > docs/events.md"
    )


@pytest.fixture
async def raw_nc(nats_server: EmbeddedServer) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


@pytest.mark.parametrize("raw_json", [False, True])
async def test_tail_survives_garbage_and_wrong_shapes(
    nats_server: EmbeddedServer, raw_nc: NATS, prefix: str, raw_json: bool
) -> None:
    """Garbage bytes and JSON of the wrong shape are counted as rejected; tail keeps printing."""
    env = cli_env(JARVIS_NATS_URL=nats_server.url)
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "tail",
        f"{prefix}.>",
        "--count",
        "5",
        *(["--json"] if raw_json else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    line = await asyncio.wait_for(process.stderr.readline(), 20)
    assert line.startswith(f"watching {prefix}.>".encode())

    good = msgspec.json.encode(
        MetricBatch(host="web<01>", agent="host", ts=time.time(), interval=10.0, samples=[])
    )
    beat = msgspec.json.encode(
        Heartbeat(host="web01", agent="host", version="1", interval=10.0, ts=time.time(), dropped=3)
    )
    for payload in (b"\xff\xfe garbage", b'{"kind": "metrics"}', good, b"[1, 2, 3]", beat):
        await raw_nc.publish(f"{prefix}.test", payload)
    await raw_nc.flush()
    stdout, stderr = await asyncio.wait_for(process.communicate(), 20)

    assert process.returncode == 0
    lines = stdout.decode().splitlines()
    if raw_json:
        assert [line.encode() for line in lines] == [good, beat]
    else:
        assert len(lines) == 2
        assert lines[0].split()[1:3] == ["metrics", "web<01>/host"]
        assert lines[1].split()[1:3] == ["heartbeat", "web01/host"]
        assert "dropped=3" in lines[1]
    assert stderr.decode().count("rejected:") == 3
    assert "5 messages, 3 rejected" in stderr.decode()


def test_configuration_doc_shows_the_generated_config() -> None:
    """docs/configuration.md carries `init -` verbatim, so the reference never drifts from the code."""
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    assert f"```toml\n{run_cli('init', '-').stdout}```" in doc, (
        "regenerate the block with: jarvis-monitor init -"
    )


def _embedded_server_pid(process: subprocess.Popen[str]) -> int:
    children = [p for p in psutil.Process(process.pid).children() if "nats-server" in p.name()]
    assert children, "up did not start an embedded nats-server"
    return children[0].pid


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_up_killed_with_sigkill_leaves_no_server_behind(
    up_process: tuple[subprocess.Popen[str], int, float],
) -> None:
    """Even a SIGKILLed `up` takes its nats-server along, so the next `up` finds the port free."""
    process, port, started = up_process
    await wait_until_running(port, started + 10)
    pid = _embedded_server_pid(process)
    process.kill()
    await asyncio.to_thread(process.wait, 10)
    deadline = time.monotonic() + 10
    while not _gone(pid):
        assert time.monotonic() < deadline, "nats-server outlived a killed `up`"
        await asyncio.sleep(0.05)


async def test_up_exits_1_when_its_embedded_server_dies(
    up_process: tuple[subprocess.Popen[str], int, float],
) -> None:
    """If the embedded server dies, `up` says so and exits 1 (systemd restarts it) instead of idling."""
    process, port, started = up_process
    await wait_until_running(port, started + 10)
    os.kill(_embedded_server_pid(process), signal.SIGKILL)
    assert await asyncio.to_thread(process.wait, 20) == 1
    assert process.stderr is not None
    assert "embedded nats-server exited unexpectedly" in process.stderr.read()
