"""The web console and its Prometheus /metrics endpoint, built from the event stream."""
