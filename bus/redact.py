"""Keeping secrets out of logs and events: credentials embedded in URLs are masked."""

from __future__ import annotations

import re


def redact_url(url: str) -> str:
    """The URL with any user info replaced by `***`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    _, at, hostport = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}{sep}***@{hostport}"


def redact_text(text: str) -> str:
    """Free text (an exception message) with the user info of every URL in it masked."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)\S*@", r"\1***@", text)
