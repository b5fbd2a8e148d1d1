"""deploy/post-golive-monitor.sh: the runbook's --once, --report and --continuous, on top of the command."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

SCRIPT = Path(__file__).parents[2] / "deploy" / "post-golive-monitor.sh"
COMMAND = Path(sys.executable).parent / "jarvis-monitor"


def run(tmp_path: Path, *args: str, config: str = "") -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n{config}', encoding="utf-8")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JARVIS_")},
        "JARVIS_CONFIG": str(path),
        "JARVIS_MONITOR": str(COMMAND),
    }
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(autouse=True)
def _installed() -> None:
    require(COMMAND.exists(), f"jarvis-monitor is not installed beside {sys.executable}")
    require(shutil.which("bash") is not None, "bash is not installed")


def test_once_is_a_nagios_check_that_exits_critical_for_a_database_down(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "--once",
        config=f"""
[agents.container]
enabled = false
[[agents.probe.tcp]]
name = "postgresql"
host = "127.0.0.1"
port = {closed_port()}
timeout = "500ms"
""",
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout.startswith("JARVIS CRITICAL")
    assert "database_unreachable" in result.stdout


def test_report_writes_the_three_files_for_the_day_asked(tmp_path: Path) -> None:
    result = run(tmp_path, "--report", "2026-11-20")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "data" / "reports" / "post-golive"
    assert sorted(p.name for p in folder.iterdir()) == [
        "2026-11-20.html",
        "2026-11-20.json",
        "2026-11-20.md",
    ]


@pytest.mark.parametrize("seconds", ["x", "0", "-5"])
def test_continuous_refuses_what_is_not_a_number_of_seconds(tmp_path: Path, seconds: str) -> None:
    result = run(tmp_path, "--continuous", seconds)
    assert result.returncode == 2
    assert "--continuous" in result.stderr


def test_an_unknown_option_shows_the_usage(tmp_path: Path) -> None:
    result = run(tmp_path, "--daily")
    assert result.returncode == 2
    assert "--once" in result.stdout
