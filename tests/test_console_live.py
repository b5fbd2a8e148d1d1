"""The console's live updates and history helpers, without I/O: messages per page, slow pages, charts."""

from __future__ import annotations

from bus import vocabulary as vocab
from bus.events import Alert, MetricBatch, Sample
from sinks.console.history import downsample
from sinks.console.live import QUEUE, Hub, Subscriber
from sinks.console.render import Renderer
from sinks.console.state import ConsoleState, Limits, row_id
from tests.test_console_state import T0, alert, container_batch, health, host_batch


def probe_batch(ts: float, rate: float, check: str = "backend") -> MetricBatch:
    labels = {"check": check}
    samples = [Sample(vocab.HTTP_REQUEST_RATE, rate, labels), Sample(vocab.HTTP_ERROR_RATIO, 0.1, labels)]
    return MetricBatch(host="mon", agent="probe", ts=ts, interval=30, samples=samples)


def test_request_metrics_become_chart_points_and_an_erring_endpoint_row() -> None:
    state = ConsoleState()
    hub = Hub(state, Renderer(), clock=lambda: T0)
    state.observe(probe_batch(T0, 12.0))
    messages = hub.messages(state.take_dirty(), T0)
    [point] = [m for m in messages["performance"] if m["op"] == "point"]
    assert point["values"] == {"backend|rate": 12.0, "backend|error_ratio": 0.1}
    rows = [m for m in messages["errors"] if m["op"] == "row"]
    assert rows[0]["bodies"] == ["endpoint-rows"]
    assert rows[0]["html"] is not None  # 10 % errors: listed among the endpoints answering errors
    assert all(m["op"] != "point" for m in messages["overview"])


def test_a_container_moves_between_trouble_and_running_well() -> None:
    state = ConsoleState()
    hub = Hub(state, Renderer(), clock=lambda: T0)
    state.observe(container_batch("web01", "api", T0))
    rows = [m for m in hub.messages(state.take_dirty(), T0)["overview"] if m["op"] == "row"]
    assert [(m["bodies"], m["html"] is None) for m in rows] == [
        (["container-ok-rows"], False),
        (["container-rows"], True),
    ]
    state.observe(health("api", "critical", T0 + 1, agent="container", detail="health check: unhealthy"))
    rows = [m for m in hub.messages(state.take_dirty(), T0 + 1)["overview"] if m["op"] == "row"]
    assert [(m["bodies"], m["html"] is None) for m in rows] == [
        (["container-rows"], False),
        (["container-ok-rows"], True),
    ]
    assert rows[0]["id"] == row_id("container", "web01", "api")


def test_rows_the_prune_forgets_leave_open_pages_too() -> None:
    """A host and a container silent for the whole history were dropped from the model only: open
    pages kept showing them, with their last values, until reloaded."""
    state = ConsoleState(Limits(history=3600.0))
    hub = Hub(state, Renderer(), clock=lambda: T0 + 3700)
    state.observe(host_batch("old", T0, 1.0))
    state.observe(container_batch("old", "api", T0))
    state.observe(host_batch("new", T0 + 3000, 1.0))
    state.take_dirty()
    assert state.prune(T0 + 3700) == 2
    rows = [m for m in hub.messages(state.take_dirty(), T0 + 3700)["overview"] if m["op"] == "row"]
    assert {(m["id"], m["html"]) for m in rows} == {
        (row_id("host", "old"), None),
        (row_id("container", "old", "api"), None),
    }


def test_a_page_that_cannot_keep_up_is_told_to_reload_and_others_still_get_theirs() -> None:
    state = ConsoleState()
    hub = Hub(state, Renderer(), clock=lambda: T0)
    slow, quick = Subscriber(page="overview", csrf="a" * 40), Subscriber(page="overview", csrf="b" * 40)
    hub.subscribers |= {slow, quick}
    for n in range(QUEUE + 1):
        state.observe(container_batch("web01", f"c{n}", T0))
        hub.flush()
        while not quick.queue.empty():
            quick.queue.get_nowait()
    assert slow.overflowed
    assert not quick.overflowed
    assert hub.overflows == 1


def test_each_page_gets_its_own_csrf_token_in_the_forms_sent_live() -> None:
    state = ConsoleState()
    hub = Hub(state, Renderer(), clock=lambda: T0)
    page = Subscriber(page="alerts", csrf="c" * 40)
    hub.subscribers.add(page)
    state.observe(alert("fp1", "firing", T0))  # its row carries an ack form
    hub.flush()
    sent = page.queue.get_nowait().decode()
    assert sent.startswith("data: ")
    assert 'name=\\"csrf\\" value=\\"' + "c" * 40 in sent
    assert "<csrf-token>" not in sent


def test_text_from_the_bus_that_looks_like_the_token_placeholder_is_left_as_it_is() -> None:
    state = ConsoleState()
    hub = Hub(state, Renderer(), clock=lambda: T0)
    page = Subscriber(page="alerts", csrf="c" * 40)
    hub.subscribers.add(page)
    for text in ("<csrf-token>", "__csrf_token__"):
        state.observe(
            Alert(
                fingerprint=f"fp-{len(text)}",
                rule="r",
                severity="warning",
                status="firing",
                labels={"host": "web01"},
                summary=f"see {text} here",
                starts_at=T0,
            )
        )
    hub.flush()
    sent = page.queue.get_nowait().decode()
    assert "see &lt;csrf-token&gt; here" in sent
    assert "see __csrf_token__ here" in sent
    assert "c" * 40 + " here" not in sent


def test_nothing_is_rendered_while_no_page_is_open() -> None:
    state = ConsoleState()
    hub = Hub(state, Renderer(), clock=lambda: T0)
    state.observe(container_batch("web01", "api", T0))
    assert hub.flush() == {}
    assert state.take_dirty() == {}  # taken: a page opened later renders from the model


def test_downsampling_keeps_the_largest_value_of_each_step_per_check() -> None:
    batches = [probe_batch(T0 + t, rate) for t, rate in ((0, 1.0), (10, 5.0), (20, 2.0), (400, 3.0))]
    batches.append(probe_batch(T0, 9.0, check="frontend"))
    series = downsample(list(batches), {vocab.HTTP_REQUEST_RATE: "rate"}, "check", T0, T0 + 600, points=2)
    assert series[("backend", "rate")] == [(T0 - T0 % 300, 5.0), (T0 + 400 - (T0 + 400) % 300, 3.0)]
    assert series[("frontend", "rate")] == [(T0 - T0 % 300, 9.0)]
    assert ("backend", "error_ratio") not in series  # only the metrics asked for
