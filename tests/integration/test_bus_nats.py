"""The bus against real nats-server processes: publishing, auth, TLS, JetStream, outages."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import nats
import nkeys
import pytest
import trustme

from bus.config import BusConfig, CappedStreamConfig, LogStreamConfig, StreamConfig, StreamsConfig, TLSConfig
from bus.connection import Bus, BusUnavailableError, connect
from bus.events import Alert, HealthEvent, MetricBatch, Sample, encode, health_event, metric_batch
from bus.jetstream import (
    DEADLETTER_FAMILY,
    FAMILIES,
    KV_BUCKETS,
    ProvisioningError,
    bucket_name,
    provision,
    stream_name,
)
from bus.server import EmbeddedServer, ServerConfig, free_port
from bus.units import Duration
from tests.conftest import nats_server_binary, wait_until

pytestmark = pytest.mark.integration

MIB = 1024**2

HEALTH = HealthEvent(host="web.01", agent="probe", target="backend api", status="ok", latency=0.012, ts=1.0)
BATCH = MetricBatch(host="h", agent="host", ts=1.0, interval=10.0, samples=[Sample("cpu.percent", 12.5)])


def small_streams(**overrides: StreamConfig) -> StreamsConfig:
    """Stream limits small enough that many tests' streams fit on one server's disk budget."""
    limits: dict[str, StreamConfig] = {
        "metrics": CappedStreamConfig(max_bytes=MIB),
        "health": CappedStreamConfig(max_bytes=MIB),
        "heartbeat": CappedStreamConfig(max_bytes=MIB),
        "logs": LogStreamConfig(max_bytes=MIB),
    }
    limits.update(overrides)
    return msgspec.structs.replace(StreamsConfig(), **limits)


async def assert_round_trip(bus: Bus) -> None:
    """A publish through `bus` comes back on a subscription of the same connection."""
    subject = bus.subjects.health("web.01", "probe", "api")
    sub = await bus.nc.subscribe(subject)
    assert await bus.publish(subject, HEALTH)
    msg = await sub.next_msg(timeout=5)
    assert health_event.decode(msg.data, msg.subject) == HEALTH


# ---------------------------------------------------------------- publish and connect


async def test_published_event_reaches_a_plain_nats_subscriber(bus: Bus, nats_server: EmbeddedServer) -> None:
    """What `nats sub 'jarvis.>'` sees: the sanitised subject and a decodable payload."""
    listener = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        sub = await listener.subscribe(bus.subjects.everything)
        await listener.flush(timeout=5)
        subject = bus.subjects.health(HEALTH.host, HEALTH.agent, HEALTH.target)
        assert await bus.publish(subject, HEALTH)
        try:
            msg = await sub.next_msg(timeout=15)
        except nats.errors.TimeoutError:
            # not delivered: say what the publishing connection shows (seen twice in CI, never here)
            connected, out = bus.nc.is_connected, bus.nc.stats["out_msgs"]
            pytest.fail(f"not delivered in 15 s; publisher connected {connected}, out_msgs {out}")
    finally:
        await listener.close()
    assert msg.subject == f"{bus.subjects.prefix}.health.web_01.probe.backend_api"
    assert health_event.decode(msg.data, msg.subject) == HEALTH
    assert bus.stats.dropped == bus.stats.errors == 0


async def test_close_flushes_everything_published(nats_server: EmbeddedServer, bus_config: BusConfig) -> None:
    listener = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        sub = await listener.subscribe(f"{bus_config.prefix}.>")
        await listener.flush(timeout=5)
        publisher = await connect(bus_config, "burst", servers=[nats_server.url])
        subject = publisher.subjects.metrics("h", "host")
        for _ in range(500):
            assert await publisher.publish(subject, BATCH)
        await publisher.close()
        received = [await sub.next_msg(timeout=5) for _ in range(500)]
    finally:
        await listener.close()
    assert all(metric_batch.decode(m.data) == BATCH for m in received)
    assert publisher.nc.is_closed


async def test_publish_after_close_is_counted_not_raised(bus: Bus) -> None:
    await bus.close()
    assert not await bus.publish(bus.subjects.metrics("h", "host"), BATCH)
    assert bus.stats.errors == 1


async def test_connect_honours_jarvis_nats_url(nats_server: EmbeddedServer) -> None:
    closed = f"nats://127.0.0.1:{free_port()}"
    config = BusConfig(servers=[closed])
    bus = await asyncio.wait_for(
        connect(config, "t", environ={"JARVIS_NATS_URL": nats_server.url}), timeout=10
    )
    try:
        await assert_round_trip(bus)
    finally:
        await bus.close()


async def test_connect_to_a_closed_port_fails_quickly() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(BusUnavailableError, match=r"cannot reach NATS at nats://127\.0\.0\.1"):
        await asyncio.wait_for(connect(BusConfig(), "t", servers=[url], environ={}), timeout=5)


async def test_unavailable_error_never_shows_credentials_from_the_url() -> None:
    url = f"nats://jarvis:s3cret-pw@127.0.0.1:{free_port()}"
    with pytest.raises(BusUnavailableError) as info:
        await asyncio.wait_for(connect(BusConfig(), "t", servers=[url], environ={}), timeout=5)
    assert "s3cret-pw" not in str(info.value)
    assert "***@127.0.0.1" in str(info.value)


async def test_connect_with_wait_retries_until_a_server_starts(tmp_path: Path) -> None:
    port = free_port()
    config = BusConfig(max_reconnect_delay=Duration.parse("200ms"))
    url = f"nats://127.0.0.1:{port}"
    waiting = asyncio.create_task(connect(config, "t", servers=[url], wait=True, environ={}))
    server = EmbeddedServer(ServerConfig(port=port), tmp_path / "late", nats_server_binary())
    try:
        await asyncio.wait_for(server.start(), timeout=30)
        bus = await asyncio.wait_for(waiting, timeout=15)
        try:
            await assert_round_trip(bus)
        finally:
            await bus.close()
    finally:
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await server.stop()


# ---------------------------------------------------------------- auth and TLS

StartNats = Callable[[str], Awaitable[int]]


@pytest.fixture
async def start_nats(tmp_path: Path) -> AsyncIterator[StartNats]:
    """Run nats-server with a config body written to tmp_path; returns its loopback port."""
    binary = nats_server_binary()
    processes: list[asyncio.subprocess.Process] = []

    async def start(body: str) -> int:
        port = free_port()
        log_file = tmp_path / f"nats-{port}.log"
        conf = tmp_path / f"nats-{port}.conf"
        conf.write_text(f'listen: "127.0.0.1:{port}"\nlog_file: "{log_file}"\n{body}\n')
        process = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        processes.append(process)

        async def accepting() -> None:
            while True:
                if process.returncode is not None:
                    text = log_file.read_text() if log_file.exists() else ""
                    pytest.fail(f"nats-server exited with {process.returncode}: {text}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                await writer.wait_closed()
                return

        await asyncio.wait_for(accepting(), timeout=10)
        return port

    yield start
    for process in processes:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


async def test_user_and_password_file_authenticate(start_nats: StartNats, tmp_path: Path) -> None:
    port = await start_nats('authorization { user: "jarvis", password: "s3cret-pw" }')
    config = BusConfig(user="jarvis", password_file=write(tmp_path / "pw", "s3cret-pw\n"))
    bus = await connect(config, "t", servers=[f"nats://127.0.0.1:{port}"], environ={})
    try:
        await assert_round_trip(bus)
    finally:
        await bus.close()


@pytest.mark.parametrize(
    "environ",
    [
        {"JARVIS_NATS_USER": "jarvis", "JARVIS_NATS_PASSWORD": "wrong-pw"},
        {"JARVIS_NATS_USER": "intruder", "JARVIS_NATS_PASSWORD": "s3cret-pw"},
        {},
    ],
    ids=["wrong password", "wrong user", "no credentials"],
)
async def test_wrong_or_missing_password_is_unavailable(
    start_nats: StartNats, environ: dict[str, str]
) -> None:
    port = await start_nats('authorization { user: "jarvis", password: "s3cret-pw" }')
    url = f"nats://127.0.0.1:{port}"
    with pytest.raises(BusUnavailableError) as info:
        await asyncio.wait_for(connect(BusConfig(), "t", servers=[url], environ=environ), 10)
    assert "-pw" not in str(info.value)


async def test_token_from_environment_authenticates(start_nats: StartNats) -> None:
    port = await start_nats('authorization { token: "t0ken-abc" }')
    bus = await connect(
        BusConfig(),
        "t",
        servers=[f"nats://127.0.0.1:{port}"],
        environ={"JARVIS_NATS_TOKEN": "t0ken-abc"},
    )
    try:
        await assert_round_trip(bus)
    finally:
        await bus.close()


async def test_token_file_authenticates(start_nats: StartNats, tmp_path: Path) -> None:
    port = await start_nats('authorization { token: "t0ken-abc" }')
    config = BusConfig(token_file=write(tmp_path / "token", "t0ken-abc\n"))
    environ = {"JARVIS_NATS_TOKEN": "stale-token"}  # the file wins
    bus = await connect(config, "t", servers=[f"nats://127.0.0.1:{port}"], environ=environ)
    try:
        await assert_round_trip(bus)
    finally:
        await bus.close()


async def test_wrong_token_is_unavailable(start_nats: StartNats) -> None:
    port = await start_nats('authorization { token: "t0ken-abc" }')
    with pytest.raises(BusUnavailableError):
        await asyncio.wait_for(
            connect(
                BusConfig(),
                "t",
                servers=[f"nats://127.0.0.1:{port}"],
                environ={"JARVIS_NATS_TOKEN": "guess"},
            ),
            timeout=10,
        )


def user_seed() -> tuple[bytes, str]:
    """A fresh NATS user nkey: its seed (for the client) and public key (for the server)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return seed, public.decode()


async def test_nkey_seed_file_authenticates(start_nats: StartNats, tmp_path: Path) -> None:
    seed, public = user_seed()
    port = await start_nats(f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}')
    seed_file = tmp_path / "agent.nk"
    seed_file.write_bytes(seed + b"\n")
    config = BusConfig(nkey_seed_file=str(seed_file))
    bus = await connect(config, "t", servers=[f"nats://127.0.0.1:{port}"], environ={})
    try:
        await assert_round_trip(bus)
    finally:
        await bus.close()


async def test_unknown_nkey_is_unavailable(start_nats: StartNats, tmp_path: Path) -> None:
    _, public = user_seed()
    other_seed, _ = user_seed()
    port = await start_nats(f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}')
    seed_file = tmp_path / "other.nk"
    seed_file.write_bytes(other_seed)
    with pytest.raises(BusUnavailableError):
        await asyncio.wait_for(
            connect(
                BusConfig(nkey_seed_file=str(seed_file)),
                "t",
                servers=[f"nats://127.0.0.1:{port}"],
                environ={},
            ),
            timeout=10,
        )


class TLSFiles:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("jarvis-agent")
        self.ca = str(directory / "ca.pem")
        ca.cert_pem.write_to_path(self.ca)
        self.server_cert = write(
            directory / "server.pem", "".join(p.bytes().decode() for p in server.cert_chain_pems)
        )
        self.server_key = write(directory / "server-key.pem", server.private_key_pem.bytes().decode())
        self.client_cert = write(
            directory / "client.pem", "".join(p.bytes().decode() for p in client.cert_chain_pems)
        )
        self.client_key = write(directory / "client-key.pem", client.private_key_pem.bytes().decode())

    def server_block(self, verify_clients: bool = False) -> str:
        block = f'cert_file: "{self.server_cert}"\nkey_file: "{self.server_key}"\n'
        if verify_clients:
            block += f'ca_file: "{self.ca}"\nverify: true\n'
        return f"tls {{\n{block}}}"


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    return TLSFiles(tmp_path)


async def test_tls_with_the_configured_ca_connects(start_nats: StartNats, tls_files: TLSFiles) -> None:
    port = await start_nats(tls_files.server_block())
    config = BusConfig(tls=TLSConfig(ca_file=tls_files.ca))
    bus = await connect(config, "t", servers=[f"tls://127.0.0.1:{port}"], environ={})
    try:
        await assert_round_trip(bus)
    finally:
        await bus.close()


async def test_tls_server_from_an_unknown_ca_is_refused(start_nats: StartNats, tls_files: TLSFiles) -> None:
    """A wrong or missing CA is an error within the connect timeout, not a hang."""
    port = await start_nats(tls_files.server_block())
    config = BusConfig(connect_timeout=Duration.parse("1s"))
    with pytest.raises(BusUnavailableError):
        await asyncio.wait_for(
            connect(config, "t", servers=[f"tls://127.0.0.1:{port}"], environ={}), timeout=10
        )


async def test_client_certificate_is_presented_to_a_verifying_server(
    start_nats: StartNats, tls_files: TLSFiles
) -> None:
    port = await start_nats(tls_files.server_block(verify_clients=True))
    url = f"tls://127.0.0.1:{port}"
    without_cert = BusConfig(tls=TLSConfig(ca_file=tls_files.ca))
    with pytest.raises(BusUnavailableError):
        await asyncio.wait_for(connect(without_cert, "t", servers=[url], environ={}), timeout=10)
    with_cert = BusConfig(
        tls=TLSConfig(ca_file=tls_files.ca, cert_file=tls_files.client_cert, key_file=tls_files.client_key)
    )
    bus = await connect(with_cert, "t", servers=[url], environ={})
    try:
        await assert_round_trip(bus)
    finally:
        await bus.close()


# ---------------------------------------------------------------- JetStream


async def test_provision_creates_then_leaves_then_updates(bus: Bus, prefix: str) -> None:
    js = bus.nc.jetstream()
    families = [*FAMILIES, DEADLETTER_FAMILY]
    names = [stream_name(prefix, f) for f in families] + [bucket_name(prefix, b) for b in KV_BUCKETS]

    first = await provision(js, bus.subjects, small_streams())
    assert first == dict.fromkeys(names, "created")

    second = await provision(js, bus.subjects, small_streams())
    assert second == dict.fromkeys(names, "unchanged")

    week = small_streams(metrics=CappedStreamConfig(max_age=Duration.parse("7d"), max_bytes=MIB))
    third = await provision(js, bus.subjects, week)
    metrics = stream_name(prefix, "metrics")
    assert third == {**dict.fromkeys(names, "unchanged"), metrics: "updated"}
    info = await js.stream_info(metrics)
    assert info.config.max_age == pytest.approx(7 * 86400)

    assert await provision(js, bus.subjects, week) == dict.fromkeys(names, "unchanged")


async def test_provisioned_streams_match_the_contract(bus: Bus, prefix: str) -> None:
    js = bus.nc.jetstream()
    streams = small_streams()
    await provision(js, bus.subjects, streams)
    for family in FAMILIES:
        info = await js.stream_info(stream_name(prefix, family))
        assert info.config.subjects == [f"{prefix}.{family}.>"]
        # the runbook's retention: 30 days, and 7 for log lines
        assert info.config.max_age == pytest.approx((7 if family == "logs" else 30) * 86400)
        assert info.config.max_bytes == streams.max_bytes(family)
    alerts = await js.stream_info(stream_name(prefix, "alerts"))
    assert alerts.config.max_bytes == -1
    assert alerts.config.duplicate_window == pytest.approx(3600)
    for bucket in KV_BUCKETS:
        kv = await js.key_value(bucket_name(prefix, bucket))
        await kv.put("probe", b"1")
        entry = await kv.get("probe")
        assert entry.value == b"1"


async def test_metrics_published_on_the_bus_land_in_the_metrics_stream(bus: Bus, prefix: str) -> None:
    js = bus.nc.jetstream()
    await provision(js, bus.subjects, small_streams())
    subject = bus.subjects.metrics("h", "host")
    assert subject == f"{prefix}.metrics.h.host"
    consumer = await js.pull_subscribe(subject, stream=stream_name(prefix, "metrics"))
    assert await bus.publish(subject, BATCH)
    (msg,) = await consumer.fetch(1, timeout=5)
    assert msg.subject == subject
    assert metric_batch.decode(msg.data, msg.subject) == BATCH
    assert (await js.stream_info(stream_name(prefix, "health"))).state.messages == 0


async def test_alert_stream_drops_a_repeated_msg_id(bus: Bus) -> None:
    """An alert re-published with the same Nats-Msg-Id (e.g. after a retry) is stored once."""
    js = bus.nc.jetstream()
    await provision(js, bus.subjects, small_streams())
    event = Alert(
        fingerprint="f1",
        rule="HostDown",
        severity="critical",
        status="firing",
        labels={},
        summary="down",
        starts_at=1.0,
    )
    subject = bus.subjects.alerts("critical", "web-01", "HostDown")
    first = await js.publish(subject, encode(event), headers={"Nats-Msg-Id": "f1:1.0"}, timeout=5)
    again = await js.publish(subject, encode(event), headers={"Nats-Msg-Id": "f1:1.0"}, timeout=5)
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq


async def test_provision_accepts_a_max_age_shorter_than_two_minutes(bus: Bus, prefix: str) -> None:
    """A short retention (e.g. metrics kept 1m on a tiny host) is a valid config and provisions."""
    short = small_streams(metrics=CappedStreamConfig(max_age=Duration.parse("1m"), max_bytes=MIB))
    changes = await provision(bus.nc.jetstream(), bus.subjects, short)
    assert changes[stream_name(prefix, "metrics")] == "created"


async def test_prefixes_differing_only_in_punctuation_keep_their_own_streams(
    nats_server: EmbeddedServer, prefix: str
) -> None:
    """Two deployments on one server, `<p>-a` and `<p>_a`, do not take over each other's streams."""
    nc = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        dashed, underscored = BusConfig(prefix=f"{prefix}-a"), BusConfig(prefix=f"{prefix}_a")
        for config in (dashed, underscored):
            first = await connect(config, "t", servers=[nats_server.url])
            await provision(js, first.subjects, small_streams())
            await first.close()
        ack_dashed = await js.publish(f"{prefix}-a.metrics.h.host", encode(BATCH), timeout=5)
        ack_underscored = await js.publish(f"{prefix}_a.metrics.h.host", encode(BATCH), timeout=5)
    finally:
        await nc.close()
    assert ack_dashed.stream != ack_underscored.stream


# ---------------------------------------------------------------- outages


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    """A server this test may stop and restart without disturbing the session's."""
    server = EmbeddedServer(ServerConfig(port=0), tmp_path / "own", nats_server_binary())
    await asyncio.wait_for(server.start(), timeout=30)
    yield server
    await server.stop()


async def test_full_reconnect_buffer_drops_and_counts_instead_of_raising(
    own_server: EmbeddedServer, prefix: str
) -> None:
    size = len(encode(BATCH))
    config = BusConfig(prefix=prefix, reconnect_buffer=size - 1)  # no room for even one payload
    bus = await connect(config, "t", servers=[own_server.url])
    subject = bus.subjects.metrics("h", "host")
    try:
        assert await bus.publish(subject, BATCH), "while connected the tiny buffer is no limit"
        await bus.nc.flush(timeout=5)
        await own_server.stop()
        await wait_until(lambda: not bus.nc.is_connected)

        results = [await bus.publish(subject, BATCH) for _ in range(5)]
        assert results == [False] * 5
        assert bus.stats.dropped == 5
        assert bus.stats.errors == 0
    finally:
        await asyncio.wait_for(bus.close(timeout=0.2), timeout=10)


async def test_close_during_an_outage_with_buffered_publishes_does_not_raise(
    own_server: EmbeddedServer, prefix: str
) -> None:
    """An agent stopped while NATS is down shuts down cleanly; the lost bytes are only logged."""
    bus = await connect(BusConfig(prefix=prefix), "t", servers=[own_server.url])
    await own_server.stop()
    await wait_until(lambda: not bus.nc.is_connected)
    assert await bus.publish(bus.subjects.metrics("h", "host"), BATCH)
    await asyncio.wait_for(bus.close(timeout=0.2), timeout=10)
    assert bus.nc.is_closed


async def test_publishes_buffered_during_an_outage_arrive_after_reconnect(
    own_server: EmbeddedServer, prefix: str
) -> None:
    config = BusConfig(prefix=prefix, max_reconnect_delay=Duration.parse("200ms"))
    bus = await connect(config, "t", servers=[own_server.url])
    subject = bus.subjects.health("h", "probe", "api")
    try:
        sub = await bus.nc.subscribe(subject)
        await bus.nc.flush(timeout=5)
        await own_server.stop()
        await wait_until(lambda: not bus.nc.is_connected)

        assert await bus.publish(subject, HEALTH)
        await asyncio.wait_for(own_server.start(), timeout=30)
        await wait_until(lambda: bus.nc.is_connected, timeout=15)

        msg = await sub.next_msg(timeout=10)
        assert health_event.decode(msg.data, msg.subject) == HEALTH
        assert bus.stats.dropped == bus.stats.errors == 0
    finally:
        await asyncio.wait_for(bus.close(timeout=1), timeout=10)


async def test_one_refused_stream_does_not_leave_the_others_missing(bus: Bus, prefix: str) -> None:
    """A stream the server refuses is reported; every other stream and bucket is still made."""
    js = bus.nc.jetstream()
    await js.add_stream(name=f"squatter_{prefix}", subjects=[f"{prefix}.health.>"])

    with pytest.raises(ProvisioningError) as info:
        await provision(js, bus.subjects, small_streams())

    assert len(info.value.failures) == 1
    assert info.value.failures[0].startswith(f"stream {stream_name(prefix, 'health')}:")
    for family in ("metrics", "heartbeat", "alerts", "notifications"):
        await js.stream_info(stream_name(prefix, family))
    for bucket in KV_BUCKETS:
        await js.key_value(bucket_name(prefix, bucket))
