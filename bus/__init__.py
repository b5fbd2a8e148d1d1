"""The wire: event types, subjects, the NATS connection, JetStream and the embedded server."""

from bus.deferred import defer

# nats-py imports aiohttp (14 MB resident) for its WebSocket transport alone: deferred, a process
# that speaks nats:// never loads it, while a ws:// server or any part using aiohttp still gets it.
defer("aiohttp")
