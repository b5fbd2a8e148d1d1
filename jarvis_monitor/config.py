"""The whole config: one TOML file composed of each part's own struct, checked before anything starts."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from agents.config import AgentsConfig
from bus.config import BusConfig
from bus.connection import BusConfigError, resolve_credentials, tls_context
from bus.server import ServerConfig
from bus.units import dec_hook


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    data_dir: Annotated[
        str | None,
        Meta(
            description="where the embedded server keeps JetStream and where reports go; unset: "
            "$STATE_DIRECTORY (systemd), else ~/.local/share/jarvis-monitor",
            examples=["/var/lib/jarvis-monitor"],
        ),
    ] = None
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"],
        Meta(description="least severe log level shown"),
    ] = "info"
    bus: Annotated[BusConfig, Meta(description="the NATS connection and JetStream retention")] = BusConfig()
    server: Annotated[
        ServerConfig,
        Meta(description="the embedded nats-server `up` starts when bus.servers is empty"),
    ] = ServerConfig()
    agents: Annotated[AgentsConfig, Meta(description="the agents")] = AgentsConfig()

    def resolved_data_dir(self, environ: Mapping[str, str] = os.environ) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        if environ.get("STATE_DIRECTORY"):
            return Path(environ["STATE_DIRECTORY"].split(":")[0])
        base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "jarvis-monitor"


class ConfigError(ValueError):
    """A config that cannot be used; one line per problem, each naming its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_AT = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$", re.S)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")


def _describe(error: msgspec.ValidationError, section: str) -> str:
    text = str(error)
    match = _AT.match(text)
    msg, path = (match["msg"], match["path"]) if match else (text, "")
    path = section + re.sub(r"\[(\d+)\]", r"[\1]", path)
    unknown = _UNKNOWN.match(msg)
    if unknown:
        return f"{path}.{unknown['field']}: unknown key".lstrip(".")
    return f"{path.lstrip('.') or '(top level)'}: {msg}"


def parse_config(document: Mapping[str, Any]) -> Config:
    """Validate a decoded TOML document section by section, so one run reports every section's error."""
    fields = {f.encode_name for f in msgspec.structs.fields(Config)}
    problems = [f"{key}: unknown key" for key in document if key not in fields]
    for key, value in document.items():
        if key not in fields:
            continue
        try:
            msgspec.convert({key: value}, Config, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            problems.append(_describe(exc, ""))
    if problems:
        raise ConfigError(problems)
    return msgspec.convert(dict(document), Config, dec_hook=dec_hook)


def check_resources(config: Config, environ: Mapping[str, str] = os.environ) -> None:
    """Check what the file only names: secret files and TLS files must be readable."""
    problems = []
    try:
        resolve_credentials(config.bus, environ)
    except BusConfigError as exc:
        problems.append(str(exc))
    try:
        tls_context(config.bus)
    except BusConfigError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError(problems)


def load_config(path: str | Path | None, environ: Mapping[str, str] = os.environ) -> Config:
    """Read and check the config at `path`; None gives the built-in defaults."""
    if path is None:
        config = Config()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
        config = parse_config(document)
    check_resources(config, environ)
    return config
