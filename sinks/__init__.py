"""Sinks that deliver: Slack and the daily report (to come)."""
