"""``openai-bluegreen demo``: a blue/green rollout under live traffic, on this machine only.

Two simulated OpenAI-compatible upstreams run on loopback: blue (``gpt-4.1``, a little slower)
and green (``deepseek-v3.2``, faster but with twice the 503s). An unchanged-style app calls
``client.chat.completions.create(model="gpt-4.1", ...)`` from several threads; the installed
rollout sends ``weight`` percent of users to green, falls back to blue when green fails, and
records the GenAI metrics that the live view reads back from an in-memory metric reader.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import random
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricsData,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import TracerProvider

from . import _telemetry as T
from ._install import flush, install, status, uninstall
from .testing import SimulatedUpstream

__all__ = ["DemoResult", "EnvironmentStats", "histogram_quantile", "run_demo"]

ROLLOUT = "chat-upgrade"
REQUESTED_MODEL = "gpt-4.1"
BLUE_MODEL = "gpt-4.1"
GREEN_MODEL = "deepseek-v3.2"
GREEN_KEY_ENV = "DEMO_GREEN_API_KEY"
STREAM_SHARE = 0.2
USERS = 100_000
SEED = 20_240_601

Environment = Literal["blue", "green"]
ENVIRONMENTS: tuple[Environment, Environment] = ("blue", "green")

_PROMPTS = (
    "Summarize our refund policy in two sentences.",
    "Translate 'good morning' into French.",
    "Suggest a name for a coffee shop.",
    "What is a blue/green deployment?",
    "Write a haiku about latency.",
)


@dataclass(frozen=True)
class EnvironmentStats:
    """What one environment served, as read back from the GenAI metrics.

    Attributes:
        requests: Calls this environment answered or failed (``gen_ai.client.operation.duration``
            points). Blue's include the fallback retries of failed green calls.
        errors: Those whose duration point carries ``error.type``.
        p95_latency: 95th percentile of the operation duration in seconds, estimated from the
            histogram buckets; ``None`` before the first call.
        p95_ttfc: 95th percentile time to first chunk of streamed calls, in seconds.
        output_tokens: Output tokens reported by ``gen_ai.client.token.usage``.
        fallbacks: Failed calls retried on blue (``bluegreen.fallbacks``; green only).
    """

    requests: int = 0
    errors: int = 0
    p95_latency: float | None = None
    p95_ttfc: float | None = None
    output_tokens: int = 0
    fallbacks: int = 0

    @property
    def error_rate(self) -> float:
        """Errors per request, 0..1 (0 when nothing was served)."""
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class DemoResult:
    """The outcome of :func:`run_demo`.

    Attributes:
        blue: What blue served.
        green: What green served.
        fallbacks: Green calls retried on blue.
        green_share: Share of the app's calls routed to green first, 0..1: green's requests
            over the logical calls (blue + green requests - fallbacks).
        weight: The configured percentage to green.
        calls: Calls the app made (finished ones).
        calls_failed_for_caller: Calls that raised in the app despite fallback.
        failures: Exception class names of those calls, with counts.
        elapsed: Seconds the traffic ran.
        interrupted: The demo was stopped early with Ctrl-C.
    """

    blue: EnvironmentStats
    green: EnvironmentStats
    fallbacks: int
    green_share: float
    weight: float
    calls: int
    calls_failed_for_caller: int
    failures: Mapping[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    interrupted: bool = False

    def environment(self, name: Environment) -> EnvironmentStats:
        """The stats of ``"blue"`` or ``"green"``."""
        return self.green if name == "green" else self.blue


# -- reading the metrics -------------------------------------------------------------------


def histogram_quantile(bounds: Iterable[float], counts: Iterable[int], q: float, *,
                       low: float | None = None, high: float | None = None) -> float | None:
    """Estimate a quantile from explicit-bucket histogram counts, as Prometheus does.

    The value is interpolated linearly inside the bucket that holds the rank. The open first and
    last buckets are closed with ``low`` (default 0) and ``high`` (the observed min and max).

    Args:
        bounds: The histogram's ``explicit_bounds`` (upper bounds, ascending).
        counts: Its ``bucket_counts``: one more than ``bounds``, the last one unbounded.
        q: The quantile, 0..1.
        low: Smallest observed value, if known.
        high: Largest observed value, if known.

    Returns:
        The estimate, or ``None`` when the histogram is empty.
    """
    edges = list(bounds)
    tally = list(counts)
    total = sum(tally)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(tally):
        if count and seen + count >= rank:
            lower = edges[i - 1] if i > 0 else 0.0
            upper = edges[i] if i < len(edges) else (high if high is not None else lower)
            if low is not None:
                lower = max(lower, low)
            if high is not None:
                upper = min(upper, high)
            upper = max(upper, lower)
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return high


@dataclass
class _Merged:
    """Histogram points of one environment summed bucket by bucket."""

    bounds: tuple[float, ...] = ()
    counts: list[int] = field(default_factory=list)
    low: float = math.inf
    high: float = -math.inf
    total: float = 0.0

    def add(self, point: HistogramDataPoint) -> None:
        bounds = tuple(point.explicit_bounds)
        if not self.counts:
            self.bounds = bounds
            self.counts = [0] * len(point.bucket_counts)
        if bounds != self.bounds:  # never happens with one instrument; skip rather than mix
            return
        self.counts = [a + b for a, b in zip(self.counts, point.bucket_counts, strict=True)]
        if point.count:
            self.low = min(self.low, point.min)
            self.high = max(self.high, point.max)
        self.total += point.sum

    def p95(self) -> float | None:
        if not any(self.counts):
            return None
        return histogram_quantile(self.bounds, self.counts, 0.95, low=self.low, high=self.high)


def _points(data: MetricsData | None, name: str) -> Iterator[tuple[Mapping[str, Any], Any]]:
    for resource_metrics in data.resource_metrics if data is not None else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        yield (point.attributes or {}), point


def read_stats(reader: InMemoryMetricReader) -> dict[Environment, EnvironmentStats]:
    """Flush the telemetry worker and summarize the reader's metrics per environment.

    Args:
        reader: The reader of the meter provider given to ``install()`` (cumulative).

    Returns:
        ``{"blue": ..., "green": ...}``.
    """
    flush()
    data = reader.get_metrics_data()
    durations = {env: _Merged() for env in ENVIRONMENTS}
    ttfcs = {env: _Merged() for env in ENVIRONMENTS}
    errors = dict.fromkeys(ENVIRONMENTS, 0)
    tokens = dict.fromkeys(ENVIRONMENTS, 0)
    fallbacks = dict.fromkeys(ENVIRONMENTS, 0)
    for attrs, point in _points(data, "gen_ai.client.operation.duration"):
        env = attrs.get(T.ENVIRONMENT)
        if env in durations and isinstance(point, HistogramDataPoint):
            durations[env].add(point)
            if T.ERROR_TYPE in attrs:
                errors[env] += point.count
    for attrs, point in _points(data, "gen_ai.client.operation.time_to_first_chunk"):
        env = attrs.get(T.ENVIRONMENT)
        if env in ttfcs and isinstance(point, HistogramDataPoint):
            ttfcs[env].add(point)
    for attrs, point in _points(data, "gen_ai.client.token.usage"):
        env = attrs.get(T.ENVIRONMENT)
        if env in tokens and attrs.get(T.TOKEN_TYPE) == "output" and isinstance(
                point, HistogramDataPoint):
            tokens[env] += round(point.sum)
    for attrs, point in _points(data, "bluegreen.fallbacks"):
        env = attrs.get(T.ENVIRONMENT)
        if env in fallbacks and isinstance(point, NumberDataPoint):
            fallbacks[env] += round(point.value)
    return {
        env: EnvironmentStats(
            requests=sum(durations[env].counts),
            errors=errors[env],
            p95_latency=durations[env].p95(),
            p95_ttfc=ttfcs[env].p95(),
            output_tokens=tokens[env],
            fallbacks=fallbacks[env],
        )
        for env in ENVIRONMENTS
    }


def green_share(stats: Mapping[Environment, EnvironmentStats]) -> float:
    """Share of logical calls routed to green first (a fallback is one call, two requests)."""
    blue, green = stats["blue"], stats["green"]
    calls = blue.requests + green.requests - green.fallbacks
    return green.requests / calls if calls > 0 else 0.0


# -- traffic -------------------------------------------------------------------------------


class _Pacer:
    """Hands out send times ``1/rate`` apart to all threads; never bursts to catch up."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def next_slot(self) -> float:
        with self._lock:
            now = time.monotonic()
            if self._next < now - 0.25:  # fell behind (all threads busy): restart from now
                self._next = now
            slot = self._next
            self._next += self._interval
            return slot


class _Tally:
    """Calls made by the app and the exceptions it saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.failures: collections.Counter[str] = collections.Counter()

    def done(self, failure: str | None) -> None:
        with self._lock:
            self.calls += 1
            if failure is not None:
                self.failures[failure] += 1

    @property
    def failed(self) -> int:
        with self._lock:
            return sum(self.failures.values())


def _one_call(client: openai.OpenAI, rng: random.Random) -> None:
    """One chat call exactly as an unchanged app makes it; streams are read to the end."""
    messages: list[Any] = [{"role": "user", "content": rng.choice(_PROMPTS)}]
    user = f"user-{rng.randrange(USERS):05d}"
    if rng.random() < STREAM_SHARE:
        stream = client.chat.completions.create(
            model=REQUESTED_MODEL, messages=messages, user=user, stream=True,
            stream_options={"include_usage": True},
        )
        with stream:
            for _chunk in stream:
                pass
    else:
        client.chat.completions.create(model=REQUESTED_MODEL, messages=messages, user=user)


def _drive(client: openai.OpenAI, pacer: _Pacer, tally: _Tally, *, stop: threading.Event,
           deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        slot = pacer.next_slot()
        if slot >= deadline or stop.wait(max(0.0, slot - time.monotonic())):
            return
        try:
            _one_call(client, rng)
        except Exception as exc:  # the demo counts failures; it never crashes on them
            tally.done(type(exc).__name__)
        else:
            tally.done(None)


# -- rendering -----------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _table(stats: Mapping[Environment, EnvironmentStats]) -> list[str]:
    models = {"blue": BLUE_MODEL, "green": GREEN_MODEL}
    lines = [f"{'env':<6} {'model':<14} {'requests':>8} {'errors':>6} {'error %':>7} "
             f"{'p95 latency':>11} {'p95 ttfc':>8} {'tokens out':>10} {'fallbacks':>9}"]
    for env in ENVIRONMENTS:
        s = stats[env]
        fallbacks = str(s.fallbacks) if env == "green" else "-"
        lines.append(f"{env:<6} {models[env]:<14} {s.requests:>8} {s.errors:>6} "
                     f"{s.error_rate:>7.2%} {_ms(s.p95_latency):>11} {_ms(s.p95_ttfc):>8} "
                     f"{s.output_tokens:>10} {fallbacks:>9}")
    return lines


def _bar(fraction: float, width: int = 30) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _live_frame(stats: Mapping[Environment, EnvironmentStats], elapsed: float, duration: float,
                weight: float, tally: _Tally) -> list[str]:
    rate = tally.calls / elapsed if elapsed > 0 else 0.0
    return [
        f"openai-bluegreen demo: rollout {ROLLOUT!r}, app asks for {REQUESTED_MODEL}",
        f"{_bar(elapsed / duration)} {elapsed:5.1f} s / {duration:g} s "
        f"({max(0.0, duration - elapsed):.1f} s left)",
        f"app calls: {tally.calls} ({rate:.0f}/s), failed for the caller: {tally.failed}",
        "",
        *_table(stats),
        "",
        f"green share {green_share(stats):6.1%} (configured {weight:g}%)",
        "Ctrl-C stops early and prints the summary",
    ]


def _compact_line(stats: Mapping[Environment, EnvironmentStats], elapsed: float,
                  duration: float, weight: float, tally: _Tally) -> str:
    blue, green = stats["blue"], stats["green"]
    return (f"[{elapsed:5.1f}/{duration:g} s] "
            f"blue {blue.requests} req {blue.errors} err p95 {_ms(blue.p95_latency)} | "
            f"green {green.requests} req {green.errors} err p95 {_ms(green.p95_latency)} | "
            f"fallbacks {green.fallbacks} | green {green_share(stats):.1%} (target {weight:g}%) | "
            f"failed {tally.failed}")


class _View:
    """Writes frames: redrawn in place on a terminal, one compact line each otherwise."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self._out = out
        self._live = live
        self._height = 0

    def show(self, stats: Mapping[Environment, EnvironmentStats], elapsed: float,
             duration: float, weight: float, tally: _Tally) -> None:
        if self._live:
            lines = _live_frame(stats, elapsed, duration, weight, tally)
            erase = f"\x1b[{self._height}A\r\x1b[J" if self._height else ""
            self._out.write(erase + "\n".join(lines) + "\n")
            self._height = len(lines)
        else:
            self._out.write(_compact_line(stats, elapsed, duration, weight, tally) + "\n")
        self._out.flush()


def _comparison(blue: EnvironmentStats, green: EnvironmentStats) -> str | None:
    if blue.p95_latency is None or green.p95_latency is None or not blue.p95_latency:
        return None
    change = (green.p95_latency - blue.p95_latency) / blue.p95_latency
    points = (green.error_rate - blue.error_rate) * 100
    return f"green vs blue: p95 latency {change:+.0%}, error rate {points:+.2f} points"


def render_summary(result: DemoResult) -> str:
    """The end-of-demo report as text."""
    stats: dict[Environment, EnvironmentStats] = {"blue": result.blue, "green": result.green}
    rate = result.calls / result.elapsed if result.elapsed > 0 else 0.0
    head = "Summary" + (" (interrupted)" if result.interrupted else "")
    failed = f"calls failed for the caller: {result.calls_failed_for_caller}"
    if result.failures:
        failed += " (" + ", ".join(f"{name} x{n}" for name, n in
                                   sorted(result.failures.items())) + ")"
    lines = [
        "",
        f"{head}: {result.calls} calls in {result.elapsed:.1f} s ({rate:.0f}/s), rollout "
        f"{ROLLOUT!r} at {result.weight:g}% green",
        *_table(stats),
        f"fallbacks green -> blue: {result.fallbacks}; green share {result.green_share:.1%} "
        f"(configured {result.weight:g}%)",
        failed,
    ]
    comparison = _comparison(result.blue, result.green)
    if comparison is not None:
        lines.append(comparison)
    return "\n".join(lines) + "\n"


# -- the demo ------------------------------------------------------------------------------


def _config(blue: SimulatedUpstream, green: SimulatedUpstream, weight: float) -> dict[str, Any]:
    return {"rollouts": [{
        "name": ROLLOUT,
        "match": {"model": REQUESTED_MODEL},
        "blue": {"model": BLUE_MODEL, "base_url": blue.base_url},
        "green": {"model": GREEN_MODEL, "base_url": green.base_url,
                  "api_key_env": GREEN_KEY_ENV},
        "weight": weight,
    }]}


@contextlib.contextmanager
def _demo_key() -> Iterator[None]:
    """A dummy green key in this process's environment, unless the user set one."""
    if os.environ.get(GREEN_KEY_ENV):
        yield
        return
    os.environ[GREEN_KEY_ENV] = "demo-green-key"
    try:
        yield
    finally:
        os.environ.pop(GREEN_KEY_ENV, None)


def _is_terminal(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # closed stream
        return False


def run_demo(duration: float = 20.0, weight: float = 30.0, concurrency: int = 8,
             rate: float = 100.0, *, out: TextIO = sys.stdout, live: bool | None = None
             ) -> DemoResult:
    """Run a blue/green rollout against two local simulated upstreams and report on it.

    Installs openai-bluegreen with its own tracer and meter providers for the duration (an
    existing installation is replaced and uninstalled at the end), drives chat traffic from
    ``concurrency`` threads, shows the per-environment metrics once a second, and prints a
    summary. Ctrl-C ends the traffic early and still prints the summary.

    Args:
        duration: Seconds of traffic.
        weight: Percent of users routed to green.
        concurrency: Threads making calls.
        rate: Target calls per second over all threads (the threads' capacity caps it).
        out: Where the view and summary are written.
        live: Redraw in place with ANSI escapes; ``None`` does so when ``out`` is a terminal.

    Returns:
        The per-environment numbers, fallbacks, green share and failures seen by the app.

    Raises:
        ValueError: An argument is out of range.
    """
    problems = []
    if not (math.isfinite(duration) and duration > 0):
        problems.append(f"duration must be > 0 seconds (got {duration!r})")
    if not (math.isfinite(weight) and 0 <= weight <= 100):
        problems.append(f"weight must be between 0 and 100 (got {weight!r})")
    if concurrency < 1:
        problems.append(f"concurrency must be >= 1 (got {concurrency!r})")
    if not (math.isfinite(rate) and rate > 0):
        problems.append(f"rate must be > 0 calls per second (got {rate!r})")
    if problems:
        raise ValueError("; ".join(problems))
    live = _is_terminal(out) if live is None else live
    view = _View(out, live)
    tally = _Tally()
    stop = threading.Event()
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    blue = SimulatedUpstream("blue", latency=0.08, latency_sigma=0.3, ttfc=0.03,
                             error_rates={503: 0.005}, seed=SEED)
    green = SimulatedUpstream("green", latency=0.06, latency_sigma=0.3, ttfc=0.02,
                              error_rates={503: 0.01}, seed=SEED + 1)
    threads: list[threading.Thread] = []
    client: openai.OpenAI | None = None
    interrupted = False
    started = time.monotonic()
    elapsed = 0.0
    try:
        with _demo_key():
            blue.start()
            green.start()
            install(_config(blue, green, weight), tracer_provider=tracer_provider,
                    meter_provider=meter_provider)
            configured = float(status()["rollouts"][0]["weight"])
            client = openai.OpenAI(base_url=blue.base_url, api_key="demo-blue-key",
                                   max_retries=0)
            pacer = _Pacer(rate)
            started = time.monotonic()
            deadline = started + duration
            threads = [
                threading.Thread(target=_drive, name=f"demo-caller-{i}", daemon=True,
                                 args=(client, pacer, tally),
                                 kwargs={"stop": stop, "deadline": deadline,
                                         "seed": SEED + 100 + i})
                for i in range(concurrency)
            ]
            for thread in threads:
                thread.start()
            try:
                tick = started
                while True:
                    now = time.monotonic()
                    if now >= deadline:
                        break
                    tick = min(tick + 1.0, deadline)
                    time.sleep(max(0.0, tick - now))
                    elapsed = min(time.monotonic() - started, duration)
                    view.show(read_stats(reader), elapsed, duration, configured, tally)
            except KeyboardInterrupt:
                interrupted = True
            elapsed = min(time.monotonic() - started, duration)
            stop.set()
            for thread in threads:
                thread.join(10)
            stats = read_stats(reader)
    finally:
        stop.set()
        for thread in threads:  # reached first only when something above raised
            thread.join(10)
        uninstall()
        flush()
        if client is not None:
            client.close()
        green.stop()
        blue.stop()
        meter_provider.shutdown()
        tracer_provider.shutdown()
    result = DemoResult(
        blue=stats["blue"],
        green=stats["green"],
        fallbacks=stats["green"].fallbacks,
        green_share=green_share(stats),
        weight=configured,
        calls=tally.calls,
        calls_failed_for_caller=tally.failed,
        failures=dict(tally.failures),
        elapsed=elapsed,
        interrupted=interrupted,
    )
    out.write(render_summary(result))
    out.flush()
    return result
