"""The telemetry worker: records metrics and finishes spans off the request path.

The request path only appends a task (a callable taking no arguments; a routed call is its own
task) to a deque (tens of nanoseconds). A daemon thread drains it every 50 ms, in one burst.
``flush()`` drains it in the caller, e.g. before reading an in-memory exporter in a test, and
runs at interpreter exit so nothing recorded is lost. A task that raises is logged and dropped:
telemetry faults never reach the caller.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["flush", "submit"]

logger = logging.getLogger("openai_bluegreen")

MAX_PENDING = 200_000
# One burst per interval: the worker takes the GIL once per burst instead of contending with
# request threads after every call (GIL hand-offs cost more than the records themselves).
_INTERVAL = 0.05
_sleep = time.sleep

_tasks: collections.deque[Callable[[], None]] = collections.deque()
_drain_lock = threading.Lock()
_thread: threading.Thread | None = None
_start_lock = threading.Lock()
dropped = 0


def submit(task: Callable[[], None]) -> None:
    """Queue ``task()`` for the worker. Never blocks; drops (and counts) when overloaded.

    One object per task and nothing more: every queued object lives until the next burst, and
    each one that outlives a garbage-collector pass costs the whole process (see ``_call``).
    """
    global dropped  # noqa: PLW0603 - one worker per process; its state is module-level
    if len(_tasks) >= MAX_PENDING:
        dropped += 1
        if dropped == 1:
            logger.warning("openai-bluegreen: telemetry worker overloaded; dropping records")
        return
    _tasks.append(task)
    if _thread is None:
        _start()


def _drain() -> int:
    done = 0
    with _drain_lock:
        pop = _tasks.popleft
        while True:
            try:
                task = pop()
            except IndexError:
                return done
            try:
                task()
            except Exception:
                logger.debug("openai-bluegreen: telemetry task failed", exc_info=True)
            done += 1


def flush() -> None:
    """Record everything queued so far, in the calling thread."""
    _drain()


def _run() -> None:
    while True:
        if _tasks:
            _drain()
        _sleep(_INTERVAL)


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
