"""`up --interval`: every agent collects at one interval, as `post-golive-monitor.sh --continuous` asks."""

from __future__ import annotations

import msgspec

from bus import vocabulary as vocab
from bus.units import Duration, dec_hook, enc_hook
from jarvis_monitor.config import Config, ConfigError


def with_agent_interval(config: Config, interval: Duration) -> Config:
    """`config` with every agent's interval set to `interval`, validated as the file would be.

    A jitter or collection timeout that no longer fits is dropped (the interval is the point);
    a check whose own timeout cannot fit is refused with its key path, as `check-config` would.
    """
    agents = config.agents
    changed = {}
    for name in vocab.AGENTS:
        table = msgspec.to_builtins(getattr(agents, name), enc_hook=enc_hook)
        table["interval"] = str(interval)
        if Duration.parse(table["jitter"]).seconds >= interval.seconds:
            table["jitter"] = "0s"
        if table.get("timeout") is not None and Duration.parse(table["timeout"]).seconds > interval.seconds:
            table["timeout"] = None
        try:
            changed[name] = msgspec.convert(table, type(getattr(agents, name)), dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            raise ConfigError([f"--interval {interval}: agents.{name}: {exc}"]) from None
    return msgspec.structs.replace(config, agents=msgspec.structs.replace(agents, **changed))
