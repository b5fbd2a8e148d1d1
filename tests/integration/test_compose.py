"""deploy/compose.yaml: Debian's docker-compose accepts it, with every part, the socket read-only and
each part as its own NATS user; the config it mounts passes check-config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PASSWORDS = {
    "AGENT_NATS_PASSWORD": "agent-secret",
    "EVALUATOR_NATS_PASSWORD": "evaluator-secret",
    "SLACK_NATS_PASSWORD": "slack-secret",
    "REPORT_NATS_PASSWORD": "report-secret",
    "OPERATOR_NATS_PASSWORD": "operator-secret",
}
PARTS = {
    "agent-host": (["agent", "host"], "agent"),
    "agent-container": (["agent", "container"], "agent"),
    "agent-probe": (["agent", "probe"], "agent"),
    "evaluator": (["evaluator"], "evaluator"),
    "sink-slack": (["sink", "slack"], "slack"),
    "sink-report": (["sink", "report"], "report"),
    "console": (["console"], "operator"),
}


def compose_config(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    require(binary is not None, "docker-compose is not installed (Debian: apt-get install docker-compose)")
    assert binary is not None
    env = {"PATH": os.environ.get("PATH", ""), **environ}
    return subprocess.run(
        [binary, "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    done = compose_config({**PASSWORDS, "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x"})
    assert done.returncode == 0, done.stderr
    # no YAML parser of our own: docker-compose's interpreter (Debian's python3-yaml) turns it to JSON
    interpreter = Path(shutil.which("docker-compose") or "").read_text().splitlines()[0].removeprefix("#!")
    as_json = subprocess.run(
        [
            *interpreter.split(),
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ],
        input=done.stdout,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    parsed: dict[str, Any] = json.loads(as_json.stdout)["services"]
    return parsed


def test_compose_runs_nats_and_every_part_with_the_mounted_config(services: dict[str, Any]) -> None:
    assert set(services) == {"nats", *PARTS}
    for name, (command, _) in PARTS.items():
        service = services[name]
        assert service["command"] == ["-c", "/etc/jarvis/jarvis.toml", *command], name
        assert service["restart"] == "unless-stopped", name
        mounts = {volume.split(":")[1]: volume for volume in service["volumes"]}
        assert mounts["/etc/jarvis/jarvis.toml"] == f"{DEPLOY}/compose.toml:/etc/jarvis/jarvis.toml:ro", name


def test_only_the_container_agent_has_the_docker_socket_and_read_only(services: dict[str, Any]) -> None:
    holders = {
        name: volume
        for name, service in services.items()
        for volume in service.get("volumes", [])
        if "docker.sock" in volume
    }
    assert holders == {"agent-container": "/var/run/docker.sock:/var/run/docker.sock:ro"}


def test_each_part_connects_as_its_own_nats_user_with_its_own_inbox(services: dict[str, Any]) -> None:
    for name, (_, user) in PARTS.items():
        environment = services[name]["environment"]
        assert environment["JARVIS_NATS_USER"] == user, name
        assert environment["JARVIS_NATS_INBOX_PREFIX"] == f"_INBOX_{user}", name
        assert environment["JARVIS_NATS_PASSWORD"] == f"{user}-secret", name
    assert services["sink-slack"]["environment"]["SLACK_WEBHOOK_URL"].startswith("https://hooks.slack.com/")


def test_nats_mounts_the_per_role_server_config_and_listens_on_loopback(services: dict[str, Any]) -> None:
    nats = services["nats"]
    assert f"{DEPLOY}/nats-server.conf:/etc/nats/nats-server.conf:ro" in nats["volumes"]
    assert nats["command"] == ["-c", "/etc/nats/nats-server.conf"]
    assert nats["ports"] == ["127.0.0.1:4222:4222/tcp"]


def test_a_missing_password_is_refused_naming_it() -> None:
    done = compose_config({k: v for k, v in PASSWORDS.items() if k != "EVALUATOR_NATS_PASSWORD"})

    assert done.returncode != 0
    assert "EVALUATOR_NATS_PASSWORD" in done.stderr


def test_the_mounted_config_passes_check_config() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jarvis_monitor", "check-config", str(DEPLOY / "compose.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stdout
