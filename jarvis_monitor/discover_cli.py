"""`jarvis-monitor discover`: the HTTP checks the probe finds on Docker's containers, as TOML to keep."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from agents.probe_config import HttpCheck
from agents.probe_discovery import Discovered, Discovery, Found, judge
from jarvis_monitor.commands import EXIT_FAILURE, EXIT_OK, run_async

if TYPE_CHECKING:
    from jarvis_monitor.commands import Subparsers
    from jarvis_monitor.config import Config


def register(commands: Subparsers) -> None:
    """Add `discover` to `commands`."""
    parser = commands.add_parser(
        "discover", help="print the HTTP checks found on Docker's containers (jarvis.check.* labels) as TOML"
    )
    parser.set_defaults(handler=cmd_discover)


def _toml(value: Any) -> str:
    """A TOML value: strings as JSON escapes them (a subset of TOML's basic strings), lists, numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _check_table(found: Found, check: HttpCheck) -> list[str]:
    lines = [f"# container {found.container}", "[[agents.probe.http]]"]
    lines += [f"name = {_toml(check.name)}", f"url = {_toml(check.url)}"]
    if check.method != "GET":
        lines.append(f"method = {_toml(check.method)}")
    if check.expected_status:
        lines.append(f"expected_status = {_toml(check.expected_status)}")
    for key in ("timeout", "warn_latency"):
        value = getattr(check, key)
        if value is not None:
            lines.append(f"{key} = {_toml(str(value))}")
    if check.body_contains is not None:
        lines.append(f"body_contains = {_toml(check.body_contains)}")
    if not check.verify_tls:
        lines.append("verify_tls = false")
    return lines


def render(result: Discovered) -> str:
    """The discovered checks as [[agents.probe.http]] tables, SLAs with targets as report services,
    and each refused container as a comment saying why."""
    out: list[str] = []
    for found in result.found:
        if found.check is None:
            out += [
                f"# container {found.container} is {found.state}: check {found.name!r} has no address",
                "",
            ]
            continue
        out += [*_check_table(found, found.check), ""]
        sla = found.sla
        if sla is not None and (sla.availability_percent is not None or sla.latency_p95 is not None):
            out += [
                "[[sinks.report.services]]",
                f"name = {_toml(sla.name)}",
                f"checks = {_toml([found.name])}",
            ]
            if sla.availability_percent is not None:
                out.append(f"availability_percent = {_toml(sla.availability_percent)}")
            if sla.latency_p95 is not None:
                out.append(f"latency_p95 = {_toml(str(sla.latency_p95))}")
            out.append("")
    for refusal in result.refused:
        out += [f"# refused: {refusal.detail}".replace("\n", " "), ""]
    if not out:
        out = ["# no container carries jarvis.check.* labels", ""]
    return "\n".join(out)


async def discover(config: Config) -> int:
    probe = config.agents.probe
    discovery = Discovery(probe.discovery)
    try:
        entries = await discovery.list_containers()
    except Exception as exc:
        print(f"jarvis-monitor: error: cannot list the Docker engine's containers: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await discovery.close()
    sys.stdout.write(render(judge(entries, probe, probe.discovery)))
    return EXIT_OK


def cmd_discover(args: argparse.Namespace, config: Config) -> int:
    return run_async(discover(config))
