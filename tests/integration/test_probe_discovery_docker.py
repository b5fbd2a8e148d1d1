"""Discovery against a real Docker engine: a labelled container is probed from the first cycle after
its start and forgotten once removed; a container with a bad label is a warning naming it."""

from __future__ import annotations

import time

import msgspec
import pytest

from agents.probe import ProbeAgentConfig, ProbeCollector
from agents.runner import Check, Collection
from bus import vocabulary as vocab
from bus.server import free_port
from bus.units import dec_hook
from tests.integration.docker_env import IMAGE, Containers, containers, docker

pytestmark = pytest.mark.integration
__all__ = ["containers"]  # the fixture


def by_target(collection: Collection) -> dict[str, Check]:
    return {check.target: check for check in collection.checks}


async def test_a_labelled_container_is_probed_within_one_interval_and_forgotten_once_removed(
    containers: Containers,
) -> None:
    probe = msgspec.convert(
        {"interval": "2s", "discovery": {"filter_labels": [containers.label]}},
        ProbeAgentConfig,
        dec_hook=dec_hook,
    )
    collector = ProbeCollector(probe)
    port = free_port()
    name = containers.name("web")
    try:
        assert name not in by_target(await collector.collect())
        # on the host's network, so that busybox httpd on 127.0.0.1 is reachable from the test
        await docker(
            "run", "-d", "--network", "host", "--label", containers.label, "--name", name,
            "--label", f"jarvis.check.port={port}", "--label", "jarvis.check.path=/index.html",
            "--label", "jarvis.sla=Frontend",
            IMAGE, "sh", "-c", f"echo ok > /tmp/index.html && exec httpd -f -p 127.0.0.1:{port} -h /tmp",
        )  # fmt: skip
        started = time.monotonic()
        first = by_target(await collector.collect())  # the next cycle after the start sees it
        assert "frontend" in first, first
        check = first["frontend"]
        while check.status != "ok" and time.monotonic() - started < probe.interval.seconds:
            check = by_target(await collector.collect())["frontend"]  # httpd may still be starting
        assert check.status == "ok", check.detail
        assert check.labels == {
            "url": f"http://127.0.0.1:{port}/index.html",
            "container": name,
            "sla": "Frontend",
        }

        await docker("rm", "-f", name)
        assert "frontend" not in by_target(await collector.collect())
    finally:
        await collector.close()


async def test_a_bad_label_is_a_warning_naming_the_container_until_it_is_removed(
    containers: Containers,
) -> None:
    probe = msgspec.convert(
        {"discovery": {"filter_labels": [containers.label]}}, ProbeAgentConfig, dec_hook=dec_hook
    )
    collector = ProbeCollector(probe)
    name = containers.name("bad")
    target = vocab.DISCOVERY_TARGET.format(container=name)
    try:
        await containers.run("bad", "sleep", "600", options=["--label", "jarvis.check.port=eighty"])
        warning = by_target(await collector.collect())[target]
        assert warning.status == "warning"
        assert warning.detail == (
            f"container {name}: label jarvis.check.port refused: 'eighty' is not a port number (1-65535)"
        )
        await docker("rm", "-f", name)
        cleared = by_target(await collector.collect())[target]
        assert cleared.status == "ok"
        assert target not in by_target(await collector.collect())  # said once, then nothing
    finally:
        await collector.close()
