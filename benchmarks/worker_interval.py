"""How often the telemetry worker drains its queue: throughput, collector time and tail latency.

The same plugin (routing + spans + metrics into SDK providers) with the worker's interval set to
each value given, interleaved with plain ``openai`` in one process, against a fast simulated
upstream in another process. Async: 64 calls in flight, throughput with the telemetry still
queued at the end of a block recorded inside the timed region, and the garbage collector's CPU
per call split by the thread that ran the pass. Sync: one call at a time; median, mean (the
block's leftover telemetry charged to it), p99 and p99.9 per call.

    python benchmarks/worker_interval.py            # full run, writes BENCHMARKS.md
    python benchmarks/worker_interval.py --quick    # smoke run, prints only
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai

import openai_bluegreen
from _common import (
    GcMeter,
    machine,
    median,
    paired_added,
    paired_mean_added,
    paired_ratio,
    percentile,
    providers,
    timed_async_rounds,
    timed_sync_calls,
    write_section,
)
from openai_bluegreen import _worker
from openai_bluegreen.cli import _at_least_one
from openai_bluegreen.testing import UpstreamProcess

CONFIG = {"rollouts": [{
    "name": "bench", "match": {"model": "bench-model"}, "weight": 50,
    "blue": {"model": "bench-blue"}, "green": {"model": "bench-green"},
}]}


def make_arms(intervals: list[float]) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    tracer_provider, meter_provider, _, _ = providers()
    default = _worker._INTERVAL
    # The worker sleeps through its interval; an arm that changes the interval wakes it, so the
    # new interval holds from the arm's start, not after the previous arm's last sleep.
    wake = threading.Event()

    def sleep(seconds: float) -> None:
        wake.wait(seconds)
        wake.clear()

    _worker._sleep = sleep

    def installed(interval: float) -> tuple[Callable[[], None], Callable[[], None]]:
        def setup() -> None:
            _worker._INTERVAL = interval
            wake.set()
            openai_bluegreen.install(CONFIG, tracer_provider=tracer_provider,
                                     meter_provider=meter_provider)

        def teardown() -> None:
            openai_bluegreen.uninstall()
            _worker._INTERVAL = default

        return setup, teardown

    def nothing() -> None:
        return None

    arms = {"plain": (nothing, nothing)}
    for interval in intervals:
        arms[label(interval)] = installed(interval)
    return arms


def label(interval: float) -> str:
    return f"bluegreen, every {interval * 1000:.0f} ms"


async def run_async(base_url: str, arms: dict[str, Any], rounds: int, block: int
                    ) -> dict[str, dict[str, list[float]]]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    out: dict[str, dict[str, list[float]]] = {
        key: {arm: [] for arm in arms} for key in ("throughput", "gc_main", "gc_worker")}

    def record(arm: str, seconds: float, _cpu: float, meter: GcMeter) -> None:
        out["throughput"][arm].append(block / seconds)
        out["gc_main"][arm].append(meter.seconds["main"] / block)
        out["gc_worker"][arm].append(meter.seconds["worker"] / block)

    await timed_async_rounds(client, arms, rounds, block, 64, 500, record)
    await client.close()
    return out


def run_sync(base_url: str, arms: dict[str, Any], rounds: int, block: int
             ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per arm: every call's seconds, and each block's leftover telemetry's seconds."""
    with openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0) as client:
        flushes: dict[str, list[float]] = {}
        calls = timed_sync_calls(client, arms, rounds, block, flushes=flushes)
    return calls, flushes


def report(measured: dict[str, dict[str, list[float]]], calls: dict[str, list[float]],
           flushes: dict[str, list[float]], command: str, rounds: tuple[int, int],
           blocks: tuple[int, int]) -> str:
    throughput = measured["throughput"]
    base = median(calls["plain"])
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine()}. Upstream: simulated, zero latency, separate process, loopback.",
        "",
        f"Async, 64 calls in flight ({rounds[0]} rounds of {blocks[0]}-call blocks; the "
        "telemetry still queued after a block's last call is recorded inside its timed region):",
        "",
        "| arm | vs plain (median of per-round ratios) | GC CPU per call, main thread | "
        "GC CPU per call, worker |",
        "|---|---:|---:|---:|",
    ]
    for arm in throughput:
        ratio = paired_ratio(throughput, arm)
        lines.append(f"| {arm} | {ratio:.1%} | {median(measured['gc_main'][arm]) * 1e6:.1f} µs | "
                     f"{median(measured['gc_worker'][arm]) * 1e6:.1f} µs |")
    lines += [
        "",
        f"Sync, one call at a time ({rounds[1]} rounds of {blocks[1]}-call blocks):",
        "",
        "| arm | median added | mean added, leftover telemetry included | p99 | p99.9 |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm, times in calls.items():
        added = paired_added(calls, arm, rounds[1])
        mean = paired_mean_added(calls, flushes, arm, rounds[1])
        lines.append(f"| {arm} | {added * 1e6:+.1f} µs ({added / base:+.1%}) | "
                     f"{mean * 1e6:+.1f} µs ({mean / base:+.1%}) | "
                     f"{percentile(times, 0.99) * 1e6:.0f} µs | "
                     f"{percentile(times, 0.999) * 1e6:.0f} µs |")
    lines += [
        "",
        "A burst records every call since the last one, with the garbage collector's young "
        "passes held off; the spans it hands to the batch span processor stay alive until its "
        "next export, and the young pass after the burst also walks the young objects of the "
        "app's in-flight calls. Fewer, larger bursts pay that pass less often (worker GC "
        "column). The price is in "
        "the sync tail: a request thread whose answer arrives during a burst waits for the "
        "GIL, which the interpreter hands over every "
        "switch interval (5 ms), so a long burst can delay a call by several of them (p99.9).",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run; do not write the file")
    parser.add_argument("--intervals", default="0.05,0.25,1.0",
                        help="worker intervals to compare, seconds, comma-separated")
    parser.add_argument("--async-rounds", type=_at_least_one, default=8)
    parser.add_argument("--async-block", type=_at_least_one, default=2000)
    parser.add_argument("--sync-rounds", type=_at_least_one, default=4)
    # Several of the longest interval (about 0.9 ms a call): a burst that falls after a
    # block's last call is recorded outside the per-call times (the mean still counts it).
    parser.add_argument("--sync-block", type=_at_least_one, default=3000)
    args = parser.parse_args()
    try:
        intervals = [float(x) for x in args.intervals.split(",")]
    except ValueError:
        parser.error(f"--intervals takes seconds separated by commas (got {args.intervals!r})")
    if any(not 0 < x <= 10 for x in intervals):
        parser.error(f"--intervals must each be in (0, 10] seconds (got {args.intervals!r})")
    if args.quick:
        args.async_rounds, args.async_block, args.sync_rounds, args.sync_block = 2, 400, 2, 200
    arms = make_arms(intervals)
    with UpstreamProcess("bench") as upstream:
        base_url = upstream.base_url
        measured = asyncio.run(run_async(base_url, arms, args.async_rounds, args.async_block))
        calls, flushes = run_sync(base_url, arms, args.sync_rounds, args.sync_block)
    command = " ".join(["python benchmarks/worker_interval.py", *sys.argv[1:]])
    text = report(measured, calls, flushes, command,
                  (args.async_rounds, args.sync_rounds), (args.async_block, args.sync_block))
    print(text)
    if not args.quick:
        write_section("Telemetry worker interval (benchmarks/worker_interval.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
