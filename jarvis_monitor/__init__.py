"""jarvis-monitor: event-driven monitoring on NATS for a Docker-based deployment."""

from agents.runner import VERSION as __version__

__all__ = ["__version__"]
