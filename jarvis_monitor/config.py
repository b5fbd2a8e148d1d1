"""The whole config: one TOML file composed of each part's own struct, checked before anything starts."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import msgspec
from msgspec import Meta

from agents.config import AgentsConfig
from agents.postgres_config import password_file_problems
from agents.probe_config import PromQLQuery
from bus import vocabulary
from bus.config import BusConfig
from bus.connection import BusConfigError, resolve_credentials, tls_context
from bus.server import ServerConfig
from bus.units import dec_hook
from evaluator.config import EvaluatorConfig, Rule
from evaluator.watchdog_config import WatchdogError, watchdog_url
from sinks.config import SinksConfig
from sinks.console.config import ConsoleConfigError, resolve_token
from sinks.slack_config import SlackConfigError, resolve_secrets

S = TypeVar("S", bound=msgspec.Struct)


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


def _describe(error: msgspec.ValidationError | str, table: str) -> str:
    """One line for a validation error inside `table` ("" or "agents.host"): key path first."""
    match = _AT.match(str(error))
    msg, path = (match["msg"], match["path"]) if match else (str(error), "")
    path = f"{table}{path}".lstrip(".")
    unknown = _UNKNOWN.match(msg)
    if unknown:
        return f"{path}.{unknown['field']}: unknown key".lstrip(".")
    return f"{path or '(top level)'}: {msg}"


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _struct_of(tp: Any) -> type[msgspec.Struct] | None:
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def _item_struct_of(tp: Any) -> type[msgspec.Struct] | None:
    """The struct of a list-of-tables field (`[[evaluator.rules]]`), else None."""
    tp = _unwrap(tp)
    return _struct_of(get_args(tp)[0]) if get_origin(tp) is list and get_args(tp) else None


def _key_problems(
    key: str, value: Any, field: msgspec.structs.FieldInfo, struct: type[msgspec.Struct], table: str
) -> list[str]:
    """The problems of one key on its own: inside its sub-table or its list of tables, or of its value."""
    sub_struct = _struct_of(field.type)
    if sub_struct is not None and isinstance(value, dict):
        return _problems(value, sub_struct, f"{table}.{key}")
    item_struct = _item_struct_of(field.type)
    if item_struct is not None and isinstance(value, list):
        found = [
            problem
            for index, item in enumerate(value)
            if isinstance(item, dict)
            for problem in _problems(item, item_struct, f"{table}.{key}[{index}]")
        ]
        if found:
            return found
    try:
        msgspec.convert({key: value}, struct, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        if _AT.match(str(exc)):  # an error without a key path is a rule across keys: see _table_rules
            return [_describe(exc, table)]
    return []


def _table_rules(
    document: Mapping[str, Any], struct: type[msgspec.Struct], table: str, bad: set[str]
) -> list[str]:
    """Problems of the table's own rules (its `__post_init__`), judged on the keys right on their own.

    msgspec names only the first of them: a key that alone (with the defaults) breaks the same rule
    is named and set aside, and the rest judged again. A rule across keys is named only when no
    key was set aside before, since a key replaced by its default proves nothing about the rule.
    """
    required = [f.encode_name for f in msgspec.structs.fields(struct) if f.required]
    absent = [key for key in required if key not in document]
    if absent or bad.intersection(required):  # without them no rule of the table can be judged
        return [_describe(f"Object missing required field `{key}`", table) for key in absent]
    keys = {key: value for key, value in document.items() if key not in bad}
    base = {key: keys[key] for key in required}
    problems: list[str] = []
    while (error := _error(keys, struct)) is not None:
        culprit = _culprit(keys, base, struct, error)
        if culprit is None and (problems or bad):
            break
        problems.append(_describe(error, table))
        if culprit is None:
            break
        del keys[culprit]
    return problems


def _culprit(
    keys: Mapping[str, Any], base: Mapping[str, Any], struct: type[msgspec.Struct], error: str
) -> str | None:
    """The first key that alone, besides the required ones, gives `error`; None if no key does."""
    if _error(base, struct) is not None:  # the required keys alone fail: no key can be judged alone
        return None
    others = (key for key in keys if key not in base)
    return next((key for key in others if _error({**base, key: keys[key]}, struct) == error), None)


def _error(document: Mapping[str, Any], struct: type[msgspec.Struct]) -> str | None:
    """The first problem msgspec finds in `document`, or None when it converts."""
    try:
        msgspec.convert(document, struct, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        return str(exc)
    return None


def _problems(document: Mapping[str, Any], struct: type[msgspec.Struct], table: str) -> list[str]:
    """Every problem in one table, key by key and then the table's own rules, recursing into sub-tables."""
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    problems = []
    bad = set()
    for key, value in document.items():
        field = fields.get(key)
        if field is None:
            retired = getattr(struct, "RETIRED_KEYS", {}).get(key, "unknown key")
            found = [f"{table}.{key}: {retired}".lstrip(".")]
        else:
            found = _key_problems(key, value, field, struct, table)
        if found:
            problems += found
            bad.add(key)
    return problems + _table_rules(document, struct, table, bad)


def declared_metrics(queries: Iterable[PromQLQuery]) -> frozenset[str]:
    """Every metric an agent can publish: the catalogues, and the names the probe's PromQL queries give."""
    return vocabulary.declared_metrics() | {query.metric_name for query in queries}


def metric_problems(rules: Mapping[int, Rule], declared: frozenset[str]) -> list[str]:
    """Rules (by index in `[[evaluator.rules]]`) on a metric nobody publishes never fire: name the nearest."""
    problems = []
    for index, rule in rules.items():
        if rule.kind != "metrics" or rule.metric is None or rule.metric in declared:
            continue
        nearest = difflib.get_close_matches(rule.metric, sorted(declared), n=3)
        hint = (
            f"did you mean {', '.join(nearest)}?"
            if nearest
            else "docs/events.md lists the agents' metrics; [[agents.probe.promql]] queries add their own"
        )
        problems.append(f"evaluator.rules[{index}].metric: no agent publishes {rule.metric!r}; {hint}")
    return problems


def _tables_at(document: Mapping[str, Any], path: str) -> list[Any]:
    """The list of tables at a dotted key path ("evaluator.rules"), or [] when there is none."""
    node: Any = document
    for key in path.split("."):
        node = node.get(key, {}) if isinstance(node, Mapping) else {}
    return node if isinstance(node, list) else []


def _convert(item: Any, tp: type[S]) -> S | None:
    try:
        return msgspec.convert(item, tp, dec_hook=dec_hook)
    except msgspec.ValidationError:
        return None


def _metric_problems(document: Mapping[str, Any]) -> list[str]:
    """`metric_problems` of the rules that are right on their own, once every PromQL query is too."""
    queries = [_convert(item, PromQLQuery) for item in _tables_at(document, "agents.probe.promql")]
    valid = [query for query in queries if query is not None]
    if len(valid) < len(queries):  # a broken query may be the one that publishes the metric
        return []
    rules = {
        index: rule
        for index, item in enumerate(_tables_at(document, "evaluator.rules"))
        if (rule := _convert(item, Rule)) is not None
    }
    return metric_problems(rules, declared_metrics(valid))


def parse_config(document: Mapping[str, Any]) -> Config:
    """Validate a decoded TOML document, reporting every problem at once, one line each."""
    problems = _problems(document, Config, "") + _metric_problems(document)
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
    if config.agents.postgres.enabled:  # a password file that cannot be read is found now, as NATS's
        problems = password_file_problems(config.agents.postgres)
        if problems:
            raise ConfigError(problems)
    if config.sinks.slack.enabled:
        try:  # the Slack secrets, from their files or the environment, before anything starts
            resolve_secrets(config.sinks.slack, environ)
        except SlackConfigError as exc:
            raise ConfigError([str(exc)]) from None
    if config.sinks.console.enabled:
        try:  # a console on a public address without a token never starts
            resolve_token(config.sinks.console, environ)
        except ConsoleConfigError as exc:
            raise ConfigError([str(exc)]) from None
    if config.evaluator.enabled:
        try:  # the watchdog URL too: a watchdog that cannot ping is found now, not at 3 a.m.
            watchdog_url(config.evaluator.watchdog, environ)
        except WatchdogError as exc:
            raise ConfigError([str(exc)]) from None
    return config
