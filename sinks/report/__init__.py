"""The report sink: hourly rollups in SQLite and the daily post-go-live report (jinja2)."""
