"""The whole config: one TOML file composed of each part's own struct, checked before anything starts."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec
from msgspec import Meta

from agents.config import AgentsConfig
from bus.config import BusConfig
from bus.connection import BusConfigError, resolve_credentials, tls_context
from bus.server import ServerConfig
from bus.units import dec_hook
from evaluator.config import EvaluatorConfig
from sinks.config import SinksConfig
from sinks.slack import SlackConfigError, resolve_secrets


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
    evaluator: Annotated[EvaluatorConfig, Meta(description="rules, routes, silences and inhibition")] = (
        EvaluatorConfig()
    )
    sinks: Annotated[SinksConfig, Meta(description="where alerts and reports go")] = SinksConfig()

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


def _describe(error: msgspec.ValidationError, table: str) -> str:
    """One line for a validation error inside `table` ("" or "agents.host"): key path first."""
    match = _AT.match(str(error))
    msg, path = (match["msg"], match["path"]) if match else (str(error), "")
    path = f"{table}{path}".lstrip(".")
    unknown = _UNKNOWN.match(msg)
    if unknown:
        return f"{path}.{unknown['field']}: unknown key".lstrip(".")
    return f"{path or '(top level)'}: {msg}"


def _struct_of(tp: Any) -> type[msgspec.Struct] | None:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def _problems(document: Mapping[str, Any], struct: type[msgspec.Struct], table: str) -> list[str]:
    """Every problem in one table, key by key and then the table's own rules, recursing into sub-tables."""
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    problems = []
    for key, value in document.items():
        field = fields.get(key)
        if field is None:
            problems.append(f"{table}.{key}: unknown key".lstrip("."))
            continue
        sub_struct = _struct_of(field.type)
        if sub_struct is not None and isinstance(value, dict):
            problems += _problems(value, sub_struct, f"{table}.{key}")
            continue
        try:
            msgspec.convert({key: value}, struct, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            if _AT.match(str(exc)):  # an error without a key path is a rule across keys: below
                problems.append(_describe(exc, table))
    if not problems:  # rules across keys (jitter shorter than interval) need the whole table
        try:
            msgspec.convert(dict(document), struct, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            problems.append(_describe(exc, table))
    return problems


def parse_config(document: Mapping[str, Any]) -> Config:
    """Validate a decoded TOML document, reporting every problem at once, one line each."""
    problems = _problems(document, Config, "")
    if problems:
        raise ConfigError(problems)
    return msgspec.convert(dict(document), Config, dec_hook=dec_hook)


def check_resources(config: BusConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Check what the file only names: secret files and TLS files must be readable."""
    problems = []
    for check in (lambda: resolve_credentials(config, environ), lambda: tls_context(config)):
        try:
            check()
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
        except UnicodeDecodeError as exc:
            raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
        try:
            config = parse_config(document)
        except ConfigError as exc:
            # the bus table may still be fine: report its unreadable files in the same run
            try:
                bus = msgspec.convert(document.get("bus", {}), BusConfig, dec_hook=dec_hook)
                check_resources(bus, environ)
            except msgspec.ValidationError:
                pass  # already reported
            except ConfigError as more:
                raise ConfigError(exc.problems + more.problems) from None
            raise
    check_resources(config.bus, environ)
    if config.sinks.slack.enabled:
        try:  # the Slack secrets, from their files or the environment, before anything starts
            resolve_secrets(config.sinks.slack, environ)
        except SlackConfigError as exc:
            raise ConfigError([str(exc)]) from None
    return config
