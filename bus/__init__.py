"""The wire: event types, subjects, the NATS connection, JetStream and the embedded server."""
