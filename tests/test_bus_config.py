"""The bus section of the config: typed, validated on load, with the documented defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from bus.config import DEFAULT_MAX_BYTES, BusConfig, CappedStreamConfig, StreamsConfig, TLSConfig
from bus.jetstream import ack_reply
from bus.units import Duration, dec_hook, enc_hook
from jarvis_monitor.cli import main
from jarvis_monitor.commands import EXIT_CONFIG

GIB = 1024**3


def load(raw: dict[str, Any]) -> BusConfig:
    return msgspec.convert(raw, BusConfig, dec_hook=dec_hook)


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(msgspec.ValidationError) as info:
        load(raw)
    return str(info.value)


def test_empty_section_gives_the_defaults() -> None:
    config = load({})
    assert config == BusConfig()
    assert config.prefix == "jarvis"
    assert config.servers == []
    assert config.connect_timeout == Duration(5)
    assert config.streams.metrics.max_age == Duration.parse("30d")
    assert config.streams.duplicate_window == Duration.parse("1h")
    assert not config.tls.enabled


def test_toml_section_is_read_with_durations_and_nested_tables() -> None:
    text = """
    servers = ["nats://10.0.0.5:4222", "nats://10.0.0.6:4222"]
    prefix = "acme.jarvis"
    connect_timeout = "250ms"
    [streams.metrics]
    max_age = "7d"
    max_bytes = 4294967296
    """
    config = msgspec.toml.decode(text, type=BusConfig, dec_hook=dec_hook)
    assert config.servers == ["nats://10.0.0.5:4222", "nats://10.0.0.6:4222"]
    assert config.prefix == "acme.jarvis"
    assert config.connect_timeout == Duration(0.25)
    assert config.streams.metrics == CappedStreamConfig(max_age=Duration(7 * 86400), max_bytes=4 * GIB)
    assert config.streams.health == CappedStreamConfig()


def test_config_written_back_out_reads_in_unchanged() -> None:
    config = load(
        {
            "prefix": "acme",
            "user": "jarvis",
            "password_file": "/etc/jarvis/nats-password",
            "max_reconnect_delay": "2s",
            "streams": {"heartbeat": {"max_age": "1d", "max_bytes": -1}},
        }
    )
    assert load(msgspec.to_builtins(config, enc_hook=enc_hook)) == config


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"server": ["nats://x"]}, "server"),
        ({"tls": {"ca": "/x"}}, "ca"),
        ({"streams": {"traces": {}}}, "traces"),
        ({"streams": {"metrics": {"max_size": 5}}}, "max_size"),
    ],
)
def test_unknown_keys_are_refused_by_name(raw: dict[str, Any], key: str) -> None:
    assert f"unknown field `{key}`" in refused(raw)


@pytest.mark.parametrize("prefix", ["", "jarvis.*", "jarvis.>", "a b", "a..b"])
def test_bad_prefix_is_refused(prefix: str) -> None:
    assert "invalid subject prefix" in refused({"prefix": prefix})


@pytest.mark.parametrize(
    "tls", [{"cert_file": "/c.pem"}, {"key_file": "/k.pem"}, {"ca_file": "/ca", "cert_file": "/c"}]
)
def test_client_certificate_without_its_key_is_refused(tls: dict[str, str]) -> None:
    message = refused({"tls": tls})
    assert "cert_file and key_file must be given together" in message
    assert "$.tls" in message


def test_tls_is_enabled_by_any_file() -> None:
    assert TLSConfig(ca_file="/ca.pem").enabled
    assert TLSConfig(cert_file="/c.pem", key_file="/k.pem").enabled
    assert not TLSConfig().enabled


@pytest.mark.parametrize("family", ["alerts", "notifications"])
def test_size_cap_on_alert_streams_is_refused(family: str) -> None:
    """Alert streams have no max_bytes key at all: alerts may not be dropped for space."""
    message = refused({"streams": {family: {"max_bytes": GIB}}})
    assert "unknown field `max_bytes`" in message
    assert f"$.streams.{family}" in message


@pytest.mark.parametrize("family", ["alerts", "notifications"])
def test_alert_streams_are_never_capped(family: str) -> None:
    assert load({"streams": {family: {"max_age": "90d"}}}).streams.max_bytes(family) == -1


def test_size_cap_below_minus_one_is_refused() -> None:
    assert "$.streams.metrics.max_bytes" in refused({"streams": {"metrics": {"max_bytes": -2}}})


def test_negative_reconnect_buffer_is_refused() -> None:
    assert "$.reconnect_buffer" in refused({"reconnect_buffer": -1})


def test_password_file_without_user_is_refused() -> None:
    assert "password_file needs user" in refused({"password_file": "/etc/jarvis/pw"})


def test_integer_duration_is_refused_with_its_key_path() -> None:
    message = refused({"connect_timeout": 5})
    assert "invalid duration 5" in message
    assert "$.connect_timeout" in message


def test_bad_duration_text_is_refused_with_its_key_path() -> None:
    message = refused({"streams": {"metrics": {"max_age": "30 days"}}})
    assert "invalid duration" in message
    assert "$.streams.metrics.max_age" in message


@pytest.mark.parametrize(
    ("family", "default"),
    [
        ("metrics", 2 * GIB),
        ("health", GIB),
        ("heartbeat", 256 * 1024**2),
        ("alerts", -1),
        ("notifications", -1),
        ("logs", GIB),
    ],
)
def test_max_bytes_gives_family_defaults(family: str, default: int) -> None:
    assert StreamsConfig().max_bytes(family) == default
    assert DEFAULT_MAX_BYTES[family] == default


def test_max_bytes_honours_overrides() -> None:
    streams = load({"streams": {"metrics": {"max_bytes": 4 * GIB}, "health": {"max_bytes": -1}}}).streams
    assert streams.max_bytes("metrics") == 4 * GIB
    assert streams.max_bytes("health") == -1
    assert streams.max_bytes("heartbeat") == 256 * 1024**2


def test_replicas_default_to_one_copy_and_a_cluster_may_ask_for_three() -> None:
    assert BusConfig().replicas == 1
    assert load({"replicas": 3}).replicas == 3


@pytest.mark.parametrize("count", [0, 6, -1])
def test_a_replica_count_jetstream_cannot_keep_is_refused_with_what_to_set(count: int) -> None:
    message = refused({"replicas": count})
    assert f"replicas: {count} is not a replica count" in message
    assert "set 1 for a single server, 3 for a 3-node cluster" in message


def test_check_config_names_bad_replicas_in_the_bus_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "jarvis.toml"
    path.write_text("[bus]\nreplicas = 7\n", encoding="utf-8")
    assert main(["check-config", str(path)]) == EXIT_CONFIG
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("bus: replicas: 7 is not a replica count: JetStream keeps 1 to 5 copies")


def test_a_delivery_reply_subject_is_read_in_both_layouts() -> None:
    """Before nats-server 2.9, and with the domain, account hash and random token after it."""
    assert ack_reply("$JS.ACK.JARVIS_METRICS.evaluator.1.42.7.1764593234700000001.3") == (
        42,
        7,
        1764593234700000001,
        3,
    )
    assert ack_reply("$JS.ACK._.ABCDEF.JARVIS_METRICS.report.2.43.8.1764593234700000002.0.x1y2") == (
        43,
        8,
        1764593234700000002,
        0,
    )
    with pytest.raises(ValueError, match="not a JetStream delivery"):
        ack_reply("_INBOX.abc.1")
