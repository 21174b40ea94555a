"""Metric sources: where the watcher reads per-rollout, per-environment counts and histograms.

A source returns a :class:`Snapshot` of *cumulative* counts since an origin of its own choosing
(process start for :class:`~openai_bluegreen.sources.local.LocalSource`). The watcher keeps the
snapshots it saw at each step's start and judges the differences, so a source never needs to
know about steps. A source that cannot answer raises :class:`SourceUnavailable`; the watcher
then holds (missing data is never a pass).

Built in: ``local`` (this process's own OpenTelemetry metrics through a metric reader).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .._errors import BlueGreenError

__all__ = [
    "EMPTY_ENV",
    "CatchingUp",
    "EnvStats",
    "Histogram",
    "MetricSource",
    "RolloutStats",
    "Snapshot",
    "SourceUnavailable",
    "open_source",
]


class SourceUnavailable(BlueGreenError):
    """The metric source cannot answer now (unreachable, not ready, no data)."""


class CatchingUp(SourceUnavailable):
    """A long backlog of samples is being read over several snapshots: not a failure of the
    backend; the watcher holds without counting it against the progress deadline."""


@dataclass(frozen=True, slots=True)
class Histogram:
    """An explicit-bucket histogram: ``counts[i]`` is the number of values in bucket ``i``.

    Bucket ``i`` holds values in ``(bounds[i-1], bounds[i]]``; the last bucket is ``+Inf``.
    """

    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = (0,)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def count_above(self, bound: float) -> int:
        """Values above ``bound``: exact at one of ``bounds``; between two of them (a window on
        another replica's bucket layout) split linearly within its bucket, see :meth:`_onto`."""
        index = bisect.bisect_left(self.bounds, bound)
        if index < len(self.bounds) and self.bounds[index] == bound:
            return sum(self.counts[index + 1:])
        if not self.bounds:
            return self.total  # all in +Inf
        return self._onto(tuple(sorted({*self.bounds, bound}))).count_above(bound)

    def tail_bound(self, q: float, max_ratio: float = 1.0) -> float | None:
        """The bucket bound whose share of values above it is closest to ``1 - q``.

        Closest in ratio (``|log(share / (1 - q))|``), among bounds with some values on each
        side and a share below ``1 / max_ratio``: where ``share * max_ratio >= 1`` no green
        could ever have more than ``max_ratio`` times blue's share above it, so a check there
        could never fail. Without such a bound (all values in one bucket, or in one bucket
        and a sliver below it), the lowest bound with nothing above it: the upper bound of the
        highest occupied bucket. ``None`` when there is no data, or that bucket is ``+Inf``.
        """
        total = self.total
        if total == 0:
            return None
        target = 1.0 - q
        best: tuple[float, float] | None = None
        empty_above: float | None = None
        above = total
        for bound, count in zip(self.bounds, self.counts, strict=False):
            above -= count
            if above == 0:
                if above < total and empty_above is None:
                    empty_above = bound
            elif above < total and above * max_ratio < total:
                distance = abs(math.log((above / total) / target))
                if best is None or distance < best[0]:
                    best = (distance, bound)
        return empty_above if best is None else best[1]

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile by linear interpolation in its bucket (``histogram_quantile``)."""
        total = self.total
        if total == 0:
            return None
        rank = q * total
        running = 0
        lower = 0.0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            if count and running + count >= rank:
                return lower + (bound - lower) * (rank - running) / count
            running += count
            lower = bound
        return self.bounds[-1] if self.bounds else None

    def minus(self, earlier: Histogram) -> Histogram:
        """Counts since ``earlier``, each at least 0 (sources handle counter resets). Over
        different bucket layouts (a replica with another layout joined), on every bound either
        has (see :meth:`_onto`)."""
        mine, theirs = self._common(earlier)
        return Histogram(mine.bounds, tuple(max(0, a - b) for a, b in
                                            zip(mine.counts, theirs.counts, strict=True)))

    def plus(self, other: Histogram) -> Histogram:
        """The sum; over different bucket layouts, on every bound either has."""
        mine, theirs = self._common(other)
        return Histogram(mine.bounds, tuple(a + b for a, b in zip(mine.counts, theirs.counts,
                                                                   strict=True)))

    def _common(self, other: Histogram) -> tuple[Histogram, Histogram]:
        """Both histograms on one layout: as they are when they share it; an empty one takes
        the other's; else both on every bound either has (see :meth:`_onto`)."""
        if other.bounds == self.bounds and len(other.counts) == len(self.counts):
            return self, other
        if other.total == 0:
            return self, Histogram(self.bounds, (0,) * len(self.counts))
        if self.total == 0:
            return Histogram(other.bounds, (0,) * len(other.counts)), other
        bounds = tuple(sorted(set(self.bounds) | set(other.bounds)))
        return self._onto(bounds), other._onto(bounds)

    def _onto(self, bounds: tuple[float, ...]) -> Histogram:
        """This histogram on other bounds. The count at or below each bound is exact at one of
        its own bounds; between two of them it is interpolated linearly (as Prometheus's
        ``histogram_quantile`` assumes values spread in a bucket), and rounded; above its last
        finite bound nothing more is placed below ``+Inf``. The total is kept."""
        own = self.bounds
        below = list(itertools.accumulate(self.counts))  # below[i]: values <= own[i]
        counts: list[int] = []
        placed = 0
        for bound in bounds:
            i = bisect.bisect_left(own, bound)
            if i < len(own) and own[i] == bound:
                at = float(below[i])
            elif i >= len(own):
                at = float(below[len(own) - 1]) if own else 0.0
            else:
                lower, under = (own[i - 1], below[i - 1]) if i else (0.0, 0)
                at = under + (below[i] - under) * max(0.0, bound - lower) / (own[i] - lower)
            level = max(placed, round(at))
            counts.append(level - placed)
            placed = level
        counts.append(self.total - placed)
        return Histogram(bounds, tuple(counts))


@dataclass(frozen=True, slots=True)
class EnvStats:
    """One environment of one rollout: calls, failed calls, latency and time to first chunk."""

    requests: int = 0
    errors: int = 0
    errors_by_type: Mapping[str, int] = field(default_factory=dict)
    duration: Histogram = field(default_factory=Histogram)
    ttfc: Histogram = field(default_factory=Histogram)
    fallbacks: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def minus(self, earlier: EnvStats) -> EnvStats:
        """Counts since ``earlier``, each at least 0.

        Sources report cumulative counts that never go down (the local reader lives as long as
        the process; the Prometheus source adds up each series' increases itself, counting a
        reset as a restart from zero), so a negative difference cannot come from a source;
        it is clamped all the same.
        """
        return EnvStats(
            requests=max(0, self.requests - earlier.requests),
            errors=max(0, self.errors - earlier.errors),
            errors_by_type={k: v - earlier.errors_by_type.get(k, 0)
                            for k, v in self.errors_by_type.items()
                            if v - earlier.errors_by_type.get(k, 0) > 0},
            duration=self.duration.minus(earlier.duration),
            ttfc=self.ttfc.minus(earlier.ttfc),
            fallbacks=max(0, self.fallbacks - earlier.fallbacks),
        )

    def plus(self, other: EnvStats) -> EnvStats:
        by_type = dict(self.errors_by_type)
        for key, value in other.errors_by_type.items():
            by_type[key] = by_type.get(key, 0) + value
        return EnvStats(self.requests + other.requests, self.errors + other.errors, by_type,
                        self.duration.plus(other.duration), self.ttfc.plus(other.ttfc),
                        self.fallbacks + other.fallbacks)

    def p(self, q: float) -> float | None:
        """Latency quantile (seconds), interpolated in its bucket, for display."""
        return self.duration.quantile(q)

    def to_dict(self) -> dict[str, object]:
        p95 = self.duration.quantile(0.95)
        ttfc = self.ttfc.quantile(0.95)
        return {"requests": self.requests, "errors": self.errors,
                "errors_by_type": dict(self.errors_by_type), "fallbacks": self.fallbacks,
                "p95_s": None if p95 is None or math.isnan(p95) else round(p95, 6),
                "ttfc_p95_s": None if ttfc is None else round(ttfc, 6)}


EMPTY_ENV = EnvStats()


@dataclass(frozen=True, slots=True)
class RolloutStats:
    """Blue and green of one rollout."""

    blue: EnvStats = EMPTY_ENV
    green: EnvStats = EMPTY_ENV

    def minus(self, earlier: RolloutStats) -> RolloutStats:
        return RolloutStats(self.blue.minus(earlier.blue), self.green.minus(earlier.green))

    def plus(self, other: RolloutStats) -> RolloutStats:
        return RolloutStats(self.blue.plus(other.blue), self.green.plus(other.green))

    def env(self, name: str) -> EnvStats:
        return self.green if name == "green" else self.blue


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Cumulative stats per rollout at ``taken_at`` (seconds, the watcher's clock)."""

    taken_at: float
    rollouts: Mapping[str, RolloutStats]

    def get(self, rollout: str) -> RolloutStats:
        return self.rollouts.get(rollout, RolloutStats())


@runtime_checkable
class MetricSource(Protocol):
    """What the watcher needs from a metric backend."""

    def snapshot(self, now: float) -> Snapshot:
        """Cumulative counts per rollout and environment.

        Raises:
            SourceUnavailable: The source cannot answer now.
        """
        ...

    def close(self) -> None:
        """Release what the source holds (readers, connections)."""
        ...


def open_source(url: str) -> MetricSource:
    """The source a config's ``metrics_source`` names, other than ``local``.

    ``local`` is built by ``install()``, which knows the MeterProvider to read; here:
    ``http(s)://…`` → :class:`~openai_bluegreen.sources.prometheus.PrometheusSource`.
    """
    if url.startswith(("http://", "https://")):
        from .prometheus import PrometheusSource

        return PrometheusSource(url)
    raise SourceUnavailable(f"metrics_source {url!r} cannot be opened here (use 'local' inside "
                            "the app, or a Prometheus URL such as http://prometheus:9090)")
