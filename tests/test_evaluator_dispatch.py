"""The dispatcher alone: groups and their timers (wait, interval, repeat) and muting, on a manual clock."""

from __future__ import annotations

import msgspec

from bus.events import Alert
from bus.units import Duration
from evaluator.config import Route
from evaluator.dispatch import Dispatcher
from evaluator.mute import MuteStage, Silences
from evaluator.silences import Silence, parse_matcher

ROUTE = Route(
    name="default",
    receiver="#alerts",
    group_wait=Duration(30),
    group_interval=Duration(300),
    repeat_interval=Duration(3600),
)


class View:
    """The engine's side: alerts as they are now, acks, send_resolved."""

    def __init__(self) -> None:
        self.now: dict[str, Alert] = {}
        self.acks: set[str] = set()

    def current(self, alert: Alert, now: float) -> Alert:
        return self.now.get(alert.fingerprint, alert)

    def acked(self, fingerprint: str) -> bool:
        return fingerprint in self.acks

    def sends_resolved(self, rule: str) -> bool:
        return True


def alert(fp: str, status: str = "firing", host: str = "web01", **extra: object) -> Alert:
    fields: dict[str, object] = {
        "fingerprint": fp,
        "rule": f"rule-{fp}",
        "severity": "warning",
        "status": status,
        "labels": {"host": host, "rule": f"rule-{fp}"},
        "summary": fp,
        "starts_at": 0.0,
        **extra,
    }
    return msgspec.convert(fields, Alert)


def run(dispatcher: Dispatcher, until: float) -> None:
    while (deadline := dispatcher.next_deadline()) is not None and deadline <= until:
        dispatcher.flush_due(deadline)


def make(silences: Silences | None = None) -> tuple[Dispatcher, View]:
    view = View()
    stage = MuteStage([silences or Silences()], [])
    return Dispatcher([], ROUTE, stage, view), view


def test_a_new_group_waits_group_wait_and_batches_its_siblings() -> None:
    dispatcher, _ = make()
    dispatcher.add(alert("a"), 0)
    dispatcher.add(alert("b"), 10)
    assert dispatcher.next_deadline() == 30
    run(dispatcher, 30)
    (note,) = dispatcher.drain()
    assert (note.ts, [a.fingerprint for a in note.alerts]) == (30, ["a", "b"])


def test_a_change_to_a_notified_group_waits_for_group_interval() -> None:
    dispatcher, view = make()
    dispatcher.add(alert("a"), 0)
    run(dispatcher, 30)
    dispatcher.drain()
    dispatcher.add(alert("b"), 40)
    run(dispatcher, 329)
    assert dispatcher.drain() == []
    run(dispatcher, 330)
    (note,) = dispatcher.drain()
    assert [a.fingerprint for a in note.alerts] == ["a", "b"]
    del view


def test_a_flush_sends_what_the_view_says_is_true_then() -> None:
    dispatcher, view = make()
    dispatcher.add(alert("a", value=86.0), 0)
    view.now["a"] = alert("a", value=97.0, summary="now 97")
    run(dispatcher, 30)
    (note,) = dispatcher.drain()
    assert (note.alerts[0].value, note.alerts[0].summary) == (97.0, "now 97")


def test_reminders_after_repeat_interval_skip_acknowledged_alerts() -> None:
    dispatcher, view = make()
    dispatcher.add(alert("a"), 0)
    dispatcher.add(alert("b"), 0)
    run(dispatcher, 30)
    dispatcher.drain()
    view.acks.add("a")
    run(dispatcher, 3630)
    (note,) = dispatcher.drain()
    assert (note.status, [a.fingerprint for a in note.alerts]) == ("reminder", ["b"])


def test_a_muted_alert_is_not_sent_and_its_resolution_stays_quiet() -> None:
    muted = Silence(
        id="s1", matchers=[parse_matcher("host=web01")], starts_at=0, ends_at=10_000, author="", comment=""
    )
    dispatcher, _ = make(Silences([muted]))
    dispatcher.add(alert("a"), 0)
    run(dispatcher, 30)
    dispatcher.add(alert("a", status="resolved", ends_at=100.0), 100)
    run(dispatcher, 1000)
    assert dispatcher.drain() == []
    assert dispatcher.groups == {}, "a group with nothing left is forgotten"


def test_a_flapping_alert_is_pinned_until_forced() -> None:
    dispatcher, _ = make()
    dispatcher.add(alert("a", flapping=True), 0)
    run(dispatcher, 30)
    (note,) = dispatcher.drain()
    assert note.alerts[0].flapping
    dispatcher.add(alert("a", status="resolved", flapping=True), 40)  # still flapping: no news
    run(dispatcher, 1000)
    assert dispatcher.drain() == []
    dispatcher.add(alert("a", status="resolved", episodes=4), 1000, force=True)  # stable again
    run(dispatcher, 2000)
    (stable,) = dispatcher.drain()
    assert (stable.status, stable.alerts[0].flapping) == ("resolved", False)


def test_group_timers_survive_a_restore() -> None:
    dispatcher, view = make()
    dispatcher.add(alert("a"), 0)
    restored = Dispatcher([], ROUTE, MuteStage([], []), view)
    restored.restore(dispatcher.groups.values(), dispatcher.seq)
    assert restored.next_deadline() == 30
    run(restored, 30)
    assert len(restored.drain()) == 1


def test_a_group_that_notified_is_kept_for_repeat_interval_then_forgotten() -> None:
    dispatcher, _ = make()
    dispatcher.add(alert("a"), 0)
    run(dispatcher, 30)
    dispatcher.add(alert("a", status="resolved", ends_at=100.0), 100)
    run(dispatcher, 330)
    assert [n.status for n in dispatcher.drain()] == ["firing", "resolved"]
    assert list(dispatcher.groups) == ['default:{host="web01"}'], "kept: a critical would go at once"
    run(dispatcher, 330 + 3600)
    assert dispatcher.groups == {}, "memory stays bounded"
