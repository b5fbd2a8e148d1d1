"""HTTP checks from Docker itself: containers (or Compose services) labelled `jarvis.check.*`.

Each cycle lists the engine's containers once (one request, no inspect) and turns the labels of
each into an `HttpCheck`, validated as the config is: a check appears with its container and is
forgotten once the container is removed. A stopped container's check is critical without a
request. A label that cannot be used is a warning on target `discovery:<container>` naming the
label, and an ok once the container is fixed or gone. Nothing is guessed from a published port
that carries no label.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiodocker
import aiohttp
import msgspec

from agents.docker_client import docker_client
from agents.probe_config import DiscoveryConfig, HttpCheck, ProbeAgentConfig
from agents.runner import Check
from bus import vocabulary as vocab
from bus.limits import MAX_NAME
from bus.redact import redact_text
from bus.subjects import sanitize_token
from bus.units import Duration, dec_hook

log = logging.getLogger(__name__)

PREFIX = "jarvis.check."
URL = PREFIX + "url"
PORT = PREFIX + "port"
PATH = PREFIX + "path"
SCHEME = PREFIX + "scheme"
HOST = PREFIX + "host"
STATUS = PREFIX + "status"
NAME = PREFIX + "name"
METHOD = PREFIX + "method"
TIMEOUT = PREFIX + "timeout"
WARN_LATENCY = PREFIX + "warn_latency"
BODY_CONTAINS = PREFIX + "body_contains"
VERIFY_TLS = PREFIX + "verify_tls"
SLA = "jarvis.sla"
SLA_AVAILABILITY = "jarvis.sla.availability"
SLA_LATENCY = "jarvis.sla.latency_p95"

# label: what it sets, for the docs and `discover`
LABELS: dict[str, str] = {
    URL: "the URL to request (instead of port, path, scheme and host)",
    PORT: "the container's port to request; reached where the engine publishes it, else on the "
    "container's address",
    PATH: "the path to request on that port (default /)",
    SCHEME: "http or https (default http)",
    HOST: "the host to request the port on, instead of the published or container address",
    STATUS: "expected status codes, comma-separated (default any 2xx or 3xx)",
    NAME: "the check's name (default: its SLA's check name, else the Compose service, else the container)",
    METHOD: "HTTP method (default GET)",
    TIMEOUT: "time allowed for the request, as 3s",
    WARN_LATENCY: "a response slower than this is a warning, as 500ms",
    BODY_CONTAINS: "text the response body must contain",
    VERIFY_TLS: "true or false (default true)",
    SLA: "the SLA the check counts for: backend (Backend API), frontend, ollama or database, or the "
    "name of a [[sinks.report.services]] entry",
    SLA_AVAILABILITY: "availability target in percent, as 99.9 (printed by `discover` for the report)",
    SLA_LATENCY: "p95 latency target, as 200ms (printed by `discover` for the report)",
}
# a label the operator meant for us but misspelt must say so, not be ignored
_OURS = re.compile(r"jarvis\.(check\..*|sla(\..*)?)")
COMPOSE_SERVICE = "com.docker.compose.service"
MAX_LABEL = 2048  # longer label values are refused before they are parsed
_ANY_ADDRESS = ("", "0.0.0.0", "::")
_FIELD_LABELS = {
    "url": URL,
    "method": METHOD,
    "expected_status": STATUS,
    "timeout": TIMEOUT,
    "warn_latency": WARN_LATENCY,
    "body_contains": BODY_CONTAINS,
    "verify_tls": VERIFY_TLS,
    "name": NAME,
}


class LabelError(ValueError):
    """One label of a container cannot be used; `label` names it."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(f"{label}: {reason}")
        self.label = label
        self.reason = reason


@dataclass(frozen=True)
class SlaHint:
    """What a container's labels say of its SLA: the report's service name and targets, if any."""

    name: str
    availability_percent: float | None = None
    latency_p95: Duration | None = None


@dataclass(frozen=True)
class Found:
    """A container labelled for a check: the check (None while it is not running), and its labels."""

    container: str
    state: str
    check: HttpCheck | None
    name: str
    sla: SlaHint | None = None


@dataclass(frozen=True)
class Refused:
    """A container whose labels cannot make a check, and why."""

    container: str
    error: LabelError

    @property
    def detail(self) -> str:
        return f"container {self.container}: label {self.error.label} refused: {self.error.reason}"


@dataclass
class Discovered:
    """One listing's result: checks to run, checks already decided, and the refused containers."""

    run: list[tuple[str, HttpCheck]] = field(default_factory=list)  # (container, check)
    decided: list[Check] = field(default_factory=list)
    found: list[Found] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)


def sla_check_name(sla: str) -> str:
    """The check name an SLA label gives: a runbook SLA's name in the report, else the SLA's own."""
    key = re.sub(r"[\s_]+", "-", sla.strip().lower())
    for check, aliases in vocab.RUNBOOK_SLA_CHECKS.items():
        if key in aliases:
            return check
    return key


def _container_name(entry: Mapping[str, Any]) -> str:
    names = entry.get("Names") or []
    name = str(names[0]) if names else str(entry.get("Id", ""))[:12]
    return name.lstrip("/")


def is_labelled(labels: Mapping[str, str]) -> bool:
    return any(_OURS.fullmatch(key) for key in labels)


def _statuses(text: str) -> list[int]:
    try:
        codes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise LabelError(STATUS, f"{text[:80]!r} is not a comma-separated list of status codes") from None
    if not codes:
        raise LabelError(STATUS, "no status code given")
    return codes


def _boolean(label: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise LabelError(label, f"{text[:80]!r} is not true or false")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise LabelError(PORT, f"{text[:80]!r} is not a port number (1-65535)")
    return port


def _sla(labels: Mapping[str, str]) -> SlaHint | None:
    if SLA not in labels:
        for label in (SLA_AVAILABILITY, SLA_LATENCY):
            if label in labels:
                raise LabelError(label, f"a target without {SLA} naming the SLA it is for")
        return None
    name = labels[SLA].strip()
    if not name or not re.fullmatch(r"[\w .-]{1,100}", name):
        raise LabelError(SLA, f"{name[:80]!r} is not an SLA name (letters, digits, ' ', '-', '_', '.')")
    availability = None
    if SLA_AVAILABILITY in labels:
        try:
            availability = float(labels[SLA_AVAILABILITY].rstrip("% "))
        except ValueError:
            availability = -1.0
        if not 0 <= availability <= 100:
            raise LabelError(SLA_AVAILABILITY, f"{labels[SLA_AVAILABILITY][:80]!r} is not a percentage")
    latency = None
    if SLA_LATENCY in labels:
        try:
            latency = Duration.parse(labels[SLA_LATENCY])
        except ValueError as exc:
            raise LabelError(SLA_LATENCY, str(exc)) from None
    return SlaHint(name, availability, latency)


def check_name(labels: Mapping[str, str], container: str, sla: SlaHint | None) -> str:
    """jarvis.check.name, else the SLA's check name, else the Compose service, else the container."""
    if NAME in labels:
        name = labels[NAME].strip()
        if sla is not None and name != sla_check_name(sla.name):
            raise LabelError(
                NAME,
                f"{name!r} is not the check name of SLA {sla.name!r} ({sla_check_name(sla.name)!r}): the "
                f"report counts a check under an SLA by its name; drop one of {NAME} and {SLA}",
            )
        return name
    if sla is not None:
        return sla_check_name(sla.name)
    return str(labels.get(COMPOSE_SERVICE) or container)


def _address(entry: Mapping[str, Any], port: int, published_host: str) -> tuple[str, int]:
    """Where a running container's port is reached: published on the host, the host's own network
    (network mode host), else the container's address on its first network."""
    if (entry.get("HostConfig") or {}).get("NetworkMode") == "host":
        return published_host, port
    bindings = [
        p
        for p in entry.get("Ports") or []
        if p.get("PrivatePort") == port and p.get("Type", "tcp") == "tcp" and p.get("PublicPort")
    ]
    if bindings:
        bindings.sort(key=lambda p: ":" in str(p.get("IP", "")))  # IPv4 first
        ip = str(bindings[0].get("IP") or "")
        return (published_host if ip in _ANY_ADDRESS else ip), int(bindings[0]["PublicPort"])
    for network in ((entry.get("NetworkSettings") or {}).get("Networks") or {}).values():
        address = (network or {}).get("IPAddress")
        if address:
            return str(address), port
    raise LabelError(PORT, f"port {port} is neither published nor reachable on a container address")


def _url(labels: Mapping[str, str], entry: Mapping[str, Any], published_host: str) -> str:
    if URL in labels:
        for label in (PORT, PATH, SCHEME, HOST):
            if label in labels:
                raise LabelError(label, f"set either {URL} or {PORT} (with path, scheme, host), not both")
        return labels[URL].strip()
    if PORT not in labels:
        raise LabelError(URL, f"the container has jarvis labels but neither {URL} nor {PORT}")
    port = _port(labels[PORT])
    scheme = labels.get(SCHEME, "http").strip().lower()
    if scheme not in ("http", "https"):
        raise LabelError(SCHEME, f"{scheme[:20]!r} is neither http nor https")
    path = labels.get(PATH, "/").strip() or "/"
    if not path.startswith("/") or re.search(r"[\s#]", path):
        raise LabelError(PATH, f"{path[:80]!r} is not a path (it starts with /, without spaces)")
    if HOST in labels:
        host = labels[HOST].strip()
    else:
        host, port = _address(entry, port, published_host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{path}"


def _convert(table: dict[str, Any]) -> HttpCheck:
    try:
        return msgspec.convert(table, HttpCheck, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        text = str(exc)
        where = re.search(r"at `\$\.(\w+)", text)
        if where:
            label = _FIELD_LABELS.get(where.group(1), URL)
        else:  # a check's own validation says which field in words
            label = next((lbl for key, lbl in _FIELD_LABELS.items() if key in text), URL)
            label = METHOD if "method" in text else label
        raise LabelError(label, re.sub(r"\s*- at `\$[^`]*`", "", text)) from None


def parse_container(
    entry: Mapping[str, Any], probe: ProbeAgentConfig, published_host: str = "127.0.0.1"
) -> Found | Refused | None:
    """A listed container's check, or why its labels are refused; None when it carries no jarvis label."""
    labels: Mapping[str, str] = entry.get("Labels") or {}
    if not is_labelled(labels):
        return None
    container = _container_name(entry)
    state = str(entry.get("State") or "unknown")
    try:
        for key, value in labels.items():
            if _OURS.fullmatch(key):
                if key not in LABELS:
                    raise LabelError(key, f"not a jarvis label; known: {', '.join(sorted(LABELS))}")
                if len(value) > MAX_LABEL:
                    raise LabelError(key, f"longer than {MAX_LABEL} characters")
        sla = _sla(labels)
        name = check_name(labels, container, sla)
        if not name or len(name) > MAX_NAME:
            raise LabelError(NAME, f"a check name must be 1 to {MAX_NAME} characters")
        table: dict[str, Any] = {"name": name, "url": "http://placeholder/"}
        running = state == "running"
        if running:
            table["url"] = _url(labels, entry, published_host)
        elif URL in labels:
            table["url"] = labels[URL].strip()
        if STATUS in labels:
            table["expected_status"] = _statuses(labels[STATUS])
        if VERIFY_TLS in labels:
            table["verify_tls"] = _boolean(VERIFY_TLS, labels[VERIFY_TLS])
        for label, key in ((METHOD, "method"), (TIMEOUT, "timeout"), (WARN_LATENCY, "warn_latency")):
            if label in labels:
                table[key] = labels[label].strip()
        if BODY_CONTAINS in labels:
            table["body_contains"] = labels[BODY_CONTAINS]
        check = _convert(table)
        _within_budget(check, probe)
    except LabelError as exc:
        return Refused(container, exc)
    except ValueError as exc:  # HttpCheck's own validation (__post_init__)
        return Refused(container, LabelError(URL if "URL" in str(exc) else NAME, str(exc)))
    return Found(container, state, check if running else None, name, sla)


def _within_budget(check: HttpCheck, probe: ProbeAgentConfig) -> None:
    """The limits the probe's config puts on a configured check, put on a discovered one."""
    timeout = probe.timeout_of(check)
    if timeout > probe.deadline:
        raise LabelError(
            TIMEOUT, f"{Duration(timeout)} leaves no time within the probe's {Duration(probe.budget)} cycle"
        )
    if check.warn_latency is not None and check.warn_latency.seconds >= timeout:
        raise LabelError(WARN_LATENCY, f"{check.warn_latency} must be shorter than the timeout")


def judge(
    entries: Sequence[Mapping[str, Any]], probe: ProbeAgentConfig, config: DiscoveryConfig
) -> Discovered:
    """Checks from a container listing; names already configured, taken, or beyond max_checks refused."""
    result = Discovered()
    taken = {check.name: "the config" for _, check in probe.all_checks()}
    tokens = {sanitize_token(name): owner for name, owner in taken.items()}
    for entry in sorted(entries, key=_container_name):
        parsed = parse_container(entry, probe, config.published_host)
        if parsed is None:
            continue
        if isinstance(parsed, Found):
            owner = taken.get(parsed.name) or tokens.get(sanitize_token(parsed.name))
            if owner is not None:
                reason = f"check name {parsed.name!r} is taken by {owner}; set {NAME} to another"
                parsed = Refused(parsed.container, LabelError(NAME, reason))
            elif len(result.found) >= config.max_checks:
                reason = f"more than discovery.max_checks ({config.max_checks}) labelled containers"
                parsed = Refused(parsed.container, LabelError(PREFIX + "*", reason))
        if isinstance(parsed, Refused):
            result.refused.append(parsed)
            continue
        result.found.append(parsed)
        taken[parsed.name] = tokens[sanitize_token(parsed.name)] = f"container {parsed.container}"
        if parsed.check is not None:
            result.run.append((parsed.container, parsed.check))
        else:
            detail = f"container {parsed.container} is {parsed.state}: not probed"
            result.decided.append(Check(parsed.name, "critical", detail=detail, labels=_labels(parsed)))
    return result


def _labels(found: Found) -> dict[str, str]:
    labels = {"container": found.container}
    if found.sla is not None:
        labels["sla"] = found.sla.name
    return labels


class Discovery:
    """Lists the engine's containers each cycle; remembers which refusals to clear."""

    def __init__(self, config: DiscoveryConfig) -> None:
        self.config = config
        self._docker: aiodocker.Docker | None = None
        self._engine_up: bool | None = None
        self._refused: set[str] = set()  # containers with a warning out
        self.found: dict[str, Found] = {}  # check name -> what it came from, after the last listing

    async def list_containers(self) -> list[dict[str, Any]]:
        """Every container the engine shows (through the filter), as the list API returns them."""
        if self._docker is None:
            timeout = aiohttp.ClientTimeout(total=self.config.request_timeout.seconds)
            self._docker = docker_client(self.config.docker_host, timeout)
        params: dict[str, Any] = {"all": "1"}
        if self.config.filter_labels:
            params["filters"] = json.dumps({"label": list(self.config.filter_labels)})
        async with asyncio.timeout(self.config.request_timeout.seconds):
            listed = await self._docker._query_json("containers/json", params=params)
        return [entry for entry in listed if isinstance(entry, dict)] if isinstance(listed, list) else []

    async def refresh(self, probe: ProbeAgentConfig) -> Discovered:
        """This cycle's discovered checks; none while the engine cannot be reached."""
        try:
            entries = await self.list_containers()
        except (ValueError, aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            if self._engine_up is not False:  # once per outage: probing without Docker is normal
                log.info("probe: no Docker engine to discover checks from: %s", redact_text(str(exc)))
            self._engine_up = False
            await self.close()
            self.found = {}
            return Discovered()
        self._engine_up = True
        result = judge(entries, probe, self.config)
        self.found = {found.name: found for found in result.found}
        refused = {r.container for r in result.refused}
        for refusal in result.refused:
            target = vocab.DISCOVERY_TARGET.format(container=refusal.container)
            result.decided.append(Check(target, "warning", detail=refusal.detail))
        for container in sorted(self._refused - refused):
            target = vocab.DISCOVERY_TARGET.format(container=container)
            result.decided.append(
                Check(target, "ok", detail=f"container {container}: labels accepted or gone")
            )
        self._refused = refused
        return result

    def labels_of(self, name: str) -> dict[str, str]:
        found = self.found.get(name)
        return _labels(found) if found is not None else {}

    async def close(self) -> None:
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await docker.close()
