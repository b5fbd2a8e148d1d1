"""`jarvis-monitor init`: a commented config, generated from the config structs themselves."""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import msgspec
from msgspec import inspect

from bus.units import enc_hook
from jarvis_monitor.config import Config

HEADER = """\
# jarvis-monitor configuration (TOML). Every key is shown with its built-in default;
# a commented-out key has no default and is shown with an example. Delete what you do not
# change: defaults follow the runbook. Check a file with `jarvis-monitor check-config FILE`.
# Secrets never go in this file: name a file that holds them, or use the environment
# (JARVIS_NATS_PASSWORD, JARVIS_NATS_TOKEN, SLACK_WEBHOOK_URL).
"""


def toml_value(value: Any) -> str:
    """A TOML literal for a default or example value."""
    value = msgspec.to_builtins(value, enc_hook=enc_hook)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid in TOML basic strings
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # structs and tables: an inline table
        items = (f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(items) + " }" if value else "{}"
    raise TypeError(f"no TOML literal for {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _unwrap(tp: inspect.Type) -> tuple[inspect.Type, dict[str, Any]]:
    extra: dict[str, Any] = {}
    while isinstance(tp, inspect.Metadata):
        extra = {**(tp.extra_json_schema or {}), **extra}
        tp = tp.type
    return tp, extra


def _default(field: inspect.Field) -> Any:
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return field.default


def _render(struct: inspect.StructType, path: str, description: str, out: list[str]) -> None:
    tables = []
    lines = []
    for field in struct.fields:
        tp, extra = _unwrap(field.type)
        if isinstance(tp, inspect.StructType):
            tables.append((tp, f"{path}.{field.encode_name}".lstrip("."), extra.get("description", "")))
            continue
        for line in textwrap.wrap(extra.get("description", ""), 88):
            lines.append(f"# {line}")
        default = _default(field)
        if default is None:
            example = extra.get("examples", [None])[0]
            lines.append(f"# {field.encode_name} = {toml_value(example) if example is not None else '...'}")
        else:
            example = extra.get("examples", [None])[0]
            if example is not None and default in ([], {}):  # an empty list shows what goes in it
                lines.append(f"# for example: {field.encode_name} = {toml_value(example)}")
            lines.append(f"{field.encode_name} = {toml_value(default)}")
    if path and (lines or not tables):
        out.append("")
        out += [f"# {line}" for line in textwrap.wrap(description, 88)]
        out.append(f"[{path}]")
    out += lines
    for tp, sub_path, sub_description in tables:
        _render(tp, sub_path, sub_description, out)


def render_config() -> str:
    """The commented config that documents every key with its default."""
    info = inspect.type_info(Config)
    assert isinstance(info, inspect.StructType)
    out = [HEADER]
    _render(info, "", "", out)
    return "\n".join(out) + "\n"
