"""The telemetry worker: records metrics and emits spans off the request path.

The request path only appends a record to a deque: a marker, the task to run and its arguments,
laid out flat (``RECORD, task, n, arg1 … argn``) in one atomic ``extend``. A read cut short
(an exception raised by a signal handler in ``flush()``) loses that one record: the next read
skips to the next marker. A daemon thread drains it every 250 ms, in one burst, with the
collector's young passes held off for the burst (see ``_drain``). ``flush()``
drains it in the caller, e.g. before reading an in-memory exporter in a test; the in-process
metric source flushes before each look, and ``flush()`` runs at interpreter exit, so nothing
recorded is lost or judged late. A task that raises is logged and dropped: telemetry faults
never reach the caller.

Why flat: whatever the queue holds lives until the next burst. A tuple or an object per record
is a garbage-collector object that outlives the call, and in an asyncio app with many calls in
flight every such object pushes the collector into extra passes over all of their young objects
(``BENCHMARKS.md``: routing alone cost 17 µs per call that way). Laid out flat, a record
allocates no collector object that outlives the call: its arguments are numbers, strings and
objects that exist anyway.

The young passes are held off by raising the young generation's threshold, not by switching the
collector off: the switch stays the app's, and an app that sets thresholds during a burst keeps
them. (An earlier version switched it off and on, which turned the collector back on under an
app that had turned it off meanwhile.)
"""

from __future__ import annotations

import atexit
import collections
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["flush", "on_start", "submit"]

logger = logging.getLogger("openai_bluegreen")

MAX_PENDING = 4_000_000  # queued items (a task and its arguments are one item each)
# One burst per interval: the worker takes the GIL once per burst instead of contending with
# request threads after every call (GIL hand-offs cost more than the records themselves).
# Why 250 ms and not less: the spans a burst hands to the batch span processor push the garbage
# collector into a young pass, which also walks every young object of the app's in-flight
# calls (a few ms with 64 async calls in flight). Fewer, larger bursts pay that pass less
# often: with 64 async calls in flight, 50 ms bursts cost 24-44 µs of collector CPU per call in
# the worker, 250 ms ones 9-18 (benchmarks/worker_interval.py, BENCHMARKS.md). The price is a
# longer hold of the GIL per burst (the interpreter still hands it over every switch interval,
# 5 ms): a sync caller answered mid-burst can wait for several of them.
_INTERVAL = 0.25
_sleep = time.sleep

_tasks: collections.deque[Any] = collections.deque()
RECORD = object()  # starts every record in ``_tasks``
MAX_RECORD = 19  # items per record (marker, task, count, arguments): keep it so, see submit()
_drain_lock = threading.Lock()
_thread: threading.Thread | None = None
_start_lock = threading.Lock()
dropped = 0


def submit(task: Callable[..., None], *args: Any) -> None:
    """Queue ``task(*args)`` for the worker. Never blocks; drops (and counts) when overloaded."""
    global dropped  # noqa: PLW0603 - one worker per process; its state is module-level
    if len(_tasks) >= MAX_PENDING:
        dropped += 1
        if dropped == 1:
            logger.warning("openai-bluegreen: telemetry worker overloaded; dropping records")
        return
    # One C call, so a reader never sees half a record; the temporary tuple dies here.
    # CPython reuses tuples of up to MAX_RECORD items without counting them toward the garbage
    # collector's next pass; one item more tripled the passes in an asyncio app with 64
    # calls in flight (benchmarks/overhead.py, routing with no-op providers).
    _tasks.extend((RECORD, task, len(args), *args))
    if _thread is None:
        _start()


def _drain() -> int:
    global _holding_young  # noqa: PLW0603 - one worker per process
    done = 0
    with _drain_lock:
        while True:
            # Young passes of the collector are held off while a chunk of records runs: the
            # spans a burst hands to the batch span processor stay alive until its next export,
            # and each ~58 of them (700 tracked objects) would otherwise set off a young pass
            # that also walks every young object of the app's calls in flight; their survivors
            # then bring full collections (50-80 ms each in an openai app's heap). Held off, a
            # chunk costs one young pass, after it (BENCHMARKS.md). A chunk ends after _CHUNK
            # records or _CHUNK_SECONDS, whichever comes first; tasks that keep blocking that
            # long (a synchronous exporter) end the holding for good, one slow task does not.
            held = _hold_young_passes() if _holding_young else None
            try:
                count, more = _run_records(_CHUNK, _CHUNK_SECONDS)
            finally:
                if held is not None:
                    _release_young_passes(held)
            done += count
            if _slow_streak >= _SLOW_STREAK and held is not None and _holding_young:
                _holding_young = False
                logger.warning(
                    "openai-bluegreen: %d telemetry tasks in a row blocked for %.0f ms or more "
                    "(a synchronous span or metric exporter?); the telemetry worker no longer "
                    "holds off the garbage collector's young passes while it records",
                    _slow_streak, _CHUNK_SECONDS * 1000)
            if not more:
                return done  # the young pass held off comes with the next allocation
            if held is not None:
                _gc_collect(0)  # a backlog: the young pass held off, before the next chunk


def _hold_young_passes() -> tuple[int, ...] | None:
    """Raise the young generation's threshold out of reach; the thresholds it replaced, or
    ``None`` when the app has the collector off (switched off, or a threshold of 0). The switch
    itself is never touched: an app that turns the collector off, or sets other thresholds,
    during a burst keeps what it set."""
    global _held  # noqa: PLW0603 - one worker per process
    if not _gc_isenabled():
        return None
    before = _gc_get_threshold()
    if before[0] == 0:
        return None
    # The thresholds to put back first: a fork (from another thread) right after the change
    # must find them, or young passes stay held off in the child.
    _held = before
    _gc_set_threshold(_HELD, *before[1:])
    return before


def _release_young_passes(before: tuple[int, ...]) -> None:
    """Put the thresholds back, unless someone set others meanwhile: theirs stand. One set
    from the raised threshold (``g0, g1, g2 = gc.get_threshold(); gc.set_threshold(g0 * 2, g1,
    g2)`` run during a burst) meant the real one: its young threshold is scaled back."""
    global _held  # noqa: PLW0603 - one worker per process
    now = _gc_get_threshold()
    if now == (_HELD, *before[1:]):
        _gc_set_threshold(*before)
    elif now[0] >= _HELD:
        _gc_set_threshold(max(1, round(before[0] * now[0] / _HELD)), *now[1:])
    _held = None


_CHUNK = 1000  # records per hold of the young passes: about 50 ms of the worker's time
_CHUNK_SECONDS = 0.05  # and at most this long
_SLOW_STREAK = 3  # tasks in a row that each took _CHUNK_SECONDS: holding ends for good
# The young generation's threshold while a chunk runs: out of a chunk's reach (a chunk of 1,000
# records allocates tens of thousands of objects), and small enough that an app multiplying
# the value it reads during a burst stays within a C int.
_HELD = 1 << 20
_slow_streak = 0
_holding_young = True  # False once tasks kept blocking (see _drain)
_held: tuple[int, ...] | None = None  # the thresholds a chunk replaced (see fork below)
_gc_isenabled, _gc_get_threshold, _gc_set_threshold, _gc_collect = \
    gc.isenabled, gc.get_threshold, gc.set_threshold, gc.collect
_clock = time.perf_counter


def _run_records(limit: int, seconds: float) -> tuple[int, bool]:
    """Run queued records until ``limit`` of them ran, ``seconds`` passed or the queue ran
    empty. Returns how many ran and whether the queue may hold more; counts in
    ``_slow_streak`` the tasks in a row that each took ``seconds`` or more."""
    global _slow_streak  # noqa: PLW0603 - one worker per process
    pop = _tasks.popleft
    done = 0
    deadline = _clock() + seconds
    while True:
        try:
            if pop() is not RECORD:
                continue  # the rest of a record whose reading was cut short
            task = pop()
            args = [pop() for _ in range(pop())]
        except IndexError:
            return done, False
        began = _clock()
        try:
            task(*args)
        except Exception:
            logger.debug("openai-bluegreen: telemetry task failed", exc_info=True)
        done += 1
        now = _clock()
        _slow_streak = _slow_streak + 1 if now - began >= seconds else 0
        if done >= limit or now >= deadline:
            return done, True


def flush() -> None:
    """Record everything queued so far, in the calling thread."""
    _drain()


def _run() -> None:
    for hook in list(_on_start):
        try:
            hook()
        except BaseException:
            logger.exception("openai-bluegreen: telemetry worker start hook failed")
    while True:
        try:
            if _tasks:
                _drain()
        except BaseException:  # never let the worker die: all telemetry would stop for good
            logger.exception("openai-bluegreen: telemetry worker error")
        _sleep(_INTERVAL)


def on_start(hook: Callable[[], None]) -> None:
    """Run ``hook()`` in each new worker thread (one per process) before its first burst."""
    _on_start.append(hook)


_on_start: list[Callable[[], None]] = []


def _after_fork_in_child() -> None:
    """A forked child (gunicorn --preload, multiprocessing's fork) has no worker thread, and its
    copies of the locks may be held by a thread that does not exist in it: start afresh (the
    thread starts with the child's first record). The records copied from the parent are the
    parent's to record."""
    global _thread, _drain_lock, _start_lock, _held  # noqa: PLW0603 - worker state
    if _held is not None:  # forked mid-chunk: the child has no chunk to end, so none puts
        if _gc_get_threshold()[0] == _HELD:  # the thresholds back
            _gc_set_threshold(*_held)
        _held = None
    _thread = None
    _drain_lock = threading.Lock()
    _start_lock = threading.Lock()
    _tasks.clear()
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        # A multiprocessing child ends with os._exit, past atexit: flush when its target
        # returns. Registered for after multiprocessing's own reset of its finalizers.
        mp_util.register_after_fork(_MP_CHILD, _flush_when_mp_child_exits)


class _MultiprocessingChild:
    """The (weak-referenceable) key of our entry in multiprocessing's after-fork registry."""


_MP_CHILD = _MultiprocessingChild()


def _flush_when_mp_child_exits(_key: _MultiprocessingChild) -> None:
    global _mp_flush_pid  # noqa: PLW0603 - once per process
    if _mp_flush_pid == os.getpid():
        return  # the fork hook and the worker's start both ask for it
    _mp_flush_pid = os.getpid()
    import multiprocessing.util

    multiprocessing.util.Finalize(None, flush, exitpriority=10)


_mp_flush_pid: int | None = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _start() -> None:
    global _thread  # noqa: PLW0603 - one worker per process; its state is module-level
    with _start_lock:
        if _thread is None:
            thread = threading.Thread(target=_run, name="openai-bluegreen-telemetry", daemon=True)
            thread.start()
            _thread = thread
            # Registered now, after the app made its providers: atexit runs last-in first-out,
            # so pending records reach the providers before they shut down.
            atexit.register(flush)
            # A multiprocessing child that imported us only after it started (a Pool
            # initializer, any forkserver child) ends with os._exit, past atexit, and had no
            # fork hook of ours to register the flush: register it now.
            mp = sys.modules.get("multiprocessing")
            if mp is not None and mp.parent_process() is not None:
                _flush_when_mp_child_exits(_MP_CHILD)
