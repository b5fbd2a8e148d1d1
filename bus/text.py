"""Characters outside text must never carry where it is shown (Slack, HTML, Markdown, terminal)."""

from __future__ import annotations

# Bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069): they reorder what follows
# them on screen, so "exe.txt" can show as "txt.exe". For a regex character class.
BIDI_CONTROLS = "\u202a-\u202e\u2066-\u2069"
