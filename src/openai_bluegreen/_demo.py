"""``openai-bluegreen demo``: a progressive rollout judged by the watcher, on this machine only.

Two simulated OpenAI-compatible upstreams run on loopback, each in its own process (so their
latency does not depend on this process getting the GIL): blue (``gpt-4.1``) and green
(``deepseek-v3.2``), both answering like a healthy provider (log-normal latency, about 1 % of
503s). An unchanged-style app calls ``client.chat.completions.create(model="gpt-4.1", ...)``
from several threads, 30 % of the calls streamed. openai-bluegreen is installed with a schedule
(5 % → 25 % → 50 % → 100 %) and analysis checks; its watcher reads this process's metrics and
advances, promotes or rolls back on its own. A scenario decides what green does:

* ``healthy``: green stays like blue and is promoted to 100 %;
* ``errors``: a few seconds in, green's error rate rises from 1 % to 10 %: rolled back;
* ``slow``: a few seconds in, green's latency and time to first chunk double: rolled back.

The run shows a live view, prints a summary, and writes a self-contained HTML report with
plots of the weight, error rates and latencies over time and the watcher's decisions.
"""

from __future__ import annotations

import collections
import contextlib
import html
import logging
import math
import os
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from ._config import Check
from ._exporters import ExporterError, Exporters
from ._install import flush, install, status, uninstall
from .sources import EnvStats, RolloutStats
from .sources.local import LocalSource
from .testing import UpstreamProcess

__all__ = ["SCENARIOS", "DemoError", "DemoRun", "Scenario", "ScenarioResult", "run_demo"]

ROLLOUT = "chat-upgrade"
REQUESTED_MODEL = "gpt-4.1"
BLUE_MODEL = "gpt-4.1"
GREEN_MODEL = "deepseek-v3.2"
GREEN_KEY_ENV = "DEMO_GREEN_API_KEY"
STREAM_SHARE = 0.3
USERS = 100_000
SEED = 20_240_601
STEPS = (5.0, 25.0, 50.0, 100.0)
CHECKS: tuple[dict[str, Any], ...] = (
    {"signal": "error_rate", "max_ratio": 1.5},
    {"signal": "latency", "quantile": 0.95, "max_ratio": 1.5},
    {"signal": "ttft", "quantile": 0.95, "max_ratio": 1.5},
    {"signal": "error_rate", "max": 0.2},
)
CHECK_NAMES = tuple(Check.model_validate(c).describe() for c in CHECKS)
DEFAULT_REPORT = "openai-bluegreen-demo-report.html"
ENVIRONMENTS = ("blue", "green")
WINDOW = 5.0  # seconds of the trailing window the live view and the plots show
TICK = 0.25  # seconds between live frames and samples

# Both environments start as the same healthy provider (only their random draws differ).
HEALTHY: Mapping[str, Any] = {"latency": 0.08, "latency_sigma": 0.3, "ttfc": 0.03,
                              "chunk_interval": 0.004, "error_rates": {503: 0.01}}

_PROMPTS = (
    "Summarize our refund policy in two sentences.",
    "Translate 'good morning' into French.",
    "Suggest a name for a coffee shop.",
    "What is a blue/green deployment?",
    "Write a haiku about latency.",
)


class DemoError(ExporterError):
    """The demo cannot run as asked (a missing optional package, a port in use)."""


@dataclass(frozen=True)
class Scenario:
    """What green does during one demo run, and how the rollout should end.

    Attributes:
        name: ``healthy``, ``errors`` or ``slow``.
        story: One line for the view and the report.
        expected: The phase the rollout should end in.
        failing_signals: For a rollback, the check signals that may be the reason.
        change: Settings given to ``green.configure()`` when green degrades (empty: never).
        change_label: What the change is, for the plots.
    """

    name: str
    story: str
    expected: str
    failing_signals: tuple[str, ...] = ()
    change: Mapping[str, Any] = field(default_factory=dict)
    change_label: str = ""


SCENARIOS: Mapping[str, Scenario] = {
    "healthy": Scenario(
        "healthy", "green behaves like blue: the watcher should promote it step by step",
        "promoted"),
    "errors": Scenario(
        "errors", "a few seconds in, green's error rate rises from 1% to 10%: the watcher "
        "should roll back", "rolled_back", ("error_rate",), {"error_rates": {503: 0.10}},
        "green errors 1% -> 10%"),
    "slow": Scenario(
        "slow", "a few seconds in, green's latency and time to first chunk double: the "
        "watcher should roll back", "rolled_back", ("latency", "ttft"),
        {"latency": HEALTHY["latency"] * 2, "ttfc": HEALTHY["ttfc"] * 2},
        "green latency and TTFC x2"),
}


@dataclass(frozen=True)
class Sample:
    """The cumulative metrics and the rollout's state at one moment (``t``: s since start)."""

    t: float
    stats: RolloutStats
    weight: float
    phase: str
    step: int | None


@dataclass(frozen=True)
class DecisionRecord:
    """One decision that changed the rollout (start, advance, promote, rollback, pause)."""

    t: float
    action: str
    weight: float
    phase: str
    reasons: tuple[str, ...]
    checks: tuple[Mapping[str, Any], ...] = ()

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class ScenarioResult:
    """How one scenario ended.

    Attributes:
        scenario: The scenario that ran.
        outcome: The rollout's phase at the end (``promoted``, ``rolled_back``, ...).
        ok: The rollout ended as the scenario expects.
        why: When not ``ok``, what went wrong.
        deciding_check: The failed check named by a rollback (its ``describe()`` name).
        decisions: Every decision that changed the rollout, oldest first.
        time_to_decision: Seconds from the rollout's start to its promotion or rollback.
        degraded_at: Seconds since start at which green degraded (``None``: never).
        elapsed: Seconds the traffic ran.
        calls: App calls made; ``failed``: those that raised despite fallback.
        final: Cumulative per-environment metrics at the end.
        samples: The time series behind the report's plots.
        interrupted: Stopped early with Ctrl-C.
    """

    scenario: Scenario
    outcome: str
    ok: bool
    why: str
    deciding_check: str | None
    decisions: tuple[DecisionRecord, ...]
    time_to_decision: float | None
    degraded_at: float | None
    elapsed: float
    calls: int
    failed: int
    final: RolloutStats
    samples: tuple[Sample, ...] = ()
    interrupted: bool = False

    @property
    def deciding(self) -> DecisionRecord | None:
        """The promotion or rollback (``None`` when the rollout did not end)."""
        return next((d for d in reversed(self.decisions)
                     if d.phase in ("promoted", "rolled_back")), None)


@dataclass(frozen=True)
class DemoRun:
    """Every scenario that ran, and where the report went."""

    results: tuple[ScenarioResult, ...]
    report: Path | None
    report_error: str | None = None  # why the report asked for was not written

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)


# -- reading the metrics -------------------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    """One environment over a trailing window."""

    rate: float
    error_rate: float | None
    p95: float | None
    ttfc_p95: float | None


_EMPTY = _Window(0.0, None, None, None)


def _window(now: EnvStats, then: EnvStats, seconds: float, *, min_calls: int = 10) -> _Window:
    diff = now.minus(then)
    rate = diff.requests / seconds if seconds > 0 else 0.0
    error_rate = diff.error_rate if diff.requests >= min_calls else None
    p95 = diff.duration.quantile(0.95) if diff.duration.total >= min_calls else None
    ttfc = diff.ttfc.quantile(0.95) if diff.ttfc.total >= min_calls else None
    return _Window(rate, error_rate, p95, ttfc)


def _sample_before(samples: Sequence[Sample], t: float) -> Sample | None:
    """The latest sample at or before ``t`` (the first one when none is that old)."""
    best = samples[0] if samples else None
    for sample in samples:
        if sample.t > t:
            break
        best = sample
    return best


def _windows(samples: Sequence[Sample], index: int, seconds: float = WINDOW
             ) -> dict[str, _Window] | None:
    now = samples[index]
    then = _sample_before(samples[:index], now.t - seconds)
    if then is None or now.t - then.t <= 0:
        return None
    return {env: _window(now.stats.env(env), then.stats.env(env), now.t - then.t)
            for env in ENVIRONMENTS}


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
           seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        slot = pacer.next_slot()
        if stop.wait(max(0.0, slot - time.monotonic())):
            return
        try:
            _one_call(client, rng)
        except Exception as exc:  # the demo counts failures; it never crashes on them
            tally.done(type(exc).__name__)
        else:
            tally.done(None)


# -- the watcher's decisions ---------------------------------------------------------------


class _DecisionLog(logging.Handler):
    """Collects the watcher's non-hold decisions, with the checks' numbers, as they happen.

    The watcher logs each decision at INFO with structured extras; holds go to DEBUG.
    """

    def __init__(self, started: float) -> None:
        super().__init__(logging.INFO)
        self._started = started
        self._lock2 = threading.Lock()
        self.records: list[DecisionRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        action = getattr(record, "bluegreen_decision", None)
        if getattr(record, "bluegreen_rollout", None) != ROLLOUT or not isinstance(action, str):
            return
        args = record.args if isinstance(record.args, tuple) else ()
        weight = float(str(args[2])) if len(args) > 3 else math.nan
        phase = str(args[3]) if len(args) > 3 else ""
        with self._lock2:
            self.records.append(DecisionRecord(
                record.created - self._started, action, weight, phase,
                tuple(getattr(record, "bluegreen_reasons", ()) or ()),
                tuple(getattr(record, "bluegreen_evidence", ()) or ())))

    def snapshot(self) -> list[DecisionRecord]:
        with self._lock2:
            return list(self.records)


@contextlib.contextmanager
def _decision_log(started: float) -> Iterator[_DecisionLog]:
    logger = logging.getLogger("openai_bluegreen.watcher")
    handler = _DecisionLog(started)
    level = logger.level
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _failed_check(decision: DecisionRecord | None) -> str | None:
    if decision is None:
        return None
    failed = [str(c.get("check")) for c in decision.checks if c.get("status") == "fail"]
    if failed:
        return failed[0]
    return next((name for name in CHECK_NAMES if f"{name} failed" in decision.reason), None)


# -- telemetry export ----------------------------------------------------------------------


# -- rendering -----------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def _bar(fraction: float, width: int = 30) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


_COLORS = {"promoted": "32", "rolled_back": "31", "paused": "33", "progressing": "36",
           "rollback": "31", "promote": "32", "advance": "36", "pause": "33", "start": "36"}


def _paint(text: str, key: str, color: bool) -> str:
    code = _COLORS.get(key)
    return f"\x1b[1;{code}m{text}\x1b[0m" if color and code else text


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 3)] + "..."


def _steps_line(step: int | None, phase: str) -> str:
    parts = []
    for i, weight in enumerate(STEPS):
        label = f"{weight:g}%"
        current = (phase == "progressing" and step == i) or (
            phase == "promoted" and i == len(STEPS) - 1)
        parts.append(f"[{label}]" if current else label)
    return " -> ".join(parts)


def _decision_line(d: DecisionRecord, width: int, color: bool) -> str:
    head = f"  +{d.t:5.1f} s  {d.action:<8} {d.weight:>4g}%  "
    return _paint(head, d.action, color) + _clip(d.reason, width - len(head))


class _View:
    """Redraws a frame in place on a terminal; prints a compact line a second otherwise."""

    def __init__(self, out: TextIO, live: bool, scenario: Scenario) -> None:
        self._out = out
        self._live = live
        self._scenario = scenario
        self._height = 0
        self._last_line = -math.inf
        self._shown = 0

    def show(self, samples: Sequence[Sample], decisions: Sequence[DecisionRecord],
             current: Mapping[str, Any] | None, tally: _Tally, degraded_at: float | None,
             final: bool = False) -> None:
        sample = samples[-1]
        if self._live:
            lines = self._frame(samples, decisions, current, tally, degraded_at)
            erase = f"\x1b[{self._height}A\r\x1b[J" if self._height else ""
            self._out.write(erase + "\n".join(lines) + "\n")
            self._height = len(lines)
        else:
            for d in decisions[self._shown:]:
                self._out.write(f"[{d.t:5.1f} s] decision: {d.action} -> {d.weight:g}% green "
                                f"({d.phase}): {d.reason}\n")
            self._shown = len(decisions)
            if final or sample.t - self._last_line >= 1.0:
                self._last_line = sample.t
                self._out.write(self._compact(samples) + "\n")
        self._out.flush()

    def _compact(self, samples: Sequence[Sample]) -> str:
        sample = samples[-1]
        windows = _windows(samples, len(samples) - 1)
        parts = [f"[{sample.t:5.1f} s] {sample.phase} green {sample.weight:g}%"]
        for env in ENVIRONMENTS:
            w = windows[env] if windows else _EMPTY
            parts.append(f"{env} {w.rate:.0f}/s err {_pct(w.error_rate)} "
                         f"p95 {_ms(w.p95)} ttfc {_ms(w.ttfc_p95)}")
        parts.append(f"fallbacks {sample.stats.green.fallbacks} (rates: last {WINDOW:g} s)")
        return " | ".join(parts)

    def _frame(self, samples: Sequence[Sample], decisions: Sequence[DecisionRecord],
               current: Mapping[str, Any] | None, tally: _Tally, degraded_at: float | None
               ) -> list[str]:
        width = max(60, shutil.get_terminal_size((100, 24)).columns - 1)
        sample = samples[-1]
        windows = _windows(samples, len(samples) - 1)
        step = (f"step {sample.step + 1}/{len(STEPS)}" if sample.step is not None
                and sample.step >= 0 else "")
        lines = [
            _clip(f"openai-bluegreen demo · scenario {self._scenario.name}: "
                  f"{self._scenario.story}", width),
            f"rollout {ROLLOUT!r} {_paint(sample.phase.upper(), sample.phase, True)} {step}"
            f"   green {sample.weight:5.1f}% {_bar(sample.weight / 100)}   t = {sample.t:5.1f} s",
            f"  steps: {_steps_line(sample.step, sample.phase)}",
            "",
            f"{'env':<6} {'model':<14} {'req/s':>6} {'calls':>7} {'error %':>8} "
            f"{'p95 latency':>11} {'p95 ttfc':>9} {'fallbacks':>9}   (last {WINDOW:g} s)",
        ]
        models = {"blue": BLUE_MODEL, "green": GREEN_MODEL}
        for env in ENVIRONMENTS:
            w = windows[env] if windows else _EMPTY
            stats = sample.stats.env(env)
            fallbacks = str(stats.fallbacks) if env == "green" else "-"
            lines.append(f"{env:<6} {models[env]:<14} {w.rate:>6.0f} "
                         f"{stats.requests:>7} {_pct(w.error_rate):>8} "
                         f"{_ms(w.p95):>11} {_ms(w.ttfc_p95):>9} {fallbacks:>9}")
        lines += [f"app: {tally.calls} calls, {tally.failed} failed for the caller", "",
                  "decisions (time since start):"]
        shown = list(decisions[-6:])
        for d in shown:
            lines.append(_decision_line(d, width, True))
        if degraded_at is not None:
            lines.append(_paint(f"  +{degraded_at:5.1f} s  ! {self._scenario.change_label}",
                                "rollback", True))
        if current is not None and current.get("action") == "hold":
            reason = "; ".join(current.get("reasons") or ()) or "-"
            lines.append(_clip(f"  now      hold            {reason}", width))
        lines.append("Ctrl-C stops early and still writes the report")
        return lines


# -- the summary ---------------------------------------------------------------------------


def _check_numbers(check: Mapping[str, Any]) -> str:
    skip = {"check", "status"}
    return ", ".join(f"{k}={v}" for k, v in check.items() if k not in skip)


def render_summary(result: ScenarioResult) -> str:
    """The end-of-scenario report as text."""
    s = result.scenario
    verdict = "as expected" if result.ok else f"NOT as expected: {result.why}"
    lines = ["", f"Summary of scenario {s.name!r}: {result.outcome} ({verdict})"
             + (" (interrupted)" if result.interrupted else "")]
    if result.time_to_decision is not None:
        caught = ""
        deciding = result.deciding
        if result.degraded_at is not None and deciding is not None:
            caught = f", {deciding.t - result.degraded_at:.1f} s after green degraded"
        lines.append(f"  time to decision: {result.time_to_decision:.1f} s after the rollout "
                     f"started{caught}")
    blue, green = result.final.blue, result.final.green
    lines.append(f"  app calls: {result.calls} in {result.elapsed:.1f} s, {result.failed} "
                 "failed for the caller")
    for env, stats in (("blue", blue), ("green", green)):
        extra = f", {stats.fallbacks} fell back to blue" if env == "green" else ""
        lines.append(f"  {env:<5}: {stats.requests} requests, {stats.errors} errors "
                     f"({_pct(stats.error_rate)}), p95 latency {_ms(stats.p(0.95))}, "
                     f"p95 ttfc {_ms(stats.ttfc.quantile(0.95))}{extra}")
    deciding = result.deciding
    if deciding is not None:
        lines.append(f"  decided by the watcher at +{deciding.t:.1f} s: {deciding.action}: "
                     f"{deciding.reason}")
        for check in deciding.checks:
            if check.get("status") == "fail" or deciding.action == "promote":
                lines.append(f"    {check.get('check')}: {check.get('status')} "
                             f"({_check_numbers(check)})")
    return "\n".join(lines) + "\n"


# -- one scenario --------------------------------------------------------------------------


def _config(blue: UpstreamProcess, green: UpstreamProcess, *, step_seconds: float,
            min_requests: int, interval: float) -> dict[str, Any]:
    return {"rollouts": [{
        "name": ROLLOUT,
        "match": {"model": REQUESTED_MODEL},
        "blue": {"model": BLUE_MODEL, "base_url": blue.base_url},
        "green": {"model": GREEN_MODEL, "base_url": green.base_url,
                  "api_key_env": GREEN_KEY_ENV},
        "schedule": {"steps": list(STEPS), "min_step_duration": step_seconds,
                     "min_requests": min_requests,
                     "progress_deadline": max(15.0, 4 * step_seconds)},
        "analysis": {"interval": interval, "alpha": 0.01, "checks": [dict(c) for c in CHECKS]},
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


def _rollout_status() -> Mapping[str, Any]:
    rollouts = status().get("rollouts") or [{}]
    first: Mapping[str, Any] = rollouts[0]
    return first


def _judge(scenario: Scenario, outcome: str, deciding_check: str | None) -> str:
    """Why the run did not end as expected ('' when it did)."""
    if outcome != scenario.expected:
        return (f"expected the rollout to be {scenario.expected}, but it is {outcome} "
                "(longer --duration, or more --rate for more data per step?)")
    if scenario.failing_signals:
        if deciding_check is None:
            return "rolled back, but no failed check was named"
        if not deciding_check.startswith(scenario.failing_signals):
            return (f"rolled back by {deciding_check}, expected a check of "
                    f"{' or '.join(scenario.failing_signals)}")
    return ""


def run_scenario(scenario: Scenario | str, *, duration: float = 60.0, rate: float = 200.0,
                 concurrency: int = 32, step_seconds: float = 5.0, seed: int = SEED,
                 tail: float = 2.0, out: TextIO | None = None, live: bool | None = None,
                 exporters: Exporters | None = None) -> ScenarioResult:
    """Run one scenario: a scheduled rollout under traffic until it ends (plus ``tail``).

    Args:
        scenario: A :class:`Scenario` or the name of one in :data:`SCENARIOS`.
        duration: Cap in seconds; the run ends earlier once the rollout is promoted or rolled
            back and ``tail`` more seconds of traffic have shown where calls go.
        rate: Target app calls per second (the threads' capacity caps it).
        concurrency: Threads making calls.
        step_seconds: The schedule's ``min_step_duration``; green degrades half-way
            through the first step.
        seed: Seeds the upstreams' and the callers' random draws.
        tail: Seconds of traffic after the rollout ended.
        out: Where the view and summary go (default: ``sys.stdout``).
        live: Redraw in place with ANSI escapes; ``None`` does so when ``out`` is a terminal.
        exporters: Extra readers and span processors for the providers (Prometheus, OTLP).
    """
    if isinstance(scenario, str):
        scenario = SCENARIOS[scenario]
    out = sys.stdout if out is None else out
    live = _is_terminal(out) if live is None else live
    view = _View(out, live, scenario)
    tally = _Tally()
    stop = threading.Event()
    source = LocalSource()
    extra_readers = exporters.metric_readers() if exporters is not None else []
    meter_provider = MeterProvider(metric_readers=[source, *extra_readers],
                                   shutdown_on_exit=False)
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    for processor in exporters.span_processors() if exporters is not None else []:
        tracer_provider.add_span_processor(processor)
    blue = UpstreamProcess("blue", seed=seed, **HEALTHY)
    green = UpstreamProcess("green", seed=seed + 1, **HEALTHY)
    # Enough calls per step that green's share of the first step gets there in ~60 % of it.
    min_requests = max(5, int(rate * STEPS[0] / 100 * step_seconds * 0.6))
    interval = max(0.05, min(0.5, step_seconds / 4))
    degrade_after = 0.5 * step_seconds if scenario.change else None
    threads: list[threading.Thread] = []
    samples: list[Sample] = []
    client: openai.OpenAI | None = None
    interrupted = False
    degraded_at: float | None = None
    started = time.monotonic()
    decisions: list[DecisionRecord] = []

    def sample() -> Sample:
        now = time.monotonic() - started
        state = _rollout_status()
        stats = source.snapshot(time.time()).get(ROLLOUT)
        taken = Sample(now, stats, float(state.get("weight", 0.0)),
                       str(state.get("phase", "pending")), state.get("step"))
        samples.append(taken)
        return taken

    try:
        blue.start()
        green.start()
        client = openai.OpenAI(base_url=blue.base_url, api_key="demo-blue-key", max_retries=0)
        wall_start = time.time()
        started = time.monotonic()
        with _demo_key(), _decision_log(wall_start) as log:
            install(_config(blue, green, step_seconds=step_seconds, min_requests=min_requests,
                            interval=interval),
                    tracer_provider=tracer_provider, meter_provider=meter_provider)
            pacer = _Pacer(rate)
            threads = [threading.Thread(target=_drive, name=f"demo-caller-{i}", daemon=True,
                                        args=(client, pacer, tally),
                                        kwargs={"stop": stop, "seed": seed + 100 + i})
                       for i in range(concurrency)]
            for thread in threads:
                thread.start()
            ended_at: float | None = None
            try:
                while True:
                    time.sleep(TICK)
                    now = time.monotonic() - started
                    if degrade_after is not None and degraded_at is None and now >= degrade_after:
                        green.configure(**scenario.change)
                        degraded_at = now
                    taken = sample()
                    decisions = log.snapshot()
                    view.show(samples, decisions, _rollout_status().get("last_decision"),
                              tally, degraded_at)
                    if ended_at is None and taken.phase in ("promoted", "rolled_back"):
                        ended_at = now
                    if (ended_at is not None and now >= ended_at + tail) or now >= duration:
                        break
            except KeyboardInterrupt:
                interrupted = True
            stop.set()
            for thread in threads:
                thread.join(10)
            flush()
            final_sample = sample()
            decisions = log.snapshot()
            if not live:
                view.show(samples, decisions, None, tally, degraded_at, final=True)
    finally:
        stop.set()
        for thread in threads:  # reached first only when something above raised
            thread.join(10)
        flush()
        # Exported while still installed: the gauges (weight, state) end with the rollout's
        # last values; after uninstall() they report nothing.
        meter_provider.force_flush()
        uninstall()
        if client is not None:
            client.close()
        green.stop()
        blue.stop()
        meter_provider.shutdown()
        tracer_provider.shutdown()
    outcome = final_sample.phase
    start = next((d.t for d in decisions if d.action == "start"), 0.0)
    deciding = next((d for d in reversed(decisions) if d.phase in ("promoted", "rolled_back")),
                    None)
    deciding_check = _failed_check(deciding) if outcome == "rolled_back" else None
    why = _judge(scenario, outcome, deciding_check)
    if interrupted:
        why = why or "interrupted"
    result = ScenarioResult(
        scenario=scenario, outcome=outcome, ok=not why, why=why,
        deciding_check=deciding_check, decisions=tuple(decisions),
        time_to_decision=None if deciding is None else deciding.t - start,
        degraded_at=degraded_at, elapsed=final_sample.t, calls=tally.calls,
        failed=tally.failed, final=final_sample.stats, samples=tuple(samples),
        interrupted=interrupted)
    out.write(render_summary(result))
    out.flush()
    return result


# -- the report ----------------------------------------------------------------------------

_ENV_COLORS = {"blue": "#1f6feb", "green": "#1a7f37"}
_ACTION_COLORS = {"start": "#6e7781", "advance": "#0969da", "promote": "#1a7f37",
                  "rollback": "#cf222e", "pause": "#bf8700", "resume": "#0969da"}
_W, _H, _L, _R, _T, _B = 760, 190, 58, 14, 26, 28


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks if span > 0 else 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 2.5, 5.0):
        if raw <= mult * power:
            return mult * power
    return 10.0 * power


Series = tuple[str, str, Sequence[tuple[float, float | None]]]


def _svg_chart(title: str, series: Sequence[Series], *, t_max: float,
               fmt: Callable[[float], str], y_max: float | None = None,
               decisions: Sequence[DecisionRecord] = (), degraded_at: float | None = None,
               step: bool = False, markers_on: int | None = None) -> str:
    """One line chart as inline SVG; decision markers get a hover title with the reason."""
    values = [v for _, _, pts in series for _, v in pts if v is not None]
    top = y_max if y_max is not None else max(values, default=0.0) * 1.15
    top = top if top > 0 else 1.0
    y_tick = _nice_step(top, 4)
    top = math.ceil(top / y_tick) * y_tick
    t_max = max(t_max, 1.0)
    plot_w, plot_h = _W - _L - _R, _H - _T - _B

    def x(t: float) -> float:
        return _L + plot_w * t / t_max

    def y(v: float) -> float:
        return _T + plot_h * (1 - v / top)

    out = [f'<svg class="chart" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
           f'role="img" aria-label="{html.escape(title)}">',
           f'<text x="{_L}" y="16" class="title">{html.escape(title)}</text>']
    tick = 0.0
    while tick <= top + 1e-9:
        out.append(f'<line x1="{_L}" x2="{_W - _R}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                   'class="grid"/>'
                   f'<text x="{_L - 6}" y="{y(tick) + 4:.1f}" class="axis" '
                   f'text-anchor="end">{html.escape(fmt(tick))}</text>')
        tick += y_tick
    t_tick = _nice_step(t_max, 8)
    tick = 0.0
    while tick <= t_max + 1e-9:
        out.append(f'<text x="{x(tick):.1f}" y="{_H - _B + 16}" class="axis" '
                   f'text-anchor="middle">{tick:g}s</text>')
        tick += t_tick
    if degraded_at is not None:
        out.append(f'<line x1="{x(degraded_at):.1f}" x2="{x(degraded_at):.1f}" y1="{_T}" '
                   f'y2="{_H - _B}" class="degraded"><title>green degraded at '
                   f'+{degraded_at:.1f} s</title></line>')
    for d in decisions:
        color = _ACTION_COLORS.get(d.action, "#6e7781")
        out.append(f'<line x1="{x(d.t):.1f}" x2="{x(d.t):.1f}" y1="{_T}" y2="{_H - _B}" '
                   f'stroke="{color}" class="mark"/>')
    for index, (label, color, points) in enumerate(series):
        segments: list[list[tuple[float, float]]] = [[]]
        previous: float | None = None
        for t, v in points:
            if v is None:
                segments.append([])
                previous = None
                continue
            if step and previous is not None:
                segments[-1].append((x(t), y(previous)))
            segments[-1].append((x(t), y(min(v, top))))
            previous = v
        for seg in segments:
            if len(seg) > 1:
                path = " ".join(f"{px:.1f},{py:.1f}" for px, py in seg)
                out.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                           'stroke-width="2"/>')
        out.append(f'<text x="{_W - _R - 150 + index * 75}" y="16" fill="{color}" '
                   f'class="legend">&#9632; {html.escape(label)}</text>')
    if markers_on is not None:
        _, _, points = series[markers_on]
        for d in decisions:
            level = d.weight if math.isfinite(d.weight) else 0.0
            color = _ACTION_COLORS.get(d.action, "#6e7781")
            out.append(f'<circle cx="{x(d.t):.1f}" cy="{y(level):.1f}" r="6" fill="{color}" '
                       f'class="decision" data-action="{d.action}"><title>'
                       f'+{d.t:.1f} s {html.escape(d.action)} -> {level:g}%: '
                       f'{html.escape(d.reason)}</title></circle>')
    out.append("</svg>")
    return "\n".join(out)


def _report_section(result: ScenarioResult) -> str:
    s = result.scenario
    samples = result.samples
    t_max = samples[-1].t if samples else 1.0
    windows = [(smp.t, _windows(samples, i)) for i, smp in enumerate(samples)]

    def env_series(pick: Callable[[_Window], float | None]) -> list[Series]:
        return [(env, _ENV_COLORS[env],
                 [(t, pick(w[env]) if w is not None else None) for t, w in windows])
                for env in ENVIRONMENTS]

    common: dict[str, Any] = {"t_max": t_max, "decisions": result.decisions,
                              "degraded_at": result.degraded_at}
    charts = [
        _svg_chart("Green weight (% of calls)", [("weight", _ENV_COLORS["green"],
                                                 [(smp.t, smp.weight) for smp in samples])],
                   fmt=lambda v: f"{v:g}%", y_max=100.0, step=True, markers_on=0, **common),
        _svg_chart(f"Error rate (last {WINDOW:g} s)", env_series(lambda w: w.error_rate),
                   fmt=lambda v: f"{v * 100:.3g}%", **common),
        _svg_chart(f"p95 latency (last {WINDOW:g} s, successful calls)",
                   env_series(lambda w: w.p95), fmt=lambda v: f"{v * 1000:.0f} ms", **common),
        _svg_chart(f"p95 time to first chunk (last {WINDOW:g} s, streamed calls)",
                   env_series(lambda w: w.ttfc_p95), fmt=lambda v: f"{v * 1000:.0f} ms",
                   **common),
    ]
    verdict = ("ok" if result.ok else "bad")
    rows = []
    for d in result.decisions:
        color = _ACTION_COLORS.get(d.action, "#6e7781")
        rows.append(f'<tr><td>+{d.t:.1f} s</td><td style="color:{color}"><b>'
                    f'{html.escape(d.action)}</b></td><td>{d.weight:g}%</td>'
                    f'<td>{html.escape(d.phase)}</td><td>{html.escape(d.reason)}</td></tr>')
    if result.degraded_at is not None:
        rows.append(f'<tr><td>+{result.degraded_at:.1f} s</td><td>(green degraded)</td>'
                    f'<td></td><td></td><td>{html.escape(s.change_label)}</td></tr>')
    check_rows = []
    deciding = result.deciding
    for check in deciding.checks if deciding is not None else ():
        check_rows.append(f'<tr class="{html.escape(str(check.get("status")))}"><td>'
                          f'{html.escape(str(check.get("check")))}</td><td>'
                          f'{html.escape(str(check.get("status")))}</td><td>'
                          f'{html.escape(_check_numbers(check))}</td></tr>')
    summary = html.escape(render_summary(result).strip())
    return f"""
<section>
<h2>Scenario <code>{html.escape(s.name)}</code>: <span class="{verdict}">
{html.escape(result.outcome)}</span></h2>
<p>{html.escape(s.story)}.</p>
<pre>{summary}</pre>
{"".join(f'<div class="chart-box">{c}</div>' for c in charts)}
<h3>Decisions</h3>
<table><tr><th>time</th><th>action</th><th>green weight</th><th>phase</th><th>reason</th></tr>
{"".join(rows)}</table>
<h3>Checks at the deciding decision</h3>
<table><tr><th>check</th><th>status</th><th>numbers</th></tr>{"".join(check_rows)}</table>
</section>"""


def render_report(results: Sequence[ScenarioResult]) -> str:
    """A self-contained HTML page (inline SVG and CSS, no script, no network)."""
    legend = " ".join(f'<span style="color:{c}">&#9679; {a}</span>'
                      for a, c in _ACTION_COLORS.items())
    sections = "".join(_report_section(r) for r in results)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>openai-bluegreen demo report</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 800px;
       color: #1f2328; }}
h2 {{ border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 36px; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #cf222e; }}
pre {{ background: #f6f8fa; padding: 8px; white-space: pre-wrap; font-size: 12px; }}
table {{ border-collapse: collapse; width: 100%; font-size: 12px; }}
td, th {{ border: 1px solid #d0d7de; padding: 3px 6px; text-align: left;
          vertical-align: top; }}
tr.fail td {{ background: #ffebe9; }}
.chart-box {{ margin: 10px 0; }}
svg .title {{ font-weight: 600; font-size: 13px; }}
svg .axis {{ font-size: 11px; fill: #57606a; }}
svg .legend {{ font-size: 12px; }}
svg .grid {{ stroke: #eaeef2; }}
svg .mark {{ stroke-dasharray: 2 3; stroke-width: 1; opacity: .7; }}
svg .degraded {{ stroke: #cf222e; stroke-dasharray: 6 3; stroke-width: 1.5; }}
svg .decision {{ stroke: white; stroke-width: 1.5; }}
</style></head><body>
<h1>openai-bluegreen demo</h1>
<p>Rollout <code>{ROLLOUT}</code>: the app asks for <code>{REQUESTED_MODEL}</code>; blue serves
<code>{BLUE_MODEL}</code>, green <code>{GREEN_MODEL}</code> (both simulated on loopback). The
watcher steps green through {" → ".join(f"{w:g}%" for w in STEPS)} and judges it with:
{", ".join(f"<code>{html.escape(n)}</code>" for n in CHECK_NAMES)}.
Decision markers: {legend}; a dashed red line marks the moment green degraded. Hover a
marker for the watcher's reason.</p>
{sections}
</body></html>
"""


# -- the demo ------------------------------------------------------------------------------


def run_demo(scenarios: Sequence[str] | str = "healthy", *, duration: float = 60.0,
             rate: float = 200.0, concurrency: int = 32, step_seconds: float = 5.0,
             seed: int = SEED, tail: float = 2.0, out: TextIO | None = None,
             live: bool | None = None, report: str | os.PathLike[str] | None = DEFAULT_REPORT,
             prometheus_port: int | None = None) -> DemoRun:
    """Run scenarios one after the other, print summaries, and write the HTML report.

    Args:
        scenarios: Names from :data:`SCENARIOS`, or one name, or ``"all"``.
        duration: Cap per scenario in seconds.
        rate: Target app calls per second.
        concurrency: Threads making calls.
        step_seconds: Minimum seconds per rollout step.
        seed: Seed of the random draws.
        tail: Seconds of traffic after the rollout ended.
        out: Where the view and summaries go (default: ``sys.stdout``).
        live: Redraw in place; ``None`` does so when ``out`` is a terminal.
        report: Path of the HTML report; ``None`` writes none.
        prometheus_port: Serve ``/metrics`` on ``127.0.0.1`` at this port while running.

    Raises:
        ValueError: An argument is out of range or a scenario is unknown.
        DemoError: An optional exporter package is missing, or the port is taken.
    """
    names = list(SCENARIOS) if scenarios == "all" else (
        [scenarios] if isinstance(scenarios, str) else list(scenarios))
    problems = [f"unknown scenario {n!r} (choose from {', '.join(SCENARIOS)} or all)"
                for n in names if n not in SCENARIOS]
    for label, value in (("duration", duration), ("rate", rate), ("step_seconds", step_seconds)):
        if not (math.isfinite(value) and value > 0):
            problems.append(f"{label} must be > 0 (got {value!r})")
    if concurrency < 1:
        problems.append(f"concurrency must be >= 1 (got {concurrency!r})")
    if problems:
        raise ValueError("; ".join(problems))
    out = sys.stdout if out is None else out
    exporters = Exporters(prometheus_port, bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")))
    results: list[ScenarioResult] = []
    try:
        if exporters.url is not None:
            out.write(f"Prometheus metrics: {exporters.url}\n")
        for name in names:
            out.write(f"\n== scenario {name}: {SCENARIOS[name].story}\n")
            out.flush()
            result = run_scenario(name, duration=duration, rate=rate, concurrency=concurrency,
                                  step_seconds=step_seconds, seed=seed, tail=tail, out=out,
                                  live=live, exporters=exporters)
            results.append(result)
            if result.interrupted:
                break
    finally:
        exporters.close()
    path: Path | None = None
    report_error = None
    if report is not None and results:
        path = Path(report)
        try:  # the runs are done: a path gone bad meanwhile must not lose their summary
            path.write_text(render_report(results), encoding="utf-8")
        except OSError as exc:
            report_error = f"report not written to {str(report)!r}: {exc.strerror or exc}"
            out.write(f"\n{report_error[0].upper()}{report_error[1:]}\n")
            path = None
        else:
            out.write(f"\nReport: {path.resolve()}\n")
    if len(results) > 1:
        for r in results:
            out.write(f"  {r.scenario.name:<8} {r.outcome:<12} {r.elapsed:5.1f} s  "
                      f"{'ok' if r.ok else 'NOT as expected: ' + r.why}\n")
    out.flush()
    return DemoRun(tuple(results), path, report_error)
