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


def _holding() -> bool:
    """Whether the collector's young passes are held off (the worker's raised threshold)."""
    return gc.get_threshold()[0] == _worker._HELD


def test_young_passes_are_held_off_while_records_run_and_the_switch_stays_the_apps(
        parked_worker: None) -> None:
    """Spans handed to the batch span processor live until its next export: young passes are
    held off while a burst runs, so it costs one pass instead of one per ~58 of them (700
    tracked objects, each pass walking the app's calls in flight), and come back after, even
    when a task raises through ``flush()``. The collector's switch and thresholds the app sets
    meanwhile are the app's."""
    states: list[bool] = []
    before = gc.get_threshold()

    def interrupted() -> None:
        raise KeyboardInterrupt

    assert gc.isenabled() and not _holding()
    for _ in range(3):
        _worker.submit(lambda: states.append(_holding()))
    _worker.submit(interrupted)
    with pytest.raises(KeyboardInterrupt):
        openai_bluegreen.flush()
    assert states == [True, True, True]
    assert gc.isenabled() and gc.get_threshold() == before
    try:
        # The app turns the collector off while a burst runs: it stays off (the previous
        # version switched it back on at the burst's end).
        _worker.submit(gc.disable)
        _worker.submit(lambda: states.append(gc.isenabled()))
        openai_bluegreen.flush()
        assert states[-1] is False and not gc.isenabled()
        assert gc.get_threshold() == before
        # With the collector off before a burst, nothing is held off.
        _worker.submit(lambda: states.append(_holding()))
        openai_bluegreen.flush()
        assert states[-1] is False and not gc.isenabled()
        gc.enable()
        # Thresholds the app sets during a burst stand.
        _worker.submit(gc.set_threshold, 5000, 20, 20)
        openai_bluegreen.flush()
        assert gc.get_threshold() == (5000, 20, 20)
    finally:
        gc.enable()
        gc.set_threshold(*before)


def test_a_backlog_gives_the_collector_a_pass_between_chunks(
        parked_worker: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_worker, "_CHUNK", 100)
    kept: list[Any] = []
    passes: list[int] = []

    def hold() -> None:
        kept.append([[] for _ in range(20)])  # 21 objects the collector tracks, kept alive

    def on_pass(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(len(kept))

    for _ in range(250):
        _worker.submit(hold)
    gc.collect()
    gc.callbacks.append(on_pass)
    try:
        openai_bluegreen.flush()
    finally:
        gc.callbacks.remove(on_pass)
    # 2,100 new objects per chunk would have set off three passes inside each chunk; the pass
    # held off by the last chunk comes with the next allocation, wherever that is.
    assert len(kept) == 250
    assert passes[:2] == [100, 200] and set(passes[2:]) <= {250}, passes


def test_a_chunk_ends_after_its_time_and_tasks_that_keep_blocking_end_the_holding(
        parked_worker: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A synchronous exporter can make every task block: young passes must not stay held off
    that long. A chunk ends after _CHUNK_SECONDS; three tasks in a row that each take that long end
    the holding for the rest of the process, with a warning. One slow task does not (a first
    call's imports; the worker waiting for the GIL under load)."""
    import time

    monkeypatch.setattr(_worker, "_CHUNK_SECONDS", 0.1)
    monkeypatch.setattr(_worker, "_holding_young", True)
    monkeypatch.setattr(_worker, "_slow_streak", 0)
    states: list[bool] = []
    passes: list[int] = []

    def on_pass(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(len(states))

    def work(seconds: float) -> None:
        states.append(_holding())
        time.sleep(seconds)

    for seconds in (0.06, 0.06, 0.15, 0.0, 0.15, 0.15, 0.0):
        _worker.submit(work, seconds)
    gc.callbacks.append(on_pass)
    try:
        openai_bluegreen.flush()
    finally:
        gc.callbacks.remove(on_pass)
    # Chunks: [0.06, 0.06] (its time is up), [0.15], [0.0, 0.15], [0.15], [0.0]: every task
    # ran with young passes held off, and a young pass ran between chunks.
    assert states == [True] * 7
    assert {2, 3, 5, 6} <= set(passes), passes
    assert _worker._holding_young and gc.isenabled()  # never three slow tasks in a row
    for _ in range(3):
        _worker.submit(work, 0.15)
    _worker.submit(work, 0.0)
    with caplog.at_level("WARNING", logger="openai_bluegreen"):
        openai_bluegreen.flush()
    assert states[7:] == [True, True, True, False]  # the last ran with young passes on
    assert not _worker._holding_young and gc.isenabled()
    assert "3 telemetry tasks in a row blocked" in caplog.text
    # With the app's collector off nothing is held off, so slow tasks end nothing.
    monkeypatch.setattr(_worker, "_holding_young", True)
    monkeypatch.setattr(_worker, "_slow_streak", 0)
    caplog.clear()
    gc.disable()
    try:
        for _ in range(3):
            _worker.submit(work, 0.15)
        with caplog.at_level("WARNING", logger="openai_bluegreen"):
            openai_bluegreen.flush()
    finally:
        gc.enable()
    assert _worker._holding_young and "no longer holds off" not in caplog.text


def test_a_process_forked_during_a_burst_gets_its_young_passes_back(
        parked_worker: None) -> None:
    """os.fork() while a burst runs (multiprocessing, a task queue) copies the raised
    threshold; the child has no burst to end, so the worker's fork hook puts it back."""
    import os

    read, write = os.pipe()

    def fork() -> None:
        pid = os.fork()
        if pid == 0:  # the child
            os.write(write, b"1" if not _holding() else b"0")
            os._exit(0)
        os.waitpid(pid, 0)

    _worker.submit(fork)
    openai_bluegreen.flush()
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    assert not _holding()


def test_a_fork_the_moment_the_threshold_goes_up_still_puts_it_back_in_the_child(
        parked_worker: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thresholds the fork hook puts back are kept before the threshold goes up: a thread
    that forks right after the change finds them."""
    import os

    codes: list[int] = []

    def raise_then_fork(*threshold: int) -> None:
        gc.set_threshold(*threshold)
        if threshold[0] != _worker._HELD:
            return  # putting it back
        pid = os.fork()  # what another thread could do the moment this one raised it
        if pid == 0:
            os._exit(3 if _holding() else 0)
        codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))

    monkeypatch.setattr(_worker, "_gc_set_threshold", raise_then_fork)
    _worker.submit(lambda: None)
    openai_bluegreen.flush()
    assert codes == [0] and not _holding()


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


def test_thresholds_an_app_tunes_during_a_burst_do_not_pin_young_passes_off() -> None:
    """The usual tuning idiom (read the thresholds, set a multiple) run by an app thread while
    the worker holds young passes off reads the worker's 1 << 30: doubling it raises
    OverflowError in the app; a smaller change (say +100) is left in place by
    _release_young_passes as 'theirs', and young collections never run again."""
    before = gc.get_threshold()
    tuned = threading.Event()
    raised: list[BaseException] = []

    def app_thread() -> None:
        try:
            g0, g1, g2 = gc.get_threshold()
            gc.set_threshold(g0 * 2, g1, g2)  # "twice the default young threshold"
        except BaseException as exc:  # OverflowError: 2 << 30 does not fit a C int
            raised.append(exc)
        tuned.set()

    def task() -> None:  # a telemetry task, running while the worker holds young passes off
        t = threading.Thread(target=app_thread)
        t.start()
        t.join()

    try:
        _worker.flush()
        _worker.submit(task)
        _worker.flush()
        assert tuned.is_set()
        assert not raised, raised
        assert gc.get_threshold()[0] == before[0] * 2, gc.get_threshold()
    finally:
        gc.set_threshold(*before)
