"""Shared benchmark plumbing: a simulated upstream in its own process, telemetry providers."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
MESSAGES = [{"role": "user", "content": "Say something short."}]


class DiscardingExporter(SpanExporter):
    """Exports nowhere: the benchmark measures the cost on the caller, not a backend."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[object]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def providers() -> tuple[TracerProvider, MeterProvider, DiscardingExporter, InMemoryMetricReader]:
    exporter = DiscardingExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return tracer_provider, MeterProvider(metric_readers=[reader]), exporter, reader


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile ``q`` (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def write_section(title: str, body: str) -> None:
    """Replace (or append) one ``## title`` section of BENCHMARKS.md."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else (
        "# Benchmarks\n\nEvery table below was written by the command shown above it, on the "
        "machine named there. Re-run the command to refresh it.\n"
    )
    marker = f"\n## {title}\n"
    section = f"{marker}\n{body.strip()}\n"
    if marker in text:
        start = text.index(marker)
        end = text.find("\n## ", start + len(marker))
        text = text[:start] + section + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip() + "\n" + section
    BENCHMARKS_MD.write_text(text)


def machine() -> str:
    import platform

    import openai

    return (f"{platform.python_implementation()} {platform.python_version()}, "
            f"{os.cpu_count()} cores, openai {openai.__version__}")


Arms = dict[str, tuple[Callable[[], None], Callable[[], None]]]


def _flush() -> float:
    """Record the telemetry still queued; returns the seconds it took."""
    import openai_bluegreen

    t0 = time.perf_counter()
    openai_bluegreen.flush()
    return time.perf_counter() - t0


def timed_sync_calls(client: Any, arms: Arms, rounds: int, block: int, *, warm: int = 1,
                     label: str = "sync", flushes: dict[str, list[float]] | None = None
                     ) -> dict[str, list[float]]:
    """Per-call seconds of ``client.chat.completions.create`` for each arm.

    Each round runs every arm's block once, in a shuffled order: ``setup()``, ``warm`` untimed
    calls (lanes, the watcher's first look), ``block`` timed calls, then the telemetry still
    queued is recorded (its seconds go to ``flushes[arm]``, one entry per block, when given)
    and ``teardown()``.
    """
    samples: dict[str, list[float]] = {arm: [] for arm in arms}
    for _ in range(50):  # warm up connections, imports, caches
        client.chat.completions.create(model="bench-model", messages=MESSAGES)
    perf = time.perf_counter
    for i in range(rounds):
        order = list(arms)
        random.Random(i).shuffle(order)
        for arm in order:
            setup, teardown = arms[arm]
            setup()
            for _ in range(warm):
                client.chat.completions.create(model="bench-model", messages=MESSAGES)
            out = samples[arm]
            for _ in range(block):
                t0 = perf()
                client.chat.completions.create(model="bench-model", messages=MESSAGES)
                out.append(perf() - t0)
            spent = _flush()  # telemetry queued by this arm is not charged to the next one
            if flushes is not None:
                flushes.setdefault(arm, []).append(spent)
            teardown()
        print(f"\r  {label} round {i + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return samples


async def async_block(client: Any, total: int, concurrency: int) -> float:
    """``total`` chat calls with ``concurrency`` in flight; returns calls per second."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await client.chat.completions.create(model="bench-model", messages=MESSAGES)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0)


class GcMeter:
    """The garbage collector's passes during a block, and the CPU they took by the thread that
    ran them: ``main`` or the telemetry ``worker`` (a ``gc.callbacks`` hook).

    CPU of the collecting thread, not wall time: the callback is Python code, so another thread
    may take the GIL between "start" and the pass, and wall time would charge its work to the
    collector."""

    def __init__(self) -> None:
        self.passes = 0
        self.full = 0  # passes over the oldest generation: the whole heap
        self.longest = 0.0  # the longest single pass, in seconds: the app stalls that long
        self.seconds = {"main": 0.0, "worker": 0.0}
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.thread_time()
            return
        from openai_bluegreen import _worker

        took = time.thread_time() - self._t0
        self.passes += 1
        self.full += info.get("generation") == 2
        self.longest = max(self.longest, took)
        who = "worker" if threading.current_thread() is _worker._thread else "main"
        self.seconds[who] += took


Block = Callable[[str, float, float, GcMeter], None]


async def timed_async_rounds(client: Any, arms: Arms, rounds: int, block: int,
                             concurrency: int, seed: int, record: Block) -> None:
    """Each round runs every arm's block once, in a shuffled order: ``setup()``, ``block``
    calls with ``concurrency`` in flight, then the telemetry still queued (owed by this block,
    not by the next arm), timed inside the region, and ``teardown()``. Calls
    ``record(arm, seconds, process_cpu_seconds, gc_meter)`` for each block."""
    import openai_bluegreen

    await async_block(client, 200, concurrency)  # warm up connections, imports, caches
    for i in range(rounds):
        order = list(arms)
        random.Random(seed + i).shuffle(order)
        for arm in order:
            setup, teardown = arms[arm]
            setup()
            meter = GcMeter()
            gc.callbacks.append(meter)
            c0, t0 = time.process_time(), time.perf_counter()
            await async_block(client, block, concurrency)
            openai_bluegreen.flush()
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            gc.callbacks.remove(meter)
            record(arm, seconds, cpu, meter)
            teardown()
        print(f"\r  async round {i + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def per_round(values: list[float], rounds: int) -> list[list[float]]:
    size = len(values) // rounds
    return [values[i * size:(i + 1) * size] for i in range(rounds)]


def paired_ratio(throughput: dict[str, list[float]], arm: str) -> float:
    """Median over rounds of the arm's throughput / plain's in the same round."""
    return median([a / p for a, p in zip(throughput[arm], throughput["plain"], strict=True)])


def paired_added(sync: dict[str, list[float]], arm: str, rounds: int) -> float:
    """Median over rounds of (arm's block median - plain's block median in the same round).

    Blocks of one round ran seconds apart, so this cancels the machine's drift between rounds,
    which the difference of the overall medians does not."""
    return median([median(a) - median(p) for a, p in
                   zip(per_round(sync[arm], rounds), per_round(sync["plain"], rounds),
                       strict=True)])


def paired_mean_added(sync: dict[str, list[float]], flushes: dict[str, list[float]], arm: str,
                      rounds: int) -> float:
    """Like :func:`paired_added`, for the mean per call with the block's leftover telemetry
    (recorded after its last call) charged to the block: the whole cost, bursts included."""
    def means(name: str) -> list[float]:
        return [(sum(block) + spent) / len(block) for block, spent in
                zip(per_round(sync[name], rounds), flushes[name], strict=True)]
    return median([a - p for a, p in zip(means(arm), means("plain"), strict=True)])
