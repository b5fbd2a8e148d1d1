"""Agents that collect and publish: host, container, probe, and their shared run loop."""
