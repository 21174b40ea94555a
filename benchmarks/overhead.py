"""Per-call overhead: plain openai vs openai-bluegreen vs OpenTelemetry's OpenAI instrumentation.

Arms run interleaved in one process, in small blocks, against a fast simulated upstream in another
process; each arm is installed and uninstalled between blocks, outside the timed region. Two plain
arms show the noise floor. Sync: median time per call. Async: throughput with 64 calls in flight.

    python benchmarks/overhead.py            # full run, writes BENCHMARKS.md
    python benchmarks/overhead.py --quick    # smoke run, prints only
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider

import openai_bluegreen
from _common import (
    MESSAGES,
    machine,
    median,
    providers,
    timed_sync_calls,
    upstream_process,
    write_section,
)

ARMS = ("plain", "plain-again", "bluegreen", "bluegreen-noop-telemetry", "otel-openai")


def make_arms(base_url: str) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    from opentelemetry.instrumentation.genai.openai import OpenAIInstrumentor

    tracer_provider, meter_provider, _, _ = providers()
    official = OpenAIInstrumentor()
    config = {"rollouts": [{
        "name": "bench", "match": {"model": "bench-model"}, "weight": 50,
        "blue": {"model": "bench-blue"}, "green": {"model": "bench-green"},
    }]}

    def nothing() -> None:
        return None

    return {
        "plain": (nothing, nothing),
        "plain-again": (nothing, nothing),
        "bluegreen": (
            lambda: openai_bluegreen.install(config, tracer_provider=tracer_provider,
                                             meter_provider=meter_provider),
            openai_bluegreen.uninstall,
        ),
        # Routing alone: the same plugin with no-op providers (what telemetry costs = the gap).
        "bluegreen-noop-telemetry": (
            lambda: openai_bluegreen.install(config, tracer_provider=NoOpTracerProvider(),
                                             meter_provider=NoOpMeterProvider()),
            openai_bluegreen.uninstall,
        ),
        "otel-openai": (
            lambda: official.instrument(tracer_provider=tracer_provider,
                                        meter_provider=meter_provider),
            official.uninstrument,
        ),
    }


def run_sync(base_url: str, rounds: int, block: int) -> dict[str, list[float]]:
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0)
    return timed_sync_calls(client, make_arms(base_url), rounds, block)


async def _async_block(client: openai.AsyncOpenAI, total: int, concurrency: int) -> float:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await client.chat.completions.create(model="bench-model", messages=MESSAGES)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0)


async def run_async(base_url: str, rounds: int, block: int, concurrency: int
                    ) -> dict[str, list[float]]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    arms = make_arms(base_url)
    samples: dict[str, list[float]] = {arm: [] for arm in ARMS}
    await _async_block(client, 200, concurrency)
    for i in range(rounds):
        order = list(ARMS)
        random.Random(1000 + i).shuffle(order)
        for arm in order:
            setup, teardown = arms[arm]
            setup()
            samples[arm].append(await _async_block(client, block, concurrency))
            teardown()
            openai_bluegreen.flush()  # queued telemetry is not charged to the next arm
        print(f"\r  async round {i + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    await client.close()
    return samples


def report(sync: dict[str, list[float]], async_: dict[str, list[float]], command: str,
           concurrency: int) -> str:
    base = median(sync["plain"])
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine()}. Upstream: simulated, zero latency, separate process, loopback.",
        "",
        f"### Sync, one call at a time ({len(sync['plain'])} calls per arm, interleaved blocks)",
        "",
        "| arm | median per call | added vs plain | added / plain call |",
        "|---|---:|---:|---:|",
    ]
    for arm in ARMS:
        m = median(sync[arm])
        added = m - base
        lines.append(f"| {arm} | {m * 1e6:.1f} µs | {added * 1e6:+.1f} µs | {added / base:+.2%} |")
    ours = median(sync["bluegreen"]) - base
    official = median(sync["otel-openai"]) - base
    noise = median(sync["plain-again"]) - base
    ratio = ours / official if official > 0 else float("nan")
    lines += [
        "",
        f"openai-bluegreen added {ours * 1e6:.1f} µs per call = {ours / base:.2%} of a plain call "
        f"(noise floor, plain vs plain: {noise * 1e6:+.1f} µs = {noise / base:+.2%}); "
        f"OpenTelemetry's OpenAI instrumentation added {official * 1e6:.1f} µs. "
        f"Ours / theirs = {ratio:.2f}.",
        "",
        f"### Async, {concurrency} calls in flight ({len(async_['plain'])} blocks per arm)",
        "",
        "| arm | median throughput | vs plain (medians) | vs plain (median of per-round "
        "ratios) |",
        "|---|---:|---:|---:|",
    ]
    abase = median(async_["plain"])
    for arm in ARMS:
        m = median(async_[arm])
        paired = median([a / p for a, p in zip(async_[arm], async_["plain"], strict=True)])
        lines.append(f"| {arm} | {m:.0f} calls/s | {m / abase:.1%} | {paired:.1%} |")
    lines += [
        "",
        "Each round runs every arm once, in a shuffled order; the per-round ratio compares arms "
        "that ran seconds apart, which cancels the machine's slow drift. plain-again shows the "
        "noise floor of each statistic.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run; do not write the file")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--async-rounds", type=int, default=30)
    parser.add_argument("--async-block", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.block, args.async_rounds, args.async_block = 4, 30, 2, 300
    with upstream_process("--name", "bench") as base_url:
        sync = run_sync(base_url, args.rounds, args.block)
        async_ = asyncio.run(run_async(base_url, args.async_rounds, args.async_block,
                                       args.concurrency))
    command = "python benchmarks/overhead.py" + (" --quick" if args.quick else "")
    text = report(sync, async_, command, args.concurrency)
    print(text)
    if not args.quick:
        write_section("Per-call overhead (benchmarks/overhead.py)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
