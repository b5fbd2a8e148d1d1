"""bus.inbox_prefix: the reply subjects of one NATS user (deploy/nats-server.conf gives each its own)."""

from __future__ import annotations

import msgspec
import pytest

from bus.config import BusConfig


def test_the_default_is_nats_own_inbox() -> None:
    assert BusConfig().inbox_prefix == "_INBOX"


def test_a_private_inbox_is_read_from_the_file() -> None:
    config = msgspec.toml.decode(b'inbox_prefix = "_INBOX_agent"', type=BusConfig)
    assert config.inbox_prefix == "_INBOX_agent"


@pytest.mark.parametrize("prefix", ["", "_INBOX.>", "_INBOX.*", "my inbox", "_INBOX.", "a..b"])
def test_a_prefix_that_is_no_subject_prefix_is_refused_by_its_name(prefix: str) -> None:
    """A wildcard or a blank would make the client's replies unreachable: refused before connecting."""
    with pytest.raises(msgspec.ValidationError, match="inbox_prefix"):
        msgspec.convert({"inbox_prefix": prefix}, BusConfig)
