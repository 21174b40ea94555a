"""The e-processes in ``openai_bluegreen._stats``: exact values, anytime validity, power.

The statistics are cross-checked against independent computations (``scipy`` quadrature of the
Beta-prior mixtures, ``scipy.optimize`` and brute-force grids for the maxima over the null), and
their anytime validity is checked by Monte Carlo at the null's boundary, looking after every
batch, against a naive z-test on the same data which does not keep its level.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

from openai_bluegreen._stats import (
    JEFFREYS,
    RATIO_GRID,
    log_e_one_sample,
    log_e_rate_ratio,
    log_e_two_sample,
)

ALPHA = 0.05
RUNS = 2000


# --- independent reference computations ------------------------------------------------------

def _loglik(events: int, trials: int, rate: float) -> float:
    """Binomial log-likelihood without the coefficient, with 0 * log 0 = 0 (scipy's xlogy)."""
    return float(special.xlogy(events, rate) + special.xlog1py(trials - events, -rate))


def _quad_log_mixture(events: int, trials: int) -> float:
    """``log of int_0^1 p^e (1-p)^(n-e) Beta(1/2, 1/2)(dp)`` by adaptive quadrature.

    Substituting ``p = sin(t)^2`` turns the Jeffreys density into the constant ``2/pi`` on
    ``[0, pi/2]``; the integrand is scaled by the likelihood at its peak so it never underflows.
    """
    p_hat = events / trials
    peak = _loglik(events, trials, p_hat)

    def integrand(t: float) -> float:
        p = math.sin(t) ** 2
        return (2.0 / math.pi) * math.exp(_loglik(events, trials, p) - peak)

    t_hat = math.asin(math.sqrt(p_hat))
    width = 1.0 / math.sqrt(trials + 1.0)
    points = [x for x in (t_hat - width, t_hat, t_hat + width) if 0.0 < x < math.pi / 2]
    value, _ = integrate.quad(integrand, 0.0, math.pi / 2, points=points or None,
                              epsabs=0.0, epsrel=1e-12, limit=500)
    return peak + math.log(value)


def _scipy_one_sample_max(events: int, trials: int, null_rate: float) -> float:
    """``max over p <= null_rate`` of the log-likelihood: bounded Brent and a brute grid."""
    result = optimize.minimize_scalar(lambda p: -_loglik(events, trials, p),
                                      bounds=(0.0, null_rate), method="bounded",
                                      options={"xatol": 1e-13})
    grid = np.linspace(0.0, null_rate, 200_001)
    brute = np.max(special.xlogy(events, grid) + special.xlog1py(trials - events, -grid))
    return max(-float(result.fun), float(brute))


def _profile(e_b: int, n_b: int, e_g: int, n_g: int, margin: float, ratio: float,
             p_b: float) -> float:
    """Joint log-likelihood at ``p_b`` with ``p_g`` at its best value allowed by the null."""
    p_g = min(e_g / n_g, margin + ratio * p_b, 1.0)
    return _loglik(e_b, n_b, p_b) + _loglik(e_g, n_g, p_g)


def _scipy_two_sample_max(e_b: int, n_b: int, e_g: int, n_g: int, margin: float,
                          ratio: float) -> float:
    """``max over p_g <= margin + ratio * p_b`` of the joint log-likelihood, three ways.

    Bounded Brent on the profile likelihood, SLSQP in both rates with the linear constraint,
    and a brute-force grid over ``p_b``; the best of the three is the reference.
    """
    brent = optimize.minimize_scalar(
        lambda p: -_profile(e_b, n_b, e_g, n_g, margin, ratio, p),
        bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-13})
    candidates = [-float(brent.fun)]
    grid = np.linspace(0.0, 1.0, 1_000_001)
    grid_g = np.minimum(np.minimum(e_g / n_g, margin + ratio * grid), 1.0)
    candidates.append(float(np.max(
        special.xlogy(e_b, grid) + special.xlog1py(n_b - e_b, -grid)
        + special.xlogy(e_g, grid_g) + special.xlog1py(n_g - e_g, -grid_g))))
    eps = 1e-12

    def negative(x: np.ndarray) -> float:
        p_b, p_g = np.clip(x, eps, 1.0 - eps)
        return -(_loglik(e_b, n_b, float(p_b)) + _loglik(e_g, n_g, float(p_g)))

    start = np.array([0.5, min(0.5, margin + ratio * 0.5) * 0.5 + eps])
    slsqp = optimize.minimize(
        negative, start, method="SLSQP", bounds=[(eps, 1 - eps), (eps, 1 - eps)],
        constraints=[{"type": "ineq", "fun": lambda x: margin + ratio * x[0] - x[1]}],
        options={"ftol": 1e-15, "maxiter": 500})
    if slsqp.success:
        candidates.append(-float(slsqp.fun))
    return max(candidates)


def _label_loglik_np(batches: list[tuple[int, int, int, int]], ratios: np.ndarray) -> np.ndarray:
    """Conditional-binomial log-likelihood of the event labels, vectorised over ``ratios``."""
    total = np.zeros_like(ratios, dtype=float)
    for g, n_g, b, n_b in batches:
        if n_g == 0 or n_b == 0 or g + b == 0:
            continue
        x = n_g / n_b
        theta = x * ratios / (x * ratios + 1.0)
        total += special.xlogy(g, theta) + special.xlog1py(b, -theta)
    return total


def _numpy_rate_ratio(batches: list[tuple[int, int, int, int]], max_ratio: float) -> float:
    """The count test recomputed: numpy mixture over the grid, scipy maximum over the null."""
    if all(n_g == 0 or n_b == 0 or g + b == 0 for g, n_g, b, n_b in batches):
        return 0.0
    ratios = max_ratio * np.geomspace(1.0, 20.0, 96)
    numerator = float(special.logsumexp(_label_loglik_np(batches, ratios)) - math.log(96))
    log_hi = math.log(max_ratio)
    result = optimize.minimize_scalar(
        lambda s: -float(_label_loglik_np(batches, np.array([math.exp(s)]))[0]),
        bounds=(log_hi - 60.0, log_hi), method="bounded", options={"xatol": 1e-12})
    at_edges = _label_loglik_np(batches, np.array([max_ratio, max_ratio * math.exp(-60.0)]))
    denominator = max(-float(result.fun), float(at_edges.max()))
    return numerator - denominator


def _close(got: float, want: float) -> None:
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9), (got, want)


# --- exact values ------------------------------------------------------------------------------

ONE_SAMPLE_CASES = [
    (0, 1, 0.05), (0, 500, 0.05), (1, 1, 0.05), (3, 40, 0.05), (30, 200, 0.05),
    (200, 200, 0.2), (5, 500, 0.05), (480, 500, 0.5), (7, 2000, 0.01), (60, 2000, 0.01),
    (12, 30, 0.0001),
]


def test_grid_is_log_uniform_from_1_to_20_with_96_points() -> None:
    assert np.allclose(RATIO_GRID, np.geomspace(1.0, 20.0, 96), rtol=1e-13)


@pytest.mark.parametrize(("events", "trials", "null_rate"), ONE_SAMPLE_CASES)
def test_one_sample_matches_quadrature_and_optimiser(events: int, trials: int,
                                                     null_rate: float) -> None:
    want = (_quad_log_mixture(events, trials)
            - _scipy_one_sample_max(events, trials, null_rate))
    _close(log_e_one_sample(events, trials, null_rate), want)


def test_one_sample_mixture_is_the_beta_binomial_marginal_for_other_priors() -> None:
    # Uniform prior: the marginal of e of n under Beta(1, 1) is 1 / ((n + 1) * C(n, e)).
    events, trials = 4, 30
    got = log_e_one_sample(events, trials, 0.5, prior=(1.0, 1.0))
    want = (-math.log((trials + 1) * math.comb(trials, events))
            - _loglik(events, trials, events / trials))
    _close(got, want)


def test_one_sample_without_trials_is_zero() -> None:
    assert log_e_one_sample(0, 0, 0.05) == 0.0


def test_one_sample_any_event_refutes_a_zero_rate_null() -> None:
    assert log_e_one_sample(1, 100, 0.0) == math.inf
    _close(log_e_one_sample(0, 100, 0.0), _quad_log_mixture(0, 100))


TWO_SAMPLE_CASES = [
    # blue events, blue calls, green events, green calls, margin, ratio
    (10, 1000, 30, 1000, 0.01, 1.0),   # green above the null
    (10, 1000, 12, 1000, 0.01, 1.0),   # green below the null: unconstrained MLE
    (0, 500, 9, 300, 0.01, 1.0),       # no blue events
    (0, 500, 0, 300, 0.01, 1.0),       # no events at all
    (0, 0, 7, 50, 0.02, 1.0),          # no blue calls
    (50, 50, 40, 40, 0.0, 1.0),        # all events
    (3, 100, 100, 100, 0.05, 1.0),     # green all events
    (20, 400, 40, 200, 0.0, 1.5),      # relative allowance
    (20, 400, 190, 200, 0.0, 3.0),     # boundary capped by p_g <= 1
    (300, 400, 190, 200, 0.0, 0.5),    # ratio below 1, blue rate high
    (1, 5000, 25, 500, 0.005, 1.0),    # rare events, unbalanced traffic
    (40, 100, 35, 100, 0.0, 1.0),      # green better than blue
]


@pytest.mark.parametrize(("e_b", "n_b", "e_g", "n_g", "margin", "ratio"), TWO_SAMPLE_CASES)
def test_two_sample_matches_quadrature_and_constrained_optimisers(
        e_b: int, n_b: int, e_g: int, n_g: int, margin: float, ratio: float) -> None:
    numerator = _quad_log_mixture(e_g, n_g) + (_quad_log_mixture(e_b, n_b) if n_b else 0.0)
    want = numerator - _scipy_two_sample_max(e_b, n_b, e_g, n_g, margin, ratio)
    got = log_e_two_sample(e_b, n_b, e_g, n_g, margin=margin, ratio=ratio)
    _close(got, want)


def test_two_sample_without_green_calls_is_zero() -> None:
    assert log_e_two_sample(5, 100, 0, 0, margin=0.01) == 0.0


def test_two_sample_never_exceeds_one_when_green_is_within_the_null() -> None:
    # Mixture <= maximised likelihood, so log E <= 0 whenever the unconstrained MLE is in H0.
    for e_b, e_g in [(10, 10), (10, 19), (0, 0), (100, 50)]:
        assert log_e_two_sample(e_b, 1000, e_g, 1000, margin=0.01) <= 0.0


RATE_RATIO_CASES: list[tuple[list[tuple[int, int, int, int]], float]] = [
    ([(5, 100, 20, 1900)], 1.5),                                  # one batch, above the null
    ([(3, 100, 2, 1900), (5, 200, 9, 1800), (20, 500, 15, 1500)], 1.5),
    ([(0, 100, 10, 1900), (0, 500, 30, 1500)], 1.2),              # no green events
    ([(4, 100, 0, 1900), (9, 500, 0, 1500)], 2.0),                # no blue events
    ([(4, 100, 30, 1900)], 2.0),                                  # green below the null
    ([(0, 100, 0, 1900)], 2.0),                                   # no events at all
    ([(6, 100, 0, 0), (2, 100, 1, 100)], 1.5),                    # a batch without blue calls
    ([(0, 0, 4, 100), (3, 50, 2, 50)], 1.5),                      # a batch without green calls
    ([(40, 500, 45, 500), (80, 1000, 41, 500)], 1.0),             # equal rates allowed
    ([(1, 5, 200, 10_000)], 0.5),                                 # ratio allowance below 1
]


@pytest.mark.parametrize(("batches", "max_ratio"), RATE_RATIO_CASES)
def test_rate_ratio_matches_numpy_mixture_and_scipy_maximum(
        batches: list[tuple[int, int, int, int]], max_ratio: float) -> None:
    _close(log_e_rate_ratio(batches, max_ratio), _numpy_rate_ratio(batches, max_ratio))


def test_rate_ratio_depends_on_blue_rate_only_through_the_labels() -> None:
    # Scaling every call count by the same factor leaves the exposures and so log E unchanged.
    batches = [(3, 100, 2, 1900), (5, 200, 9, 1800)]
    scaled = [(g, 7 * n_g, b, 7 * n_b) for g, n_g, b, n_b in batches]
    assert log_e_rate_ratio(batches, 1.5) == log_e_rate_ratio(scaled, 1.5)


# --- anytime validity ----------------------------------------------------------------------------

def _allowance(runs: int, alpha: float) -> int:
    """Largest count of crossings consistent with a crossing probability of ``alpha``.

    The ``1 - 1e-4`` quantile of ``Binomial(runs, alpha)``: a valid test fails this bound
    once in 10,000 seeds; for 2,000 runs at alpha = 0.05 it is 138 (6.9 %).
    """
    return int(stats.binom.ppf(1.0 - 1e-4, runs, alpha))


def test_one_sample_keeps_its_level_when_looked_at_after_every_batch() -> None:
    rng = np.random.default_rng(20240601)
    null_rate, per_look, looks = 0.05, 20, 100
    events = rng.binomial(per_look, null_rate, size=(RUNS, looks)).cumsum(axis=1)
    trials = per_look * np.arange(1, looks + 1)
    threshold = math.log(1 / ALPHA)
    crossed = sum(
        any(log_e_one_sample(int(row[k]), int(trials[k]), null_rate) >= threshold
            for k in range(looks))
        for row in events)
    assert crossed <= _allowance(RUNS, ALPHA), crossed / RUNS


def _two_sample_null_data(seed: int, looks: int, per_look: int, p_blue: float,
                          p_green: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    blue = rng.binomial(per_look, p_blue, size=(RUNS, looks)).cumsum(axis=1)
    green = rng.binomial(per_look, p_green, size=(RUNS, looks)).cumsum(axis=1)
    return blue, green, per_look * np.arange(1, looks + 1)


def _naive_z(blue: int, green: int, calls: int, margin: float) -> float:
    """One-sided two-proportion z statistic for ``p_green - p_blue > margin``."""
    p_b, p_g = blue / calls, green / calls
    variance = (p_b * (1 - p_b) + p_g * (1 - p_g)) / calls
    return (p_g - p_b - margin) / math.sqrt(variance) if variance > 0 else 0.0


NULL_P_BLUE, NULL_P_GREEN = 0.02, 0.05  # exactly at the boundary of p_g <= p_b + 0.03


def _two_sample_null() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _two_sample_null_data(seed=7, looks=50, per_look=100, p_blue=NULL_P_BLUE,
                                 p_green=NULL_P_GREEN)


def test_two_sample_keeps_its_level_when_looked_at_after_every_batch() -> None:
    margin = NULL_P_GREEN - NULL_P_BLUE
    blue, green, calls = _two_sample_null()
    threshold = math.log(1 / ALPHA)
    crossed = 0
    for b_row, g_row in zip(blue, green, strict=True):
        crossed += any(
            log_e_two_sample(int(b_row[k]), int(calls[k]), int(g_row[k]), int(calls[k]),
                             margin=margin) >= threshold
            for k in range(len(calls)))
    assert crossed <= _allowance(RUNS, ALPHA), crossed / RUNS


def test_naive_fixed_horizon_z_test_checked_at_every_look_exceeds_its_level() -> None:
    # Same data as the two-sample test above: a z-test at level alpha, repeated after every
    # batch, rejects a true null far more often than alpha. This is what the e-processes avoid,
    # and it shows the Monte Carlo check above is able to fail.
    margin = NULL_P_GREEN - NULL_P_BLUE
    blue, green, calls = _two_sample_null()
    critical = float(stats.norm.ppf(1 - ALPHA))
    crossed = sum(
        any(_naive_z(int(b_row[k]), int(g_row[k]), int(calls[k]), margin) >= critical
            for k in range(len(calls)))
        for b_row, g_row in zip(blue, green, strict=True))
    once = sum(_naive_z(int(b[-1]), int(g[-1]), int(calls[-1]), margin) >= critical
               for b, g in zip(blue, green, strict=True))
    assert once <= _allowance(RUNS, ALPHA)  # looked at once, it roughly keeps its level
    assert crossed > 2 * _allowance(RUNS, ALPHA), crossed / RUNS


STEP_SHARES = (0.05, 0.1, 0.25, 0.5)


def _rate_ratio_crossing_rate(seed: int, runs: int, max_ratio: float, p_blue: float,
                              bernoulli: bool, looks_per_step: int = 6,
                              calls_per_look: int = 500) -> float:
    """Fraction of runs whose count test ever crosses ``log(1/alpha)`` at the null boundary.

    A rollout with one batch per step (constant green share within it); the statistic is
    evaluated after every look, with the current step's counts cumulative within the step, as
    the policy does. Events are Poisson (the test's model) or Bernoulli per call.
    """
    rng = np.random.default_rng(seed)
    threshold = math.log(1 / ALPHA)
    p_green = max_ratio * p_blue
    crossed = 0
    for _ in range(runs):
        done: list[tuple[int, int, int, int]] = []
        hit = False
        for share in STEP_SHARES:
            n_g = round(share * calls_per_look)
            n_b = calls_per_look - n_g
            if bernoulli:
                g = rng.binomial(n_g, p_green, size=looks_per_step).cumsum()
                b = rng.binomial(n_b, p_blue, size=looks_per_step).cumsum()
            else:
                g = rng.poisson(n_g * p_green, size=looks_per_step).cumsum()
                b = rng.poisson(n_b * p_blue, size=looks_per_step).cumsum()
            for k in range(looks_per_step):
                batch = (int(g[k]), n_g * (k + 1), int(b[k]), n_b * (k + 1))
                if log_e_rate_ratio([*done, batch], max_ratio) >= threshold:
                    hit = True
                    break
            if hit:
                break
            done.append(batch)
        crossed += hit
    return crossed / runs


def test_rate_ratio_keeps_its_level_under_its_poisson_model() -> None:
    rate = _rate_ratio_crossing_rate(seed=11, runs=RUNS, max_ratio=1.5, p_blue=0.02,
                                     bernoulli=False)
    assert rate * RUNS <= _allowance(RUNS, ALPHA), rate


def test_rate_ratio_keeps_its_level_with_bernoulli_calls_and_high_error_rates() -> None:
    # Per-call errors are Bernoulli, not Poisson: conditional on the calls, the green count
    # given the total is less dispersed than the binomial the test assumes. At a 30 % blue
    # error rate and green exactly twice that, the approximation is at its worst.
    runs = 1000
    rate = _rate_ratio_crossing_rate(seed=12, runs=runs, max_ratio=2.0, p_blue=0.3,
                                     bernoulli=True, looks_per_step=4, calls_per_look=100)
    assert rate * runs <= _allowance(runs, ALPHA), rate


# --- power -------------------------------------------------------------------------------------

def _calls_to_detect(statistic: Callable[[int, int, int, int], float], rng: np.random.Generator,
                     p_blue: float, p_green: float, share: float, threshold: float,
                     per_look: int, max_looks: int) -> int | None:
    n_g = round(share * per_look)
    n_b = per_look - n_g
    g = b = 0
    for k in range(1, max_looks + 1):
        g += int(rng.binomial(n_g, p_green))
        b += int(rng.binomial(n_b, p_blue))
        if statistic(g, n_g * k, b, n_b * k) >= threshold:
            return n_g * k
    return None


@pytest.mark.parametrize("check", ["rate_ratio", "two_sample"])
def test_clear_error_regression_is_detected_within_a_few_thousand_green_calls(check: str) -> None:
    # Green errs on 5 % of calls, blue on 1 %; three checks share alpha (Bonferroni).
    def rate_ratio(g: int, n_g: int, b: int, n_b: int) -> float:
        return log_e_rate_ratio([(g, n_g, b, n_b)], 1.5)

    def two_sample(g: int, n_g: int, b: int, n_b: int) -> float:
        return log_e_two_sample(b, n_b, g, n_g, margin=0.01)

    statistic = {"rate_ratio": rate_ratio, "two_sample": two_sample}[check]
    rng = np.random.default_rng(99)
    threshold = math.log(3 / ALPHA)
    found = [_calls_to_detect(statistic, rng, 0.01, 0.05, 0.25, threshold, 200, 40)
             for _ in range(200)]
    detected = [n for n in found if n is not None]
    assert len(detected) >= 0.95 * len(found)  # within 2,000 green calls
    assert float(np.median(detected)) <= 1000


def test_count_test_detects_a_regression_sooner_than_the_two_sample_test() -> None:
    # Same data for both: the count test has no nuisance rate to maximise over.
    rng = np.random.default_rng(5)
    threshold = math.log(3 / ALPHA)
    faster = 0
    trials = 100
    for _ in range(trials):
        seed = int(rng.integers(1 << 31))
        by_count = _calls_to_detect(lambda g, n_g, b, n_b: log_e_rate_ratio(
            [(g, n_g, b, n_b)], 2.0), np.random.default_rng(seed), 0.01, 0.04, 0.1,
            threshold, 400, 100)
        by_binomial = _calls_to_detect(lambda g, n_g, b, n_b: log_e_two_sample(
            b, n_b, g, n_g, ratio=2.0), np.random.default_rng(seed), 0.01, 0.04, 0.1,
            threshold, 400, 100)
        faster += (by_count or math.inf) <= (by_binomial or math.inf)
    assert faster >= 0.8 * trials


# --- invalid inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "message"), [
    (lambda: log_e_one_sample(5, 3, 0.1), r"got 5 of 3"),
    (lambda: log_e_one_sample(-1, 3, 0.1), r"got -1 of 3"),
    (lambda: log_e_one_sample(1, 3, 1.0), r"null_rate.*got 1\.0"),
    (lambda: log_e_one_sample(1, 3, -0.1), r"null_rate.*got -0\.1"),
    (lambda: log_e_one_sample(1, 3, math.nan), r"null_rate.*got nan"),
    (lambda: log_e_two_sample(4, 3, 1, 3), r"blue.*got 4 of 3"),
    (lambda: log_e_two_sample(1, 3, 1, -3), r"green.*got 1 of -3"),
    (lambda: log_e_two_sample(1, 3, 1, 3, margin=1.0), r"margin.*got 1\.0"),
    (lambda: log_e_two_sample(1, 3, 1, 3, margin=-0.01), r"margin.*got -0\.01"),
    (lambda: log_e_two_sample(1, 3, 1, 3, ratio=0.0), r"ratio.*got 0\.0"),
    (lambda: log_e_two_sample(1, 3, 1, 3, ratio=math.nan), r"ratio.*got nan"),
    (lambda: log_e_rate_ratio([(1, 3, 1, 3)], 0.0), r"max_ratio.*got 0\.0"),
    (lambda: log_e_rate_ratio([(1, 3, 1, 3)], -2.0), r"max_ratio.*got -2\.0"),
    (lambda: log_e_rate_ratio([(4, 3, 1, 3)], 1.5), r"green.*got 4 of 3"),
    (lambda: log_e_rate_ratio([(1, 3, 5, 3)], 1.5), r"blue.*got 5 of 3"),
])
def test_invalid_inputs_raise_value_error_naming_the_bad_value(
        call: Callable[[], float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_default_prior_is_jeffreys() -> None:
    assert JEFFREYS == (0.5, 0.5)
