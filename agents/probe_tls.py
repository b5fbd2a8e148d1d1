"""The expiry of the certificate an HTTPS check was served, read from its DER form.

The binary form is what the TLS layer hands out whether or not the certificate was verified
(`getpeercert()` is empty without verification), so one path serves `verify_tls = false` too,
and an expired certificate still says when it expired.
"""

from __future__ import annotations

import asyncio
import calendar
import ssl
import time
from urllib.parse import urlsplit

_SEQUENCE = 0x30
_EXPLICIT_VERSION = 0xA0
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18


def _item(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`; ValueError if cut short."""
    if pos + 2 > len(der):
        raise ValueError("truncated element")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:  # long form: the next (length & 0x7F) bytes hold the length
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(der):
            raise ValueError("bad length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated content")
    return tag, pos, pos + length


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    items = []
    while start < end:
        item = _item(der, start)
        items.append(item)
        start = item[2]
    return items


def _time(tag: int, text: str) -> float:
    if tag == _UTC_TIME:  # YYMMDDHHMMSSZ; RFC 5280: years 50-99 are 19xx
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME:
        raise ValueError(f"not a time (tag {tag:#x})")
    parsed = time.strptime(text, "%Y%m%d%H%M%SZ")
    return float(calendar.timegm(parsed))


def cert_not_after(der: bytes) -> float:
    """notAfter of an X.509 certificate, in seconds since the epoch; ValueError if it is not one."""
    tag, start, end = _item(der, 0)
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    tag, start, end = _item(der, start)  # tbsCertificate
    if tag != _SEQUENCE:
        raise ValueError("no tbsCertificate")
    fields = _children(der, start, end)
    if fields and fields[0][0] == _EXPLICIT_VERSION:
        fields = fields[1:]
    if len(fields) < 4 or fields[3][0] != _SEQUENCE:  # serial, signature, issuer, validity
        raise ValueError("no validity")
    validity = _children(der, fields[3][1], fields[3][2])
    if len(validity) != 2:
        raise ValueError("bad validity")
    tag, start, end = validity[1]
    try:
        return _time(tag, der[start:end].decode("ascii"))
    except UnicodeDecodeError:
        raise ValueError("bad time") from None


def _reading_context() -> ssl.SSLContext:
    """A context that accepts any certificate: the HTTP check judges trust, this only reads dates."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_READING = _reading_context()


async def served_cert_expiry(url: str, timeout: float) -> float | None:
    """notAfter of the certificate an https URL's server presents, by a handshake of its own (as
    Datadog's http_check does: aiohttp lets a finished response's connection go before it can be
    asked); None for http, when the handshake fails, or when the certificate cannot be read."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or timeout <= 0:
        return None
    writer = None
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                parts.hostname, parts.port or 443, ssl=_READING, server_hostname=parts.hostname
            )
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            return cert_not_after(der) if der else None
    except (OSError, TimeoutError, ValueError, ssl.SSLError):
        return None
    finally:
        if writer is not None:
            writer.close()
