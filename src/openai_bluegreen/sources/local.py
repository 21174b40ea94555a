"""The in-process metric source: this process's own OpenTelemetry metrics, through a reader.

:class:`LocalSource` is an OpenTelemetry ``MetricReader`` (cumulative temporality). Add it to
your ``MeterProvider(metric_readers=[..., LocalSource()])``, or let ``install()`` attach it to
the provider it records into. On each look it collects our instruments (scope
``openai_bluegreen``) and sums the points per rollout and environment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    MetricReader,
    MetricsData,
    NumberDataPoint,
)

from .. import _telemetry as T
from .. import _worker
from . import EnvStats, Histogram, RolloutStats, Snapshot, SourceUnavailable

__all__ = ["LocalSource"]

_DURATION = "gen_ai.client.operation.duration"
_TTFC = "gen_ai.client.operation.time_to_first_chunk"
_FALLBACKS = "bluegreen.fallbacks"


class _Acc:
    __slots__ = ("bounds", "by_type", "duration", "errors", "fallbacks", "requests", "ttfc",
                 "ttfc_bounds")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.by_type: dict[str, int] = {}
        self.bounds: tuple[float, ...] = ()
        self.duration: list[int] = [0]
        self.ttfc_bounds: tuple[float, ...] = ()
        self.ttfc: list[int] = [0]
        self.fallbacks = 0


def _add(bounds: tuple[float, ...], counts: list[int], point: HistogramDataPoint
         ) -> tuple[tuple[float, ...], list[int]]:
    point_bounds = tuple(point.explicit_bounds)
    if not bounds and sum(counts) == 0:
        return point_bounds, list(point.bucket_counts)
    if point_bounds != bounds:  # a View changed the buckets mid-run: keep the first layout
        return bounds, counts
    return bounds, [a + b for a, b in zip(counts, point.bucket_counts, strict=True)]


class LocalSource(MetricReader):
    """Reads this process's ``openai_bluegreen`` metrics for the watcher."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._latest: MetricsData | None = None
        # This process's counts begin about now: a watcher that takes over a step started
        # earlier cannot see its calls before (the progress deadline allows for it).
        self.counts_since = time.time()

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
                         **kwargs: Any) -> None:
        self._latest = metrics_data

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release; the provider owns the reader."""

    def after_fork(self) -> None:
        """In a forked child: the lock may have been copied held by a thread it does not have."""
        self._lock = threading.Lock()

    def snapshot(self, now: float) -> Snapshot:
        """Cumulative counts per rollout and environment since the reader was attached.

        Raises:
            SourceUnavailable: The reader is not attached to a MeterProvider yet.
        """
        # Calls that ended before this look are recorded first: the worker drains in bursts.
        _worker.flush()
        with self._lock:
            self._latest = None
            try:
                self.collect()
            except Exception as exc:  # the SDK raises when not registered with a provider
                raise SourceUnavailable(f"local metric reader cannot collect: {exc}") from exc
            data = self._latest
        if data is None:
            raise SourceUnavailable("local metric reader is not attached to a MeterProvider")
        return Snapshot(now, _summarise(data))


def _points(data: MetricsData) -> Iterable[tuple[str, Any]]:
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name != T.SCOPE:
                continue
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    yield metric.name, point


def _summarise(data: MetricsData) -> dict[str, RolloutStats]:
    accs: dict[tuple[str, str], _Acc] = {}
    for name, point in _points(data):
        attrs = point.attributes or {}
        rollout, env = attrs.get(T.ROLLOUT), attrs.get(T.ENVIRONMENT)
        if not isinstance(rollout, str) or env not in ("blue", "green"):
            continue
        acc = accs.get((rollout, env))
        if acc is None:
            acc = accs[(rollout, env)] = _Acc()
        if name == _DURATION and isinstance(point, HistogramDataPoint):
            acc.requests += point.count
            error = attrs.get(T.ERROR_TYPE)
            if error:
                acc.errors += point.count
                acc.by_type[str(error)] = acc.by_type.get(str(error), 0) + point.count
            else:  # latency is judged on calls that succeeded
                acc.bounds, acc.duration = _add(acc.bounds, acc.duration, point)
        elif name == _TTFC and isinstance(point, HistogramDataPoint):
            if not attrs.get(T.ERROR_TYPE):
                acc.ttfc_bounds, acc.ttfc = _add(acc.ttfc_bounds, acc.ttfc, point)
        elif name == _FALLBACKS and isinstance(point, NumberDataPoint):
            acc.fallbacks += int(point.value)
    out: dict[str, RolloutStats] = {}
    for (rollout, env), acc in accs.items():
        stats = EnvStats(acc.requests, acc.errors, acc.by_type,
                         Histogram(acc.bounds, tuple(acc.duration)),
                         Histogram(acc.ttfc_bounds, tuple(acc.ttfc)), acc.fallbacks)
        current = out.get(rollout, RolloutStats())
        out[rollout] = (RolloutStats(current.blue, stats) if env == "green"
                        else RolloutStats(stats, current.green))
    return out

