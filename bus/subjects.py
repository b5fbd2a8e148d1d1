"""Subject names of the contract, with every outside token sanitised so it stays one token."""

from __future__ import annotations

import functools
import hashlib
import re

# `.` splits tokens, `*` and `>` are wildcards, whitespace ends a subject, and control characters
# (C0 and C1, whose 0x9b starts a terminal escape) must never reach a `nats sub` terminal.
_UNSAFE = re.compile(r"[.*>\s\x00-\x1f\x7f-\x9f]")
MAX_TOKEN = 128
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


# The hosts, agents and targets of a fleet are few and come again on every input, whose subject a
# consumer builds to check it (bus.events.from_its_source).
@functools.lru_cache(maxsize=4096)
def sanitize_token(value: str) -> str:
    """One subject token from any outside string: unsafe characters become `_`, never empty.

    Over-long values are cut and suffixed with a short hash so distinct inputs stay distinct.
    """
    token = _UNSAFE.sub("_", value) or "_"
    if len(token) > MAX_TOKEN:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        token = f"{token[: MAX_TOKEN - 11]}~{digest}"
    return token


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if it is one or more plain tokens, else raise ValueError."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            f"invalid subject prefix {prefix!r}: use letters, digits, '_' or '-', with '.' between tokens"
        )
    return prefix


class Subjects:
    """Builds the subjects of the contract under one prefix (`jarvis` by default)."""

    def __init__(self, prefix: str = "jarvis") -> None:
        self.prefix = validate_prefix(prefix)

    def _join(self, *tokens: str) -> str:
        return ".".join((self.prefix, *map(sanitize_token, tokens)))

    def metrics(self, host: str, agent: str) -> str:
        return self._join("metrics", host, agent)

    def health(self, host: str, agent: str, target: str) -> str:
        return self._join("health", host, agent, target)

    def heartbeat(self, host: str, agent: str) -> str:
        return self._join("heartbeat", host, agent)

    def source(self, family: str, host: str, agent: str, target: str = "") -> str:
        """The subject of an input of `family` (metrics, health or heartbeat) from this source."""
        tokens = (host, agent, target) if family == "health" else (host, agent)
        return self._join(family, *tokens)

    def alerts(self, severity: str, host: str, rule: str) -> str:
        return self._join("alerts", severity, host, rule)

    def logs(self, host: str, container: str) -> str:
        return self._join("logs", host, container)

    def notifications(self, route: str) -> str:
        return self._join("notifications", route)

    def deadletter(self, route: str) -> str:
        """Where undeliverable notifications are kept: `jarvis.deadletter.notifications.<route>`."""
        return self._join("deadletter", "notifications", route)

    def dead_letter(self, family: str, *tokens: str) -> str:
        """Where a consumer keeps what it gave up on: `jarvis.deadletter.<family>.<tokens...>`."""
        return self._join("deadletter", family, *tokens)

    def tokens_of(self, subject: str) -> list[str]:
        """The tokens of a subject after this prefix (`metrics`, `web01`, `host` of
        `acme.jarvis.metrics.web01.host`): prefixes may hold dots."""
        return subject.removeprefix(self.prefix + ".").split(".")

    def family_of(self, subject: str) -> str:
        """The family of a subject under this prefix (`metrics` of `acme.jarvis.metrics.web01.host`)."""
        return self.tokens_of(subject)[0]

    def family(self, family: str) -> str:
        """Wildcard over one family, e.g. `jarvis.metrics.>`."""
        return f"{self.prefix}.{family}.>"

    @property
    def everything(self) -> str:
        """Wildcard over the whole stream, `jarvis.>`."""
        return f"{self.prefix}.>"
