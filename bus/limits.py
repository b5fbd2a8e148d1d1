"""Bounds of what a decoder accepts: a field, label or list over its bound is a counted reject.

msgspec's reason names the field, so one hostile event (a 400 KB host name) is refused where it
is decoded and can never become a notification the server refuses.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

MAX_NAME = 1024  # host, agent, target, rule, metric and label names, event kinds
MAX_LABEL_VALUE = 4096
MAX_LABELS = 64
MAX_TEXT = 16384  # detail, summary, description
MAX_SAMPLES = 50_000  # samples in one batch
# An agent's interval: its series go stale, and its agent_down fires, after a few of them, so one
# of a year (a unit mistaken) would keep a dead agent quiet for years.
MAX_INTERVAL = 86400.0

Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
LabelValue = Annotated[str, msgspec.Meta(max_length=MAX_LABEL_VALUE)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Labels = Annotated[dict[Name, LabelValue], msgspec.Meta(max_length=MAX_LABELS)]
Interval = Annotated[float, msgspec.Meta(gt=0, le=MAX_INTERVAL)]
