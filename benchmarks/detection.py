"""Detection: how fast each rollback policy catches a bad green, and how often it cries wolf.

Three policies watch the same simulated traffic (the same seed per rollout and interval for
every policy, so they see identical calls while their traffic splits agree):

* ``ours``: the real ``openai_bluegreen.policy.decide`` driving the real state machine
  ``openai_bluegreen._rollout.transition`` (anytime-valid e-process checks);
* ``seed``: the seed article's ``HealthMonitor`` thresholds (green error rate > 5% or green mean
  latency > 500 ms on everything seen so far, checked every interval → rollback);
* ``z-test``: a classical fixed-horizon one-sided score test (Farrington-Manning, ratio margin)
  on the error rate and on the share of calls above blue's p95 bucket bound, looked at every
  interval (peeking) and rolling back at the first rejection.

The baselines advance on the same schedule as ours (one step per ``min_step_duration`` while
healthy), so times until rollback are comparable.

    python benchmarks/detection.py            # full run, writes its table to BENCHMARKS.md
    python benchmarks/detection.py --quick    # fewer rollouts, smoke test, writes nothing
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from _common import machine, write_section
from openai_bluegreen._config import Rollout, load_config
from openai_bluegreen._rollout import Action, Phase, initial_state, transition
from openai_bluegreen._telemetry import DURATION_BUCKETS
from openai_bluegreen.cli import _at_least_one
from openai_bluegreen.policy import Evidence, StepWindow, decide
from openai_bluegreen.sources import EnvStats, Histogram, RolloutStats

BOUNDS: tuple[float, ...] = tuple(DURATION_BUCKETS)
N_BUCKETS = len(BOUNDS) + 1

# Traffic.
RATE = 20.0  # calls per second, blue + green
BLUE_ERROR = 0.01
BLUE_MEDIAN_S = 0.3
SIGMA = 0.5  # lognormal shape of successful calls' latency
Z95 = statistics.NormalDist().inv_cdf(0.95)

# The rollout under test (ours); the baselines use the same steps and step duration.
STEPS = [5, 10, 25, 50, 100]
INTERVAL_S = 30.0
MIN_STEP_S = 600.0
MIN_REQUESTS = 200
ALPHA = 0.01
CHECKS: list[dict[str, Any]] = [
    {"signal": "error_rate", "max_ratio": 1.5},
    {"signal": "latency", "quantile": 0.95, "max_ratio": 1.5},
    {"signal": "error_rate", "max": 0.2},
]
STEP_INTERVALS = round(MIN_STEP_S / INTERVAL_S)
MAX_INTERVALS = 4 * STEP_INTERVALS * len(STEPS)  # far past a normal promotion

# Seed article's HealthMonitor thresholds.
SEED_ERROR = 0.05
SEED_LATENCY_MS = 500.0

# Fixed-horizon test: the rollout's alpha split over its two tests, like ours splits it.
Z_MARGIN = 1.5
Z_CRIT = statistics.NormalDist().inv_cdf(1.0 - ALPHA / 2)

POLICIES = ("ours", "seed", "z-test")
# Reference arms: the z-test looked at once, at promotion time (its design), and ours with a
# tighter error-rate allowance (the config change that meets the 1% → 3% target).
VARIANT_RATIO = 1.25
SHORT_STEP_S = MIN_STEP_S / 2
EXTRA = ("z-test, one look", f"ours, error max_ratio {VARIANT_RATIO:g}",
         f"ours, {SHORT_STEP_S / 60:g}-minute steps")


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    rollouts: int
    green_error: float = BLUE_ERROR
    green_latency_scale: float = 1.0  # multiplies green's lognormal median (and so its p95)
    outage: bool = False  # every green call fails at once (no latency recorded)
    null: bool = False  # green is within ours' allowance: any rollback by ours is a false one


SCENARIOS = (
    Scenario("aa", "A/A (green = blue)", 1000, null=True),
    Scenario("edge", "green errors 1% → 1.5% (= max_ratio: still allowed)", 1000,
             green_error=0.015, null=True),
    Scenario("err3", "green errors 1% → 3%", 200, green_error=0.03),
    Scenario("err5", "green errors 1% → 5%", 200, green_error=0.05),
    Scenario("lat30", "green p95 latency +30%", 200, green_latency_scale=1.3),
    Scenario("outage", "green total outage", 200, outage=True),
)


@dataclass(frozen=True, slots=True)
class Env:
    """One environment's calls in one interval."""

    requests: int
    errors: int
    counts: np.ndarray  # successful calls' duration histogram, len(BOUNDS) + 1
    latency_sum_s: float


@dataclass(frozen=True, slots=True)
class Outcome:
    rolled_back: bool
    intervals: int  # intervals since the start at the rollback (or at the end)
    green_requests: int  # green calls (errors included) until the rollback
    end: str  # rolled_back | promoted | paused | running
    reason: str = ""  # which check rolled it back


def _env(rng: np.random.Generator, calls: int, error_rate: float, median_s: float,
         outage: bool) -> Env:
    errors = calls if outage else int(rng.binomial(calls, error_rate))
    latencies = rng.lognormal(math.log(median_s), SIGMA, calls - errors)
    counts = np.bincount(np.searchsorted(BOUNDS, latencies, side="left"), minlength=N_BUCKETS)
    return Env(calls, errors, counts, float(latencies.sum()))


class Traffic:
    """The calls of one rollout: interval ``k`` at ``weight`` is drawn from its own seed."""

    def __init__(self, scenario: Scenario, index: int, rollout: int) -> None:
        self.scenario = scenario
        self.seed = (index, rollout)
        self.cache: dict[tuple[int, float], tuple[Env, Env]] = {}

    def __call__(self, k: int, weight: float) -> tuple[Env, Env]:
        key = (k, weight)
        if key not in self.cache:
            s = self.scenario
            rng = np.random.default_rng([*self.seed, k])
            calls = int(rng.poisson(RATE * INTERVAL_S))
            green_calls = int(rng.binomial(calls, weight / 100.0))
            blue = _env(rng, calls - green_calls, BLUE_ERROR, BLUE_MEDIAN_S, False)
            green = _env(rng, green_calls, s.green_error, BLUE_MEDIAN_S * s.green_latency_scale,
                         s.outage)
            self.cache[key] = (blue, green)
        return self.cache[key]


# --- ours ---------------------------------------------------------------------------------

def _stats(requests: int, errors: int, counts: np.ndarray) -> EnvStats:
    return EnvStats(requests=requests, errors=errors,
                    duration=Histogram(BOUNDS, tuple(int(c) for c in counts)))


def run_ours(rollout: Rollout, traffic: Callable[[int, float], tuple[Env, Env]]) -> Outcome:
    state = initial_state(rollout)
    decision = decide(rollout, state, Evidence(), 0.0)
    state = transition(rollout, state, decision.action, 0.0, actor="watcher",
                       reason=decision.reason)
    # Per step window: [step, weight, blue req, blue err, blue hist, green req, green err, hist]
    windows: list[list[Any]] = []
    green_requests = 0
    for k in range(1, MAX_INTERVALS + 1):
        now = k * INTERVAL_S
        if not windows or windows[-1][0] != state.step:
            windows.append([state.step, state.weight, 0, 0, np.zeros(N_BUCKETS, np.int64),
                            0, 0, np.zeros(N_BUCKETS, np.int64)])
        blue, green = traffic(k, state.weight)
        w = windows[-1]
        w[2] += blue.requests
        w[3] += blue.errors
        w[4] = w[4] + blue.counts
        w[5] += green.requests
        w[6] += green.errors
        w[7] = w[7] + green.counts
        green_requests += green.requests
        evidence = Evidence(tuple(
            StepWindow(step, weight, RolloutStats(_stats(br, be, bh), _stats(gr, ge, gh)))
            for step, weight, br, be, bh, gr, ge, gh in windows))
        decision = decide(rollout, state, evidence, now)
        if decision.action is Action.HOLD:
            continue
        state = transition(rollout, state, decision.action, now, actor="watcher",
                           reason=decision.reason)
        if state.phase is Phase.ROLLED_BACK:
            failed = "+".join(c.check for c in decision.checks if c.status == "fail")
            return Outcome(True, k, green_requests, "rolled_back", failed)
        if state.phase is Phase.PROMOTED:
            return Outcome(False, k, green_requests, "promoted")
        if state.phase is Phase.PAUSED:
            return Outcome(False, k, green_requests, "paused")
    return Outcome(False, MAX_INTERVALS, green_requests, "running")


# --- baselines ----------------------------------------------------------------------------

class _Totals:
    """Cumulative counts since the rollout started, for the baselines."""

    def __init__(self) -> None:
        self.requests = [0, 0]  # blue, green
        self.errors = [0, 0]
        self.counts = [np.zeros(N_BUCKETS, np.int64), np.zeros(N_BUCKETS, np.int64)]
        self.latency_sum_s = [0.0, 0.0]

    def add(self, blue: Env, green: Env) -> None:
        for i, env in enumerate((blue, green)):
            self.requests[i] += env.requests
            self.errors[i] += env.errors
            self.counts[i] = self.counts[i] + env.counts
            self.latency_sum_s[i] += env.latency_sum_s


def seed_unhealthy(t: _Totals) -> str:
    """The seed's HealthMonitor on green: errors/(successes+errors) > 5%, mean latency > 500 ms.

    (The article's monitor only warns on latency; counting it as a rollback favours the seed.)
    """
    successes, errors = t.requests[1] - t.errors[1], t.errors[1]
    if successes + errors == 0:
        return ""
    if errors / (successes + errors) > SEED_ERROR:
        return "error rate"
    if successes and t.latency_sum_s[1] * 1000.0 / successes > SEED_LATENCY_MS:
        return "mean latency"
    return ""


def fm_ratio_z(x_g: int, n_g: int, x_b: int, n_b: int, ratio: float) -> float:
    """One-sided score z for ``H0: p_g <= ratio * p_b`` (Farrington & Manning 1990).

    The variance uses the rates' maximum-likelihood estimates restricted to ``p_g = ratio * p_b``
    (the closed-form root of a quadratic), which behaves at small counts where Wald does not.
    """
    if n_g == 0 or n_b == 0:
        return 0.0
    a = ratio * (n_g + n_b)
    b = -(ratio * n_g + x_g + n_b + ratio * x_b)
    c = x_g + x_b
    p_b = (-b - math.sqrt(max(b * b - 4.0 * a * c, 0.0))) / (2.0 * a)
    p_g = ratio * p_b
    diff = x_g / n_g - ratio * x_b / n_b
    var = p_g * (1.0 - p_g) / n_g + ratio * ratio * p_b * (1.0 - p_b) / n_b
    if var <= 0.0:
        return math.inf if diff > 0 else 0.0
    return diff / math.sqrt(var)


def z_unhealthy(t: _Totals) -> str:
    """Error-rate and p95-tail score tests, each at alpha/2, on everything seen so far."""
    if fm_ratio_z(t.errors[1], t.requests[1], t.errors[0], t.requests[0], Z_MARGIN) >= Z_CRIT:
        return "error rate"
    blue_hist = Histogram(BOUNDS, tuple(int(c) for c in t.counts[0]))
    bound = blue_hist.tail_bound(0.95, Z_MARGIN)
    if bound is None:
        return ""
    index = BOUNDS.index(bound) + 1
    green_above, green_n = int(t.counts[1][index:].sum()), int(t.counts[1].sum())
    blue_above, blue_n = int(t.counts[0][index:].sum()), int(t.counts[0].sum())
    if fm_ratio_z(green_above, green_n, blue_above, blue_n, Z_MARGIN) >= Z_CRIT:
        return "p95 tail"
    return ""


def run_baseline(unhealthy: Callable[[_Totals], str],
                 traffic: Callable[[int, float], tuple[Env, Env]], *,
                 peek: bool = True) -> Outcome:
    """Same steps as ours; judged at every interval (``peek``) or only before promoting."""
    step, step_start, totals, green_requests = 0, 0, _Totals(), 0
    for k in range(1, MAX_INTERVALS + 1):
        blue, green = traffic(k, float(STEPS[step]))
        totals.add(blue, green)
        green_requests += green.requests
        advance = (k - step_start) * INTERVAL_S >= MIN_STEP_S
        final = advance and (step + 1 >= len(STEPS) or STEPS[step + 1] >= 100)
        if (peek or final) and (why := unhealthy(totals)):
            return Outcome(True, k, green_requests, "rolled_back", why)
        if advance:
            step, step_start = step + 1, k
            if final:
                return Outcome(False, k, green_requests, "promoted")
    return Outcome(False, MAX_INTERVALS, green_requests, "running")


# --- running and reporting ----------------------------------------------------------------

def rollout_config(error_ratio: float = 1.5, min_step_s: float = MIN_STEP_S) -> Rollout:
    """Ours' rollout; ``error_ratio`` replaces the error-rate check's ``max_ratio``."""
    checks = [{**CHECKS[0], "max_ratio": error_ratio}, *CHECKS[1:]]
    return load_config({"rollouts": [{
        "name": "bench", "match": {"model": "bench-model"},
        "blue": {"model": "blue-model"}, "green": {"model": "green-model"},
        "schedule": {"steps": STEPS, "min_step_duration": min_step_s,
                     "min_requests": MIN_REQUESTS},
        "analysis": {"interval": INTERVAL_S, "alpha": ALPHA, "checks": checks},
    }]}).rollouts[0]


def simulate(job: tuple[int, int, int]) -> list[dict[str, Outcome]]:
    index, first, last = job
    scenario = SCENARIOS[index]
    ours, variant = rollout_config(), rollout_config(VARIANT_RATIO)
    short = rollout_config(min_step_s=SHORT_STEP_S)
    results = []
    for r in range(first, last):
        traffic = Traffic(scenario, index, r)
        results.append({"ours": run_ours(ours, traffic),
                        "seed": run_baseline(seed_unhealthy, traffic),
                        "z-test": run_baseline(z_unhealthy, traffic),
                        EXTRA[0]: run_baseline(z_unhealthy, traffic, peek=False),
                        EXTRA[1]: run_ours(variant, traffic),
                        EXTRA[2]: run_ours(short, traffic)})
    return results


def _q(values: list[float], q: float) -> float:
    """Nearest-rank quantile; rollouts never rolled back count as +inf."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _fmt(value: float, digits: int = 0) -> str:
    return "never" if math.isinf(value) else f"{value:,.{digits}f}"


def _wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Summary:
    rate: float
    hits: int
    n: int
    reqs_med: float
    reqs_p90: float
    ints_med: float
    ints_p90: float
    ints_max: float
    paused: int
    reasons: dict[str, int]
    first_interval: int  # rollbacks at the first look


def summarise(outcomes: list[Outcome]) -> Summary:
    hits = sum(o.rolled_back for o in outcomes)
    reqs = [float(o.green_requests) if o.rolled_back else math.inf for o in outcomes]
    ints = [float(o.intervals) if o.rolled_back else math.inf for o in outcomes]
    reasons: dict[str, int] = {}
    for o in outcomes:
        if o.rolled_back:
            reasons[o.reason] = reasons.get(o.reason, 0) + 1
    return Summary(hits / len(outcomes), hits, len(outcomes), _q(reqs, 0.5), _q(reqs, 0.9),
                   _q(ints, 0.5), _q(ints, 0.9), max(ints),
                   sum(o.end == "paused" for o in outcomes), reasons,
                   sum(o.rolled_back and o.intervals == 1 for o in outcomes))


TARGETS: dict[str, tuple[str, Callable[[Summary], bool]]] = {
    "aa": ("false rollbacks ≤ 1%", lambda s: s.rate <= ALPHA),
    "edge": ("false rollbacks ≤ 1%", lambda s: s.rate <= ALPHA),
    "err3": ("median green calls ≤ 1,500", lambda s: s.reqs_med <= 1500),
    "err5": ("median green calls ≤ 500", lambda s: s.reqs_med <= 500),
    "outage": ("median ≤ 2 intervals", lambda s: s.ints_med <= 2),
}

HEADER = (
    "| scenario | policy | rolled back | green calls to rollback: median | p90 "
    "| intervals to rollback: median | p90 | median green calls vs seed | target (ours) |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---|"
)


def _rows(results: dict[str, dict[str, Summary]], policies: tuple[str, ...]) -> list[str]:
    lines = []
    for scenario in SCENARIOS:
        per = results[scenario.key]
        seed_med = per["seed"].reqs_med
        for i, policy in enumerate(policies):
            s = per[policy]
            rate = f"{s.rate:.1%} ({s.hits}/{s.n})"
            if scenario.null:
                lo, hi = _wilson(s.hits, s.n)
                rate += f", 95% CI {lo:.1%} to {hi:.1%}"
            if math.isinf(s.reqs_med) or math.isinf(seed_med) or scenario.null:
                vs = "—"
            else:
                vs = f"{s.reqs_med / seed_med:.2f}x"
            target = ""
            if policy.startswith("ours") and scenario.key in TARGETS:
                what, ok = TARGETS[scenario.key]
                if not (policy != "ours" and scenario.key == "edge"):
                    target = f"{what}: {'**met**' if ok(s) else '**not met**'}"
            lines.append(
                f"| {scenario.label if i == 0 else ''} | {policy} | {rate} "
                f"| {_fmt(s.reqs_med)} | {_fmt(s.reqs_p90)} | {_fmt(s.ints_med)} "
                f"| {_fmt(s.ints_p90)} | {vs} | {target} |")
    return lines


def render(results: dict[str, dict[str, Summary]], runtime_s: float, workers: int) -> str:
    lines = [
        "Command: `python benchmarks/detection.py`  ",
        f"Machine: {machine()}. Runtime: {runtime_s:.0f} s ({workers} worker processes).",
        "",
        "Simulated traffic, the same seed per rollout and interval for every policy: "
        f"{RATE:g} calls/s split by the rollout's weight (Poisson total, binomial split), "
        f"blue errors {BLUE_ERROR:.0%}, successful calls' latency lognormal (blue median "
        f"{BLUE_MEDIAN_S:g} s, sigma {SIGMA:g}: p95 ≈ "
        f"{BLUE_MEDIAN_S * math.exp(Z95 * SIGMA):.2f} s) "
        "binned into the GenAI semconv duration buckets; failed calls record no duration. "
        "Each regression starts with the rollout; in the outage every green call fails at once.",
        "",
        "Config of **ours** (the real `policy.decide` driving `_rollout.transition`): steps "
        f"{STEPS}, min_step_duration {MIN_STEP_S:g} s, min_requests {MIN_REQUESTS}, analysis "
        f"interval {INTERVAL_S:g} s (simulated clock), alpha {ALPHA:g}, checks: "
        "`error_rate max_ratio 1.5`, `latency p95 max_ratio 1.5`, `error_rate max 0.2`. "
        f"A healthy rollout promotes after {len(STEPS) - 1} steps x {STEP_INTERVALS} intervals "
        f"(about {RATE * MIN_STEP_S * sum(STEPS[:-1]) / 100:,.0f} green calls).",
        "",
        "Baselines on the same steps, advancing every min_step_duration while healthy: "
        f"**seed** = the seed article's HealthMonitor (green errors/(successes+errors) > "
        f"{SEED_ERROR:.0%} or green mean latency > {SEED_LATENCY_MS:g} ms, cumulative, every "
        f"interval); **z-test** = one-sided Farrington-Manning score tests of "
        f"p_green ≤ {Z_MARGIN:g} x p_blue on the error rate and on the share of successful calls "
        f"above blue's p95 bucket bound, each at alpha/2 = {ALPHA / 2:g} (z ≥ {Z_CRIT:.3f}), "
        "on cumulative counts at every interval (peeking).",
        "",
        "Green calls and intervals until rollback count from the start; quantiles are over all "
        "rollouts, a rollout never rolled back counting as ∞ (\"never\"). On the two null rows "
        "(green within ours' allowance) every rollback is a false one.",
        "",
        HEADER,
        *_rows(results, POLICIES),
        "",
        "### Reference arms",
        "",
        "**z-test, one look**: the same two tests judged once, before promotion, as a "
        "fixed-horizon test is designed to be used. **ours, error max_ratio 1.25**: ours with "
        f"only the error-rate check's allowance tightened from 1.5 to {VARIANT_RATIO:g} "
        "(alpha unchanged). On the 1% → 1.5% row that variant's rollbacks are correct ones "
        f"(1.5x exceeds its allowance). **{EXTRA[2]}**: ours with min_step_duration "
        f"{SHORT_STEP_S:g} s instead of {MIN_STEP_S:g} s, everything else unchanged.",
        "",
        HEADER,
        *_rows(results, EXTRA),
    ]
    return "\n".join(lines)


def notes(results: dict[str, dict[str, Summary]]) -> str:
    """What the table says, with its own numbers (the run is seeded: same numpy, same counts)."""
    r = results
    aa, edge, err3, err5, lat, out = (r[k] for k in ("aa", "edge", "err3", "err5", "lat30",
                                                     "outage"))
    ok = {key: TARGETS[key][1](r[key]["ours"]) for key in TARGETS}

    def met(key: str) -> str:
        return "met" if ok[key] else "**not met**"

    blue_p95 = BLUE_MEDIAN_S * math.exp(Z95 * SIGMA)
    normal = statistics.NormalDist()
    # The bound the check uses: the one whose share of blue's calls above it is nearest 5%.
    bound = min(BOUNDS, key=lambda b: abs(math.log(
        max(1e-12, 1.0 - normal.cdf(math.log(b / BLUE_MEDIAN_S) / SIGMA)) / 0.05)))
    blue_tail = 1.0 - normal.cdf(math.log(bound / BLUE_MEDIAN_S) / SIGMA)
    green_tail = 1.0 - normal.cdf(math.log(bound / (BLUE_MEDIAN_S * 1.3)) / SIGMA)
    blue_events = RATE * INTERVAL_S * (1 - STEPS[0] / 100) * (1 - BLUE_ERROR) * blue_tail
    green_events = RATE * INTERVAL_S * STEPS[0] / 100 * (1 - BLUE_ERROR) * green_tail
    green_mean_ms = BLUE_MEDIAN_S * 1.3 * math.exp(SIGMA * SIGMA / 2) * 1000
    v = r["err3"][EXTRA[1]]
    short = r["err3"][EXTRA[2]]
    seed_aa, z_aa, z1_aa, z1_edge = aa["seed"], aa["z-test"], aa[EXTRA[0]], edge[EXTRA[0]]
    lines = [
        "### Reading the detection numbers",
        "",
        f"- Targets for ours: A/A false rollbacks ≤ {ALPHA:.0%}: {met('aa')} "
        f"({aa['ours'].hits}/{aa['ours'].n}); 1% → 3% median ≤ 1,500 green calls: "
        f"{met('err3')} ({_fmt(err3['ours'].reqs_med)}, {err3['ours'].rate:.1%} caught before "
        f"promotion); 1% → 5% median ≤ 500: {met('err5')} ({_fmt(err5['ours'].reqs_med)}); "
        f"outage ≤ 2 intervals: {met('outage')} (every rollout at the first look, "
        f"{out['ours'].first_interval}/{out['ours'].n}: both error checks fail at once).",
        "- A/A is far inside ours' allowance (ratio 1 against 1.5), so it says little about "
        "calibration; the 1% → 1.5% row puts green exactly on the allowance, the worst case "
        f"alpha bounds: ours rolled back {edge['ours'].hits}/{edge['ours'].n} there. The "
        "e-processes are conservative in practice: the bound holds with room, and the room is "
        "paid for in detection time.",
        f"- 1% → 3% is the tight target: it depends on the schedule as well as on the test. "
        f"With steps of {SHORT_STEP_S / 60:g} minutes instead of {MIN_STEP_S / 60:g} (reference "
        f"table) the median is {_fmt(short.reqs_med)} green calls: shorter steps move green to "
        "higher weights sooner, where each green call carries less evidence (blue's share of "
        "the errors shrinks). "
        f"With `error_rate max_ratio {VARIANT_RATIO:g}` (alpha, "
        "steps and everything else unchanged; reference table) the median is "
        f"{_fmt(v.reqs_med)}, p90 {_fmt(v.reqs_p90)} green calls, {v.rate:.0%} caught, "
        f"{r['aa'][EXTRA[1]].hits}/{r['aa'][EXTRA[1]].n} A/A rollbacks. The price is the "
        f"allowance itself: a green between {VARIANT_RATIO:g}x and 1.5x blue's error rate "
        "becomes a regression by the config's contract (a 1.5x green was rolled back in "
        f"{r['edge'][EXTRA[1]].hits}/{r['edge'][EXTRA[1]].n} rollouts here: at these volumes "
        "the tighter allowance mostly buys speed on large regressions).",
        f"- seed: it cannot see 1% → 3% at all once green has a few hundred calls (3% < its "
        f"{SEED_ERROR:.0%} threshold). Its rollbacks there ({err3['seed'].rate:.0%}) and its "
        f"A/A false rollbacks ({seed_aa.rate:.1%}) are the same artefact: at the first look "
        f"green has about {RATE * INTERVAL_S * STEPS[0] / 100:.0f} calls and 2 errors read as "
        f"6.7% > 5% ({seed_aa.first_interval} of {seed_aa.hits} A/A and "
        f"{err3['seed'].first_interval} of {err3['seed'].hits} 1% → 3% rollbacks happen at the "
        "first look). Its fast median on 1% → 5% is the same coin toss on a true rate equal to "
        f"its threshold (p90 {_fmt(err5['seed'].reqs_p90)} calls). Green's mean latency under "
        f"+30% is about {green_mean_ms:.0f} ms < {SEED_LATENCY_MS:g} ms, so its latency rollbacks "
        f"({lat['seed'].reasons.get('mean latency', 0)}) are noise too. (The article's monitor "
        "only warns on latency and only recommends a rollback; treating both as rollbacks "
        "favours it.)",
        "- z-test with peeking: fastest on the error and latency regressions, but "
        f"{z_aa.rate:.1%} false rollbacks on A/A ({z_aa.reasons.get('p95 tail', 0)} of "
        f"{z_aa.hits} from the p95-tail test, {z_aa.reasons.get('error rate', 0)} from the "
        "error test) and "
        f"{edge['z-test'].rate:.1%} on the 1% → 1.5% boundary, against a nominal "
        f"{ALPHA:.0%}: looking every interval at a test built for one look. Looked at once "
        f"(reference arm) it is calibrated ({z1_aa.hits}/{z1_aa.n} on A/A, {z1_edge.hits}/"
        f"{z1_edge.n} on the boundary), and then every detection, the outage included, waits "
        f"for the whole rollout ({_fmt(out[EXTRA[0]].reqs_med)} green calls, "
        f"{_fmt(out[EXTRA[0]].ints_med)} intervals).",
        f"- Latency +30% ({lat['ours'].rate:.0%} caught before promotion, median "
        f"{_fmt(lat['ours'].reqs_med)} green calls; no target was set). The check compares "
        "green's and blue's shares of calls slower than the bucket bound nearest blue's p95: "
        f"blue's p95 is {blue_p95:.2f} s, the bound {bound:g} s, above which {blue_tail:.2%} "
        f"of blue's and {green_tail:.2%} of green's calls fall: at the {STEPS[0]:g}% step an "
        f"interval carries about {blue_events:.1f} blue and {green_events:.2f} green tail "
        "events. (With the next bound up, 1.28 s, only about 0.2% of blue's calls are slower "
        "and the same regression took a median of about 3,600 green calls, 85% caught; see "
        "docs/analysis.md.) The semconv buckets double in width, so the check reads a share "
        "ratio at a bound, not a quantile ratio.",
        "- Every number comes from seeded simulation (one seed per scenario, rollout and "
        "interval), so a re-run with the same numpy gives the same counts.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tenth of the rollouts; prints the table, writes nothing")
    parser.add_argument("--workers", type=_at_least_one, default=2)
    args = parser.parse_args()

    started = time.perf_counter()
    results: dict[str, dict[str, Summary]] = {}
    chunk = 25
    with multiprocessing.Pool(args.workers) as pool:
        for index, scenario in enumerate(SCENARIOS):
            n = max(20, scenario.rollouts // 10) if args.quick else scenario.rollouts
            t0 = time.perf_counter()
            jobs = [(index, a, min(n, a + chunk)) for a in range(0, n, chunk)]
            outcomes = [o for part in pool.map(simulate, jobs) for o in part]
            results[scenario.key] = {p: summarise([o[p] for o in outcomes])
                                     for p in POLICIES + EXTRA}
            line = "; ".join(
                f"{p} {s.rate:.1%} rolled back, median {_fmt(s.reqs_med)} green calls"
                for p, s in results[scenario.key].items())
            print(f"[{scenario.label}] {n} rollouts in {time.perf_counter() - t0:.1f}s: {line}",
                  file=sys.stderr, flush=True)
    runtime = time.perf_counter() - started
    body = render(results, runtime, args.workers) + "\n\n" + notes(results)
    print(body)
    if args.quick:
        print("(--quick: BENCHMARKS.md not written)", file=sys.stderr)
    else:
        write_section("Detection", body)


if __name__ == "__main__":
    main()
