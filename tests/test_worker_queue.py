"""The telemetry queue keeps nothing a call allocated: per-call objects would outlive the call and
push the garbage collector into extra passes in apps with many calls in flight."""

from __future__ import annotations

import gc
from typing import Any

import openai

import openai_bluegreen
from openai_bluegreen import _worker
from openai_bluegreen._telemetry import intern_reasons
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, Telemetry, rollout_config

MSGS = [{"role": "user", "content": "hi"}]


def _containers_queued() -> set[int]:
    return {id(item) for item in _worker._tasks if gc.is_tracked(item)}


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
    # Only shared objects (router, lanes, the caller's context, the task function, the shared
    # finish-reasons tuple) are referenced; their number does not grow with the calls.
    assert after_60 == after_20
    assert len(after_20) <= 8
    assert queued_items > 60
    spans = [s for s in telemetry.spans() if s.name.startswith("chat ")]
    assert len(spans) == 70
    assert {s.attributes["gen_ai.response.finish_reasons"] for s in spans} == {("stop",)}


def test_finish_reasons_are_shared_and_the_cache_is_bounded() -> None:
    a = intern_reasons(tuple(["stop"]))
    b = intern_reasons(tuple(["stop"]))
    assert a == ("stop",) and a is b
    assert intern_reasons(()) == ()
    many = [intern_reasons((f"reason-{i}",)) for i in range(1000)]
    assert [r[0] for r in many] == [f"reason-{i}" for i in range(1000)]
    from openai_bluegreen import _telemetry

    assert len(_telemetry._REASONS) <= _telemetry._REASONS_MAX
