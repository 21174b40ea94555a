"""Where the per-call cost goes, without a network: the routing wrapper on a canned response.

Arms: the wrapper with no-op providers (routing only), the wrapper with SDK providers and the
telemetry worker paused (what the request path pays), and the SDK operations the worker runs
per call (one ``Histogram.record`` with our attribute set; one span with our attributes).

    python benchmarks/hotpath.py            # writes its table to BENCHMARKS.md
    python benchmarks/hotpath.py --quick    # smoke run, prints only
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai
from openai.types.chat import ChatCompletion
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider, SpanKind

import openai_bluegreen
from _common import machine, providers, write_section
from openai_bluegreen import _patch, _worker

N = 20_000
CONFIG = {"rollouts": [{"name": "bench", "match": {"model": "bench-model"}, "weight": 50,
                        "blue": {"model": "b"}, "green": {"model": "g"}}]}
CANNED = ChatCompletion.model_validate({
    "id": "x", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}})


def per_call_us(fn: object) -> float:
    return timeit.timeit(fn, number=N) / N * 1e6  # type: ignore[arg-type]


def cold_us(call: Callable[[], None]) -> float:
    """Median µs of ``call()`` when each one follows a real SDK call (untimed, not routed,
    answered in process by a mock transport): what the wrapper costs between an app's calls,
    where the SDK's own work has pushed it out of the CPU's caches. Back to back, as
    ``per_call_us`` times it, it stays warm and looks about 3x cheaper."""
    from openai_bluegreen._call import sdk_http

    httpx = sdk_http()  # the HTTP library the SDK sends with
    body = CANNED.model_dump_json().encode()
    mock = openai.OpenAI(base_url="http://mock.invalid/v1", api_key="x", max_retries=0,
                         http_client=httpx.Client(transport=httpx.MockTransport(
                             lambda _request: httpx.Response(
                                 200, content=body,
                                 headers={"content-type": "application/json"}))))
    messages = [{"role": "user", "content": "x"}]
    times = []
    for _ in range(max(200, N // 10)):
        mock.chat.completions.create(model="not-routed", messages=messages)  # type: ignore
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    mock.close()
    return statistics.median(times) * 1e6


def main() -> int:
    global N  # noqa: PLW0603 - the timing loops read it
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run; do not write the file")
    args = parser.parse_args()
    if args.quick:
        N = 500
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x", max_retries=0)
    resource = client.chat.completions
    wrapper = _patch._sync_wrapper("chat", None, "chat_completions")
    kwargs = {"model": "bench-model", "messages": [{"role": "user", "content": "x"}],
              "temperature": 0.7, "max_tokens": 256}

    def wrapped(*_args: object, **_kwargs: object) -> ChatCompletion:
        return CANNED

    def call() -> None:
        wrapper(wrapped, resource, (), kwargs)

    def timed_call() -> float:
        call()  # warm-up: builds the lane outside the timed region
        return per_call_us(call)

    tracer_provider, meter_provider, _, _ = providers()
    _worker._thread = object()  # type: ignore[assignment]  # pause the worker: time the caller
    rows = []
    openai_bluegreen.install(CONFIG, tracer_provider=NoOpTracerProvider(),
                             meter_provider=NoOpMeterProvider())
    rows.append(("wrapper, no-op providers (routing only)", timed_call()))
    _worker._tasks.clear()
    openai_bluegreen.install(CONFIG, tracer_provider=tracer_provider,
                             meter_provider=meter_provider)
    call()
    _worker._tasks.clear()
    rows.append(("wrapper, SDK providers, worker paused (request path)", per_call_us(call)))
    t0 = timeit.default_timer()
    _worker.flush()  # the tasks of the N (+1 warm-up) calls above, run in this thread
    rows.append(("worker tasks of one call, drained afterwards",
                 (timeit.default_timer() - t0) / N * 1e6))
    rows.insert(-1, ("the same, each call after an unrouted SDK call (caches cold)",
                     cold_us(call)))
    _worker._tasks.clear()
    openai_bluegreen.uninstall()

    meter = meter_provider.get_meter("bench")
    histogram = meter.create_histogram("h", unit="s")
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
             "gen_ai.request.model": "m", "bluegreen.rollout": "r",
             "bluegreen.environment": "green", "server.address": "127.0.0.1",
             "server.port": 8080}
    rows.append(("one Histogram.record with our 7 attributes",
                 per_call_us(lambda: histogram.record(0.05, attrs))))
    tracer = tracer_provider.get_tracer("bench")
    end_attrs = {"bluegreen.requested_model": "x", "feature_flag.key": "r",
                 "feature_flag.result.variant": "green", "gen_ai.response.id": "abc",
                 "gen_ai.usage.input_tokens": 5, "gen_ai.usage.output_tokens": 6}

    all_attrs = {**attrs, **end_attrs}

    def span() -> None:
        s = tracer.start_span("chat m", kind=SpanKind.CLIENT, attributes=all_attrs)
        s.end()

    rows.append(("one span with our attributes, all given at start", per_call_us(span)))
    # What a finished span leaves for the garbage collector while the batch span processor
    # holds it: new tracked objects count toward the next young pass (its trigger is 700).
    # 400 spans: fewer than the processor's export batch (512), so none is exported meanwhile.
    tracer_provider.force_flush()
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for _ in range(400):
            span()
        kept = (gc.get_count()[0] - before) / 400
    finally:
        gc.enable()
    lines_extra = [f"| objects the collector tracks, left per finished span until export | "
                   f"{kept:.1f} objects |"]
    lines = ["Command: `python benchmarks/hotpath.py`  ", f"Machine: {machine()}. No network.",
             "", "| what | per call |", "|---|---:|"]
    lines += [f"| {name} | {value:.1f} µs |" for name, value in rows]
    lines += lines_extra
    text = "\n".join(lines)
    print(text)
    if args.quick:
        print("(--quick: BENCHMARKS.md not written)")
    else:
        write_section("Where the per-call cost goes (benchmarks/hotpath.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
