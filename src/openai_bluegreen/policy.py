"""The rollout policy: ``decide(rollout, state, evidence, now) → Decision``. Pure: no I/O, no clock.

The watcher gathers :class:`Evidence` (blue and green counts in each step's window since the
rollout started), calls :func:`decide`, and carries the decision out. Checks compare green with
blue over the whole rollout with anytime-valid tests (``docs/analysis.md``): the false-rollback
probability stays at or below ``analysis.alpha`` however often the watcher looks. ``alpha`` is
split evenly over the checks (Bonferroni), so it bounds the rollout, not each check.

A step advances only when each environment has ``schedule.min_requests`` calls in the step, the
step has lasted ``schedule.min_step_duration``, every applicable check has data and none failed.
Missing data is never a pass: without it the rollout holds, and pauses at the progress deadline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ._config import Check, Rollout
from ._rollout import Action, Phase, RolloutState, placed_step
from ._stats import log_e_one_sample, log_e_rate_ratio, log_e_two_sample
from .sources import EnvStats, Histogram, RolloutStats

__all__ = ["CheckResult", "Decision", "Evidence", "StepWindow", "decide", "evaluate_checks"]


@dataclass(frozen=True, slots=True)
class StepWindow:
    """Counts observed while the rollout sat at one step (one weight)."""

    step: int
    weight: float
    stats: RolloutStats


@dataclass(frozen=True, slots=True)
class Evidence:
    """Every step window since the rollout started, oldest first; the last is the current one.

    ``available`` is false when the metric source could not answer at this look (``note`` says
    why): the policy then holds.
    """

    windows: tuple[StepWindow, ...] = ()
    available: bool = True
    note: str = ""
    # When the current window's counts begin (None: at the step's start). Later than the
    # step's start when this watcher took over mid-step and could not look back (its own
    # process's metrics): the progress deadline for missing data counts from here.
    current_since: float | None = None
    # The source is reading a backlog (it held, and will answer): not missing data.
    catching_up: bool = False

    @property
    def total(self) -> RolloutStats:
        total = RolloutStats()
        for window in self.windows:
            total = total.plus(window.stats)
        return total

    def current(self, step: int | None) -> RolloutStats:
        if self.windows and self.windows[-1].step == step:
            return self.windows[-1].stats
        return RolloutStats()


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's verdict and the numbers behind it.

    ``status``: ``fail`` (evidence that green is worse beyond the allowance), ``ok`` (no such
    evidence yet), ``no_data`` (cannot be judged yet), ``n/a`` (neither environment produced this
    signal, e.g. time to first chunk without streaming calls).
    """

    check: str
    status: str
    log_e: float
    threshold: float
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def e_value(self) -> float:
        return math.exp(min(self.log_e, 700.0))

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "e_value": _round(self.e_value),
                "threshold": _round(math.exp(self.threshold)), **self.numbers}


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a rollout now, why, and the numbers that made it so."""

    rollout: str
    action: Action
    reasons: tuple[str, ...]
    checks: tuple[CheckResult, ...] = ()
    at: float = 0.0

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"rollout": self.rollout, "action": self.action.value, "at": self.at,
                "reasons": list(self.reasons), "checks": [c.to_dict() for c in self.checks]}


def _round(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    if math.isinf(value) or abs(value) >= 1e6:
        return float(f"{value:.3e}") if not math.isinf(value) else value
    return round(value, 6)


def _histogram(env: EnvStats, signal: str) -> Histogram:
    return env.ttfc if signal == "ttft" else env.duration


def _run_check(check: Check, windows: tuple[StepWindow, ...], total: RolloutStats,
               threshold: float) -> CheckResult:
    name = check.describe()
    blue, green = total.blue, total.green

    def result(log_e: float, numbers: dict[str, Any], *, enough: bool = True) -> CheckResult:
        status = "fail" if log_e >= threshold else ("ok" if enough else "no_data")
        return CheckResult(name, status, log_e, threshold, numbers)

    if check.signal == "error_rate":
        numbers = {"blue_calls": blue.requests, "blue_errors": blue.errors,
                   "green_calls": green.requests, "green_errors": green.errors,
                   "blue_rate": _round(blue.error_rate), "green_rate": _round(green.error_rate)}
        if check.max is not None:
            log_e = log_e_one_sample(green.errors, green.requests, check.max)
            return result(log_e, numbers, enough=green.requests > 0)
        enough = green.requests > 0 and blue.requests > 0
        if check.max_increase is not None:
            # One test per step window, multiplied: pooling windows would compare blue and
            # green across different mixes of time (Simpson's paradox) when the common error
            # rate drifts during the ramp. A product of sequential e-values is an e-value.
            log_e = sum(log_e_two_sample(w.stats.blue.errors, w.stats.blue.requests,
                                         w.stats.green.errors, w.stats.green.requests,
                                         margin=check.max_increase) for w in windows)
        else:
            assert check.max_ratio is not None
            log_e = log_e_rate_ratio(
                [(w.stats.green.errors, w.stats.green.requests, w.stats.blue.errors,
                  w.stats.blue.requests) for w in windows], check.max_ratio)
        return result(log_e, numbers, enough=enough)

    assert check.quantile is not None
    blue_hist, green_hist = _histogram(blue, check.signal), _histogram(green, check.signal)
    if blue_hist.total == 0 and green_hist.total == 0:
        return CheckResult(name, "n/a", 0.0, threshold, {"note": "no calls of this kind yet"})
    tail = 1.0 - check.quantile
    if check.max is not None:
        bound = next((b for b in green_hist.bounds or blue_hist.bounds if b >= check.max), None)
        if bound is None:
            return CheckResult(name, "no_data", 0.0, threshold,
                               {"note": f"no histogram bucket bound at or above {check.max:g}s"})
        slow = green_hist.count_above(bound) if green_hist.total else 0
        numbers = {"bound_s": bound, "green_calls": green_hist.total, "green_above": slow,
                   "green_q_s": _round(green_hist.quantile(check.quantile))}
        log_e = log_e_one_sample(slow, green_hist.total, tail)
        return result(log_e, numbers, enough=green_hist.total > 0)
    assert check.max_ratio is not None
    bound = blue_hist.tail_bound(check.quantile, check.max_ratio)
    if bound is None:
        note = ("blue has no calls of this kind yet" if blue_hist.total == 0 else
                "no bucket bound a green could fail at: blue's calls (nearly) all fall above "
                "the histogram's last finite bound")
        return CheckResult(name, "no_data", 0.0, threshold, {"note": note})
    batches = []
    for window in windows:
        b = _histogram(window.stats.blue, check.signal)
        g = _histogram(window.stats.green, check.signal)
        batches.append((g.count_above(bound) if g.total else 0, g.total,
                        b.count_above(bound) if b.total else 0, b.total))
    blue_above = sum(x[2] for x in batches)
    green_above = sum(x[0] for x in batches)
    numbers = {
        "bound_s": bound,
        "blue_calls": blue_hist.total, "blue_above": blue_above,
        "green_calls": green_hist.total, "green_above": green_above,
        "blue_q_s": _round(blue_hist.quantile(check.quantile)),
        "green_q_s": _round(green_hist.quantile(check.quantile)),
    }
    log_e = log_e_rate_ratio(batches, check.max_ratio)
    return result(log_e, numbers, enough=green_hist.total > 0)


def evaluate_checks(rollout: Rollout, evidence: Evidence) -> tuple[CheckResult, ...]:
    """Every configured check over all of the rollout's windows."""
    analysis = rollout.effective_analysis
    threshold = math.log(len(analysis.checks) / analysis.alpha)
    total = evidence.total
    return tuple(_run_check(check, evidence.windows, total, threshold)
                 for check in analysis.checks)


def _fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def decide(rollout: Rollout, state: RolloutState, evidence: Evidence, now: float) -> Decision:
    """The watcher's next move for one rollout. Pure: the same inputs give the same decision.

    Args:
        rollout: The rollout's config (schedule and analysis).
        state: Its current shared state.
        evidence: Counts per step window since the rollout started.
        now: The current time (seconds, same clock as the state's timestamps).
    """
    name = rollout.name
    schedule = rollout.schedule
    if schedule is None:
        return Decision(name, Action.HOLD, ("no schedule: the weight is set by hand",), at=now)
    if state.phase.terminal:
        return Decision(name, Action.HOLD, (f"rollout {state.phase.value}",), at=now)
    if state.phase is Phase.PAUSED:
        last = state.last
        why = f" ({last.reason})" if last is not None and last.reason else ""
        return Decision(name, Action.HOLD, (f"paused{why}; waiting for resume",), at=now)
    if state.phase is Phase.PENDING:
        if not evidence.available:  # never send traffic to green without a way to judge it
            return Decision(name, Action.HOLD, (
                f"not starting: no metrics ({evidence.note or 'source unavailable'})",),
                at=now)
        return Decision(name, Action.START,
                        (f"starting at step 1 of {len(schedule.steps)} "
                         f"({schedule.steps[0]:g}% to green)",), at=now)

    if not evidence.available:
        checks: tuple[CheckResult, ...] = ()
        reasons = [f"no metrics: {evidence.note or 'source unavailable'}"]
    else:
        checks = evaluate_checks(rollout, evidence)
        failed = [c for c in checks if c.status == "fail"]
        if failed:
            analysis = rollout.effective_analysis
            action = Action.ROLLBACK if analysis.on_failure == "rollback" else Action.PAUSE
            reasons = [_failure_reason(c) for c in failed]
            return Decision(name, action, tuple(reasons), checks, at=now)
        reasons = []

    placed = placed_step(rollout, state)  # by its weight, if the schedule was edited
    step = placed if placed is not None else -1
    started = state.step_started_at if state.step_started_at is not None else now
    elapsed = now - started
    # Data this watcher could not see (before it took over) cannot be waited for.
    waited = now - max(started, evidence.current_since or started)
    current = evidence.current(state.step) if evidence.available else RolloutStats()
    need = schedule.min_requests
    short = [f"{env} {current.env(env).requests}/{need} calls"
             for env in ("blue", "green") if current.env(env).requests < need]
    waiting = [c.check for c in checks if c.status == "no_data"]
    step_label = (f"step {step + 1}/{len(schedule.steps)} ({state.weight:g}%)" if step >= 0
                  else f"manual weight {state.weight:g}%")
    if not evidence.available or short or waiting:
        if waited >= rollout.progress_deadline and not evidence.catching_up:
            missing = (reasons[0] if not evidence.available
                       else ", ".join(short + [f"{w}: no data" for w in waiting]))
            return Decision(name, Action.PAUSE, (
                f"progress deadline: {step_label} lacks data after {_fmt_duration(waited)} "
                f"(deadline {_fmt_duration(rollout.progress_deadline)}): {missing}",),
                checks, at=now)
        reasons.extend([f"{step_label}: collecting data ({', '.join(short)})"] if short else [])
        reasons.extend(f"{w}: waiting for data" for w in waiting)
        return Decision(name, Action.HOLD, tuple(reasons), checks, at=now)
    if elapsed < schedule.min_step_duration:
        return Decision(name, Action.HOLD, (
            f"{step_label}: healthy so far, {_fmt_duration(elapsed)} of "
            f"{_fmt_duration(schedule.min_step_duration)}",), checks, at=now)
    nxt = step + 1
    if nxt >= len(schedule.steps) or schedule.steps[nxt] >= 100.0:
        return Decision(name, Action.PROMOTE, (
            f"{step_label} passed every check; promoting to 100%",), checks, at=now)
    return Decision(name, Action.ADVANCE, (
        f"{step_label} passed every check; advancing to step {nxt + 1} "
        f"({schedule.steps[nxt]:g}%)",), checks, at=now)


def _failure_reason(result: CheckResult) -> str:
    n = result.numbers
    detail = ""
    if "green_rate" in n:
        detail = (f"green {n['green_errors']}/{n['green_calls']} errors "
                  f"({_pct(n['green_rate'])}) vs blue {n['blue_errors']}/{n['blue_calls']} "
                  f"({_pct(n['blue_rate'])})")
    elif "blue_above" in n:
        detail = (f"green {n['green_above']}/{n['green_calls']} calls above "
                  f"{n['bound_s']:g}s vs blue {n['blue_above']}/{n['blue_calls']}")
    elif "green_above" in n:
        detail = f"green {n['green_above']}/{n['green_calls']} calls above {n['bound_s']:g}s"
    return (f"{result.check} failed: e-value {result.e_value:.3g} >= "
            f"{math.exp(result.threshold):.3g}; {detail}")


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.2f}%"
