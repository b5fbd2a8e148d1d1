"""Agents on a machine without Docker: a clear reason, never a crash (aiodocker 0.27 asserts)."""

from __future__ import annotations

from pathlib import Path

import aiodocker.docker
import pytest

from agents.container import ContainerAgentConfig, ContainerCollector
from agents.docker_client import docker_client
from agents.probe_config import DiscoveryConfig, ProbeAgentConfig
from agents.probe_discovery import Discovery


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DOCKER_HOST, no Docker context, and no socket where aiodocker looks for one."""
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(aiodocker.docker, "_sock_search_paths", [tmp_path / "docker.sock"])


@pytest.mark.usefixtures("no_docker")
def test_no_engine_is_a_value_error_that_says_what_is_missing() -> None:
    with pytest.raises(ValueError, match="no Docker engine: DOCKER_HOST is unset and no Docker socket"):
        docker_client(None)


@pytest.mark.usefixtures("no_docker")
async def test_the_probe_discovers_nothing_and_goes_on_without_an_engine() -> None:
    discovery = Discovery(DiscoveryConfig())
    discovered = await discovery.refresh(ProbeAgentConfig())
    assert (discovered.run, discovered.decided, discovery.found) == ([], [], {})


@pytest.mark.usefixtures("no_docker")
async def test_the_container_agent_reports_the_engine_unreachable_with_the_reason() -> None:
    collection = await ContainerCollector(ContainerAgentConfig()).collect()
    [check] = collection.checks
    assert check.status == "critical"
    assert "Docker engine unreachable: no Docker engine: DOCKER_HOST is unset" in (check.detail or "")
