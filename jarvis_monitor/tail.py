"""`jarvis-monitor tail`: a readable live view of the stream that survives any payload."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from nats.aio.msg import Msg

from bus import vocabulary as vocab
from bus.connection import connect
from bus.events import (
    SCHEMA_VERSION,
    Alert,
    Event,
    HealthEvent,
    Heartbeat,
    LogLines,
    MetricBatch,
    Notification,
    Sample,
    any_event,
)
from bus.text import BIDI_CONTROLS
from jarvis_monitor.config import Config

# Names come from the outside world; a terminal must never receive their control characters.
_CONTROL = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{BIDI_CONTROLS}]")
_C1 = re.compile(r"[\x80-\x9f]")
HEADLINE_METRICS = (vocab.CPU_PERCENT, vocab.MEM_PERCENT, vocab.DISK_PERCENT, vocab.LOAD_1)
MAX_SAMPLES_SHOWN = 6


def clean(text: str, limit: int = 80) -> str:
    """Printable, bounded text for one terminal line."""
    text = _CONTROL.sub("?", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clock(ts: float) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):  # a timestamp no calendar holds
        return "??:??:??"


def _sample(sample: Sample) -> str:
    labels = ",".join(clean(v, 24) for v in sample.labels.values())
    value = f"{sample.value:.4g}" if abs(sample.value) < 1e6 else f"{sample.value:.3e}"
    return f"{clean(sample.name, 40)}{{{labels}}}={value}" if labels else f"{clean(sample.name, 40)}={value}"


def _metrics_line(batch: MetricBatch) -> str:
    shown = [s for s in batch.samples if s.name in HEADLINE_METRICS] or batch.samples
    text = " ".join(_sample(s) for s in shown[:MAX_SAMPLES_SHOWN])
    more = len(shown) - MAX_SAMPLES_SHOWN
    if more > 0:
        text += f" (+{more} more)"
    return f"{clean(batch.host)}/{clean(batch.agent)}  {len(batch.samples)} samples  {text}"


def describe(event: Event) -> str:
    """One line for a terminal: time, kind, who, and what matters."""
    match event:
        case MetricBatch():
            body = _metrics_line(event)
        case HealthEvent():
            latency = f" {event.latency * 1000:.0f}ms" if event.latency is not None else ""
            detail = f"  {clean(event.detail)}" if event.detail else ""
            who = f"{clean(event.host)}/{clean(event.agent)}/{clean(event.target)}"
            body = f"{who}  {event.status.upper()}{latency}{detail}"
        case Heartbeat():
            lost = f" dropped={event.dropped}" if event.dropped else ""
            errors = f" publish_errors={event.publish_errors}" if event.publish_errors else ""
            failed = f" collect_errors={event.collect_errors}" if event.collect_errors else ""
            who = f"{clean(event.host)}/{clean(event.agent)}"
            body = f"{who}  v{clean(event.version)} every {event.interval:g}s{lost}{errors}{failed}"
        case Alert():
            value = f" value={event.value:.4g}" if event.value is not None else ""
            body = (
                f"{event.status.upper()} {event.severity} {clean(event.rule)}  {clean(event.summary)}{value}"
            )
        case Notification():
            where = f"route={clean(event.route)} group={clean(event.group_key)}"
            body = f"{event.status.upper()} {where} {len(event.alerts)} alert(s)"
        case LogLines():
            last = f"  {clean(event.lines[-1].text)}" if event.lines else ""
            body = f"{clean(event.host)}/{clean(event.container)}  {len(event.lines)} line(s){last}"
    ts: float = event.starts_at if isinstance(event, Alert) else event.ts
    kind = type(event).__struct_config__.tag
    # a newer agent may send fields this tool does not know: say so rather than hide it
    newer = f"  [schema v{event.v}, newer than this tool]" if event.v > SCHEMA_VERSION else ""
    return f"{_clock(ts)} {kind!s:<12} {body}{newer}"


@dataclass
class TailPrinter:
    """Prints each message as a readable line (or its raw JSON) and counts what it rejected."""

    raw_json: bool = False
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    received: int = 0
    rejected: int = 0

    def handle(self, subject: str, data: bytes) -> None:
        self.received += 1
        try:
            event = any_event.decode(data, subject)
            # JSON may carry raw C1 controls inside strings; escaped, the line stays valid JSON
            line = _C1.sub(_escape, data.decode("utf-8")) if self.raw_json else describe(event)
        except Exception as exc:  # whatever a payload holds, tail keeps going and counts it
            self.rejected += 1
            print(f"rejected: {clean(str(exc), 300)}", file=self.err)
            return
        print(line, file=self.out)
        self.out.flush()


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match[0]):04x}"


async def tail(config: Config, subject: str | None, raw_json: bool, count: int | None) -> None:
    """Print events until interrupted or `count` messages have arrived."""
    bus = await connect(config.bus, "jarvis-monitor tail")
    printer = TailPrinter(raw_json=raw_json)
    done = asyncio.Event()

    async def on_message(msg: Msg) -> None:
        printer.handle(msg.subject, msg.data)
        if count is not None and printer.received >= count:
            done.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    subject = subject or bus.subjects.everything
    try:
        await bus.nc.subscribe(subject, cb=on_message)
        await bus.nc.flush()
        print(f"watching {subject} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        await done.wait()
    finally:
        await bus.close()
        if printer.rejected:
            print(f"{printer.received} messages, {printer.rejected} rejected", file=sys.stderr)
