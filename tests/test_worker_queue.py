"""The telemetry queue keeps nothing a call allocated: per-call objects would outlive the call and
push the garbage collector into extra passes in apps with many calls in flight."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import openai_bluegreen
from openai_bluegreen import _worker
from openai_bluegreen._telemetry import shared
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, Telemetry, rollout_config

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
def parked_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The worker thread parked between bursts: only the test drains the queue."""
    openai_bluegreen.flush()
    _worker.submit(lambda: None)  # the thread exists
    parked, release = threading.Event(), threading.Event()

    def park(_seconds: float) -> None:
        parked.set()
        release.wait()

    monkeypatch.setattr(_worker, "_sleep", park)
    assert parked.wait(5), "the worker did not park"
    yield
    release.set()


def _containers_queued() -> set[int]:
    """Every queued object but numbers, strings and None. Not ``gc.is_tracked``: a young pass
    untracks a tuple of strings (a shared finish-reasons tuple), which would then seem gone."""
    return {id(item) for item in _worker._tasks
            if not isinstance(item, (int, float, str, type(None)))}


def test_queued_telemetry_holds_no_object_per_call(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    install(rollout_config(green, weight=50))
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
        for i in range(10):  # both lanes built, the worker started
            client.chat.completions.create(model="gpt-4.1", messages=MSGS, user=f"warm{i}")
        openai_bluegreen.flush()
        with _worker._drain_lock:  # the worker waits: records stay queued while we look
            for i in range(20):
                client.chat.completions.create(model="gpt-4.1", messages=MSGS, user=f"a{i}")
            after_20 = _containers_queued()
            for i in range(40):
                client.chat.completions.create(model="gpt-4.1", messages=MSGS, user=f"b{i}")
            after_60 = _containers_queued()
            queued_items = len(_worker._tasks)
    # Only shared objects are referenced: the record marker, the task function, the two
    # lanes and their request attributes, the caller's context, each lane's shared outcome
    # tuple (finish reasons, tier, fingerprint) and the shared usage details (no cache hit, no
    # reasoning). Their number does not grow with the calls.
    assert after_60 == after_20
    assert len(after_20) <= 10
    assert queued_items > 60
    spans = [s for s in telemetry.spans() if s.name.startswith("chat ")]
    assert len(spans) == 70
    assert {s.attributes["gen_ai.response.finish_reasons"] for s in spans} == {("stop",)}


def test_finish_reasons_are_shared_and_the_cache_is_bounded() -> None:
    a = shared((tuple(["stop"]), "default", "fp_1"))
    b = shared((tuple(["stop"]), "default", "fp_1"))
    assert a == (("stop",), "default", "fp_1") and a is b
    many = [shared((f"reason-{i}",)) for i in range(1000)]
    assert [r[0] for r in many] == [f"reason-{i}" for i in range(1000)]
    from openai_bluegreen import _telemetry

    assert len(_telemetry._SHARED) <= _telemetry._SHARED_MAX
    # Full, it starts over: values seen from now on are shared again (a provider's system
    # fingerprint changes over a process's life; calls must not each queue their own tuple).
    assert shared(("fp_new",)) is shared(tuple(["fp_new"]))


def test_a_read_cut_short_loses_that_record_only(parked_worker: None) -> None:
    """An exception from a signal handler can cut a read in ``flush()`` short, leaving the rest
    of a record at the head of the queue; the next read skips to the next record."""
    ran: list[int] = []
    _worker._tasks.extend((ran.append, 1, 99))  # a record whose marker was already read
    _worker.submit(ran.append, 1)
    _worker._tasks.extend((2, "half", "of", "a", "record"))
    _worker.submit(ran.append, 2)
    openai_bluegreen.flush()
    assert ran == [1, 2]
    assert not _worker._tasks


def test_an_interrupt_inside_a_task_reaches_the_caller_and_the_queue_goes_on(
        parked_worker: None) -> None:
    ran: list[str] = []

    def interrupted() -> None:
        raise KeyboardInterrupt

    _worker.submit(ran.append, "before")
    _worker.submit(interrupted)
    _worker.submit(ran.append, "after")
    try:
        openai_bluegreen.flush()
    except KeyboardInterrupt:
        pass
    else:  # pragma: no cover - the assertion below names the failure
        raise AssertionError("KeyboardInterrupt was swallowed by flush()")
    openai_bluegreen.flush()
    assert ran == ["before", "after"]


def test_the_worker_leaves_the_collector_alone(parked_worker: None) -> None:
    """The collector's switch is the app's: records run with it as the app left it, on or off,
    and a task that raises through ``flush()`` changes nothing either."""
    states: list[bool] = []

    def interrupted() -> None:
        raise KeyboardInterrupt

    assert gc.isenabled()
    for _ in range(3):
        _worker.submit(lambda: states.append(gc.isenabled()))
    _worker.submit(interrupted)
    with pytest.raises(KeyboardInterrupt):
        openai_bluegreen.flush()
    assert states == [True, True, True] and gc.isenabled()
    try:
        _worker.submit(gc.disable)  # the app turns it off while a burst runs: it stays off
        _worker.submit(lambda: states.append(gc.isenabled()))
        openai_bluegreen.flush()
        assert states[-1] is False and not gc.isenabled()
        _worker.submit(lambda: states.append(gc.isenabled()))
        openai_bluegreen.flush()
        assert states[-1] is False and not gc.isenabled()
    finally:
        gc.enable()


def test_the_worker_outlives_a_task_that_raises_system_exit() -> None:
    def leave() -> None:
        raise SystemExit(3)

    done = threading.Event()
    openai_bluegreen.flush()
    _worker.submit(leave)
    _worker.submit(done.set)
    assert done.wait(5)  # the worker thread ran both (flush was not called)
    assert _worker._thread is not None and _worker._thread.is_alive()  # type: ignore[union-attr]
    again = threading.Event()
    _worker.submit(again.set)
    assert again.wait(5)


def test_a_routed_calls_record_fits_the_tuples_cpython_reuses(
        install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
        parked_worker: None) -> None:
    """CPython reuses tuples of up to 19 items without counting them toward the collector's next
    pass; a record one item longer tripled the passes (see ``_worker.submit``)."""
    install(rollout_config(green, weight=50))
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
        client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    items = list(_worker._tasks)
    starts = [i for i, item in enumerate(items) if item is _worker.RECORD]
    sizes = [b - a for a, b in zip(starts, [*starts[1:], len(items)], strict=True)]
    assert sizes and max(sizes) <= _worker.MAX_RECORD == 19
    openai_bluegreen.flush()


def test_local_source_counts_calls_still_queued(
        parked_worker: None, monkeypatch: pytest.MonkeyPatch, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    """The worker records in bursts; the in-process source records what is queued before each
    look, so the watcher judges every call that ended before it looked."""
    import time

    from opentelemetry.sdk.metrics import MeterProvider

    from openai_bluegreen.sources.local import LocalSource

    monkeypatch.setenv("GREEN_API_KEY", "green-key")
    source = LocalSource()
    provider = MeterProvider(metric_readers=[source])
    openai_bluegreen.install(rollout_config(green, weight=50), meter_provider=provider)
    try:
        with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
            for i in range(30):
                client.chat.completions.create(model="gpt-4.1", messages=MSGS, user=f"u{i}")
        assert len(_worker._tasks) > 30  # nothing recorded yet: the worker is parked
        stats = source.snapshot(time.time()).rollouts["chat-upgrade"]
        assert stats.blue.requests + stats.green.requests == 30
        assert stats.blue.requests > 0 and stats.green.requests > 0
        assert not _worker._tasks
    finally:
        openai_bluegreen.uninstall()
        provider.shutdown()


def test_a_forked_child_records_its_own_calls(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    """gunicorn --preload, multiprocessing's fork: the child has no worker thread and may copy
    the queue's lock held. It must start its own worker, drop the parent's records (the parent
    records those) and record its own calls without being asked."""
    import os
    import signal
    import time

    install(rollout_config(green, weight=50))
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
        for i in range(12):  # the worker runs; both lanes of this client are built
            client.chat.completions.create(model="gpt-4.1", messages=MSGS, user=f"w{i}")
        openai_bluegreen.flush()
        before = len(telemetry.spans())
        router = openai_bluegreen._state.router
        assert router is not None
        # Held at fork time, as by a worker mid-burst and by a thread building a lane: the
        # child's first call on its own client builds a lane.
        with _worker._drain_lock, router._lock:
            for i in range(3):
                client.chat.completions.create(model="gpt-4.1", messages=MSGS, user=f"p{i}")
            pid = os.fork()
            if pid == 0:  # the child: report through the exit code only
                code = 10
                try:
                    signal.alarm(20)  # a deadlock kills the child instead of hanging the test
                    code = 11 if _worker._tasks else 12
                    if code == 12:
                        with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY,
                                           max_retries=0) as own:
                            for i in range(5):
                                own.chat.completions.create(model="gpt-4.1", messages=MSGS,
                                                            user=f"c{i}")
                        deadline = time.monotonic() + 5
                        while time.monotonic() < deadline and len(telemetry.spans()) < before + 5:
                            time.sleep(0.05)
                        code = 0 if len(telemetry.spans()) == before + 5 else 13
                finally:
                    os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (
        "child: 11 = parent's records kept, 13 = its own calls not recorded, "
        f"negative = killed by a signal (deadlock); got {os.waitstatus_to_exitcode(status)}")
    openai_bluegreen.flush()
    assert len(telemetry.spans()) == before + 3  # the parent's three, recorded once, here


def test_a_multiprocessing_child_records_its_last_calls(
        monkeypatch: pytest.MonkeyPatch, blue: SimulatedUpstream, green: SimulatedUpstream,
        tmp_path: Any) -> None:
    """multiprocessing's children end with os._exit, past atexit: what the worker had not
    recorded yet when the target returned must be recorded before that."""
    import multiprocessing
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    out = tmp_path / "spans.txt"

    class LineExporter(SpanExporter):  # the child's spans, where the parent can read them
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with out.open("a") as handle:
                handle.writelines(f"{span.name}\n" for span in spans)
            return SpanExportResult.SUCCESS

    monkeypatch.setenv("GREEN_API_KEY", "green-key")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(LineExporter()))
    openai_bluegreen.install(rollout_config(green, weight=50), tracer_provider=provider)

    def child() -> None:
        with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
            for i in range(8):
                client.chat.completions.create(model="gpt-4.1", messages=MSGS, user=f"m{i}")

    try:
        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
        process.join(30)
        assert process.exitcode == 0
        lines = out.read_text().splitlines() if out.exists() else []
        assert len(lines) == 8 and all(line.startswith("chat ") for line in lines), lines
    finally:
        openai_bluegreen.uninstall()
        provider.shutdown()
