"""A Docker engine client, or a clear ValueError when there is no engine to connect to."""

from __future__ import annotations

import aiodocker
import aiohttp


def docker_client(url: str | None, timeout: aiohttp.ClientTimeout | None = None) -> aiodocker.Docker:
    """A client of the engine at `url` (None: DOCKER_HOST, else the local socket).

    aiodocker refuses a machine without either by an assertion (0.27) or a ValueError (before):
    both become a ValueError here, so that probing without Docker goes on.
    """
    try:
        return aiodocker.Docker(url=url, timeout=timeout)
    except (AssertionError, ValueError) as exc:
        if url is not None:
            raise ValueError(f"cannot use the Docker engine at {url}: {exc}") from None
        raise ValueError("no Docker engine: DOCKER_HOST is unset and no Docker socket was found") from None
