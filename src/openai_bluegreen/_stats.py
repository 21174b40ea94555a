"""Anytime-valid tests on counts: e-processes for binomial rates (derivation: docs/analysis.md).

Each test returns ``log E`` where ``E`` is an e-process for its null hypothesis: under the null,
``P(sup_t E_t >= 1/alpha) <= alpha`` (Ville's inequality), however often it is looked at and
whenever the looking stops. The policy fails a check when ``log E >= log(k/alpha)``, ``k`` the
number of checks (alpha split evenly).

The construction is the same for every test here:

* numerator: the likelihood of the data mixed over a Beta prior for each rate (closed form, the
  Beta-binomial marginal), a test martingale against any fixed rate in the null;
* denominator: the likelihood maximised over the null set (a composite null with the nuisance
  blue rate), which is at least the likelihood under the true null rate, so the ratio is bounded
  by a test martingale (sequential universal inference / running-MLE e-process).

Both depend on the data only through cumulative counts, so the watcher can evaluate the
statistic from cumulative metric snapshots, at any cadence, without keeping per-look state.
Pure functions of numbers; no I/O; ``math`` only.
"""

from __future__ import annotations

import math

__all__ = [
    "JEFFREYS",
    "RATIO_GRID",
    "log_beta",
    "log_e_one_sample",
    "log_e_rate_ratio",
    "log_e_two_sample",
    "log_likelihood",
]

# Beta(1/2, 1/2): Jeffreys' prior puts more mass near 0 and 1 than the uniform prior, which is
# where error rates and tail shares live.
JEFFREYS: tuple[float, float] = (0.5, 0.5)
_BISECTION_STEPS = 80


def log_beta(a: float, b: float) -> float:
    """``log B(a, b)``."""
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def log_likelihood(events: int, trials: int, rate: float) -> float:
    """Binomial log-likelihood without the binomial coefficient (it cancels in every ratio)."""
    total = 0.0
    if events:
        if rate <= 0.0:
            return -math.inf
        total += events * math.log(rate)
    misses = trials - events
    if misses:
        if rate >= 1.0:
            return -math.inf
        total += misses * math.log1p(-rate)
    return total


def _log_mixture(events: int, trials: int, prior: tuple[float, float]) -> float:
    a, b = prior
    return log_beta(a + events, b + trials - events) - log_beta(a, b)


def _check_counts(events: int, trials: int, name: str) -> None:
    if trials < 0 or events < 0 or events > trials:
        raise ValueError(f"{name}: need 0 <= events <= trials (got {events} of {trials})")


def log_e_one_sample(events: int, trials: int, null_rate: float,
                     prior: tuple[float, float] = JEFFREYS) -> float:
    """``log E`` against ``H0: rate <= null_rate`` from ``events`` out of ``trials``.

    Args:
        events: Cumulative count of events (errors, or calls above a latency threshold).
        trials: Cumulative count of trials (calls).
        null_rate: The largest rate the null allows, in ``[0, 1)``.
        prior: Beta prior ``(a, b)`` of the mixture in the numerator.
    """
    _check_counts(events, trials, "one-sample test")
    if not 0.0 <= null_rate < 1.0:
        raise ValueError(f"null_rate must be in [0, 1) (got {null_rate})")
    if trials == 0:
        return 0.0
    rate_hat = min(events / trials, null_rate)
    return _log_mixture(events, trials, prior) - log_likelihood(events, trials, rate_hat)


def _boundary_max(e_b: int, n_b: int, e_g: int, n_g: int, margin: float, ratio: float) -> float:
    """Max of the joint log-likelihood on the null's boundary ``p_g = margin + ratio * p_b``.

    The objective is concave in ``p_b`` (a concave function of an affine map), so its derivative
    is decreasing; the maximiser lies between blue's own estimate (derivative >= 0 there) and the
    ``p_b`` at which the boundary meets green's own estimate (derivative <= 0 there), and
    bisection on the derivative finds it.
    """
    p_b_hat = e_b / n_b if n_b else 0.0
    p_g_hat = e_g / n_g
    lo = p_b_hat
    hi = min(1.0, (p_g_hat - margin) / ratio, (1.0 - margin) / ratio)
    if hi <= lo:  # numerically on the boundary already
        p_b = lo
    else:
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            q = margin + ratio * mid
            slope = 0.0
            if e_b:
                slope += e_b / mid
            if n_b - e_b:
                slope -= (n_b - e_b) / (1.0 - mid)
            if e_g:
                slope += ratio * e_g / q
            if n_g - e_g:
                slope -= ratio * (n_g - e_g) / (1.0 - q)
            if slope > 0.0:
                lo = mid
            else:
                hi = mid
        p_b = 0.5 * (lo + hi)
    p_g = min(1.0, margin + ratio * p_b)
    return log_likelihood(e_b, n_b, p_b) + log_likelihood(e_g, n_g, p_g)


def log_e_two_sample(blue_events: int, blue_trials: int, green_events: int, green_trials: int,
                     *, margin: float = 0.0, ratio: float = 1.0,
                     prior: tuple[float, float] = JEFFREYS) -> float:
    """``log E`` against ``H0: p_green <= margin + ratio * p_blue`` (green no worse than allowed).

    ``margin`` is an absolute allowance (``max_increase``: ``ratio=1``), ``ratio`` a relative one
    (``margin=0``). Blue's rate is a nuisance parameter: the denominator maximises over it.

    Args:
        blue_events: Blue's cumulative events.
        blue_trials: Blue's cumulative calls.
        green_events: Green's cumulative events.
        green_trials: Green's cumulative calls.
        margin: Absolute allowance in ``[0, 1)``.
        ratio: Relative allowance, ``> 0``.
        prior: Beta prior of each rate in the numerator's mixture.
    """
    _check_counts(blue_events, blue_trials, "blue")
    _check_counts(green_events, green_trials, "green")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1) (got {margin})")
    if not ratio > 0.0:
        raise ValueError(f"ratio must be > 0 (got {ratio})")
    if green_trials == 0:
        return 0.0  # no green data: the blue factor alone is a martingale with E <= 1
    numerator = (_log_mixture(blue_events, blue_trials, prior)
                 + _log_mixture(green_events, green_trials, prior))
    p_b_hat = blue_events / blue_trials if blue_trials else 0.0
    p_g_hat = green_events / green_trials
    if p_g_hat <= margin + ratio * p_b_hat:
        denominator = (log_likelihood(blue_events, blue_trials, p_b_hat)
                       + log_likelihood(green_events, green_trials, p_g_hat))
    else:
        denominator = _boundary_max(blue_events, blue_trials, green_events, green_trials,
                                    margin, ratio)
    return numerator - denominator


# Prior of the rate-ratio test, as multiples of the null's largest ratio: uniform in log over
# [1, 20] on a fixed grid. Only alternatives get prior mass (any fixed prior keeps the test
# valid; mass on the null would only cost power). Regressions beyond 20x the allowance need no
# resolution: each of their events already carries more than log(20) of evidence at the grid's
# top, so they fail within a few events anyway.
RATIO_GRID: tuple[float, ...] = tuple(math.exp(i * math.log(20.0) / 95) for i in range(96))


def _label_log_likelihood(batches: list[tuple[int, int, float]], ratio: float) -> float:
    total = 0.0
    for green_events, blue_events, exposure in batches:
        # exposure = green calls / blue calls in the batch; theta = P(an event is green's).
        theta = exposure * ratio / (exposure * ratio + 1.0)
        if green_events:
            total += green_events * math.log(theta)
        if blue_events:
            total += blue_events * math.log1p(-theta)
    return total


def log_e_rate_ratio(batches: list[tuple[int, int, int, int]], max_ratio: float,
                     grid: tuple[float, ...] = RATIO_GRID) -> float:
    """``log E`` against ``H0: rate_green <= max_ratio * rate_blue`` from counts in batches.

    The count test of Lindon & Malek (2022): conditional on how many events happened in a batch,
    each event is green's with probability ``theta = x * r / (x * r + 1)``, where ``x`` is the
    batch's ratio of green to blue calls and ``r`` the ratio of the rates. Blue's rate cancels,
    so there is no nuisance parameter. The numerator mixes over ``r > max_ratio`` (uniform in
    ``log r`` on ``grid``), the denominator maximises over ``r <= max_ratio``.

    Args:
        batches: ``(green_events, green_calls, blue_events, blue_calls)`` per batch in which the
            green share of traffic was constant (one rollout step each).
        max_ratio: The largest rate ratio the null allows (``> 0``).
        grid: The ratios the numerator mixes over, with equal weight, as multiples of
            ``max_ratio``.
    """
    if not 0.0 < max_ratio < math.inf:
        raise ValueError(f"max_ratio must be finite and > 0 (got {max_ratio})")
    usable: list[tuple[int, int, float]] = []
    for green_events, green_calls, blue_events, blue_calls in batches:
        _check_counts(green_events, green_calls, "green")
        _check_counts(blue_events, blue_calls, "blue")
        if green_calls and blue_calls and green_events + blue_events:
            usable.append((green_events, blue_events, green_calls / blue_calls))
    if not usable:
        return 0.0
    values = [_label_log_likelihood(usable, max_ratio * m) for m in grid]
    peak = max(values)
    numerator = peak + math.log(sum(math.exp(v - peak) for v in values) / len(values))
    return numerator - _max_label_log_likelihood(usable, max_ratio)


def _max_label_log_likelihood(batches: list[tuple[int, int, float]], max_ratio: float) -> float:
    """``max over r <= max_ratio`` of the label log-likelihood (concave in ``log r``)."""
    green = sum(b[0] for b in batches)
    blue = sum(b[1] for b in batches)
    if green == 0:
        # Increasing r only lowers the likelihood: the supremum is at r -> 0, where it is 0.
        return 0.0
    if blue == 0:
        return _label_log_likelihood(batches, max_ratio)  # increasing in r
    hi = math.log(max_ratio)
    lo = min(math.log(1e-12), hi) - 30.0

    def slope(log_r: float) -> float:
        r = math.exp(log_r)
        total = 0.0
        for green_events, blue_events, exposure in batches:
            theta = exposure * r / (exposure * r + 1.0)
            # d/dlog r of g*log(theta) + b*log(1-theta) = g*(1-theta) - b*theta
            total += green_events * (1.0 - theta) - blue_events * theta
        return total

    if slope(hi) >= 0.0:
        return _label_log_likelihood(batches, max_ratio)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if slope(mid) > 0.0:
            lo = mid
        else:
            hi = mid
    return _label_log_likelihood(batches, math.exp(0.5 * (lo + hi)))
