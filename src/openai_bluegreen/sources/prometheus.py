"""The Prometheus metric source: every replica's metrics, as a Prometheus server stores them.

:class:`PrometheusSource` asks a Prometheus server (HTTP API, ``/api/v1/query``) for the series
our instruments produce, summed across replicas, and returns the same :class:`Snapshot` as
:class:`~openai_bluegreen.sources.local.LocalSource`: cumulative counts per rollout and
environment since an origin (the first snapshot's time, or ``origin``).

Series read (one instant query of a range selector, evaluated at ``now``)::

    {__name__=~"gen_ai_client_operation_duration_seconds_(count|bucket)
                |gen_ai_client_operation_time_to_first_chunk_seconds_bucket
                |bluegreen_fallbacks_total",
     bluegreen_rollout!="", bluegreen_environment=~"blue|green",
     otel_scope_name=~"openai_bluegreen|", <extra_selector>}[<range>]

and, per rollout and environment, exactly as ``LocalSource`` does:

* ``requests``: ``..._duration_seconds_count`` of every ``error_type``;
* ``errors`` / ``errors_by_type``: the same with ``error_type != ""``;
* ``duration``: ``..._duration_seconds_bucket{error_type=""}`` (successful calls), cumulative
  ``le`` buckets turned into per-bucket counts, bounds from the finite ``le`` values;
* ``ttfc``: ``..._time_to_first_chunk_seconds_bucket{error_type=""}``;
* ``fallbacks``: ``bluegreen_fallbacks_total``.

Why raw samples rather than ``sum(increase(...[window]))``: ``increase()`` extrapolates, and it
never counts a series' first sample. OpenTelemetry creates a series at its first measurement, so
the first scrape of e.g. a new ``error_type`` already holds a non-zero value that
``increase()`` drops: a green error type appearing once would count 0 errors, the very signal
the watcher guards. This source instead keeps, per series (full label set), the last value it
saw and adds every rise between consecutive samples, exactly as ``increase()`` handles counter
resets (a value below the previous one means the replica restarted from 0, so the whole value
counts) but without extrapolation and counting a series born after the origin from 0. The
counts are then integers, exact as of the last scrape, and never go down from one snapshot to
the next. Each snapshot reads only the samples since the previous one (plus a margin for
scrapes stored late), in pieces of at most :data:`MAX_SPAN` seconds and :data:`MAX_PIECES`
queries (a longer catch-up, after an outage, goes on at the next snapshot, which holds the
watcher until then), so a query stays small however long the rollout runs; the first one also
looks :data:`LOOKBACK` seconds back from the origin to find each series' value there.

Born after the origin, or only just seen? The origin is fixed by the first query that succeeds,
on Prometheus's clock (the newest sample then), so an outage at the start or a skewed watcher
clock moves no calls across it. A series first seen after it counts from 0 only when its scrape
target (``job``, ``instance``) was scraped before it: this source saw the target earlier,
Prometheus has an earlier ``up`` sample for it, or its ``process_start_time_seconds`` is after
the origin. Otherwise (a Prometheus that just started without its data, a long-running target
just discovered) its first value is its baseline: a replica's whole lifetime is never counted,
at the price of a new replica's first scrape when none of that evidence exists (an OTLP push
straight to Prometheus has no ``up``).

Gaps: a series that stops being scraped for longer than :data:`FORGET_AFTER` (a replica whose
scrapes fail, or Prometheus itself down) keeps its last value for :data:`RETIRE_AFTER`; back
within it, it counts from that value as before (the rise, or the whole value after a restart).
Limits: past :data:`RETIRE_AFTER` it is folded into its group's total and forgotten (replicas
come and go: their series must not pile up); if it reappears with its old value, that value
counts again (a restarted replica starts from 0, which is exact). A histogram's buckets
restart together: when its total (``_count`` or the ``+Inf`` bucket) goes down, every bucket of
that label set counts from 0, even one that came back at or above its old value. A replica
restarted and scraped again only after its total exceeded the old one looks like no restart (the
same limit as ``increase()``).

Names: verified on a real scrape (``opentelemetry-exporter-prometheus`` ``PrometheusMetricReader``
+ ``prometheus_client``, scraped by Prometheus 2.42; see ``tests/test_prometheus_source.py``):
dots become underscores, the unit ``s`` adds ``_seconds``, counters get ``_total`` (the unit
``{call}`` adds nothing), every series carries ``otel_scope_name="openai_bluegreen"`` (plus
``otel_scope_version``, ``otel_scope_schema_url``), and a metric's series all carry the union of
its label names, so successful calls have ``error_type=""`` (PromQL treats an empty label as a
missing one, so ``error_type=""`` matches both). Assumed, not tested here: the OTLP →
OpenTelemetry Collector → Prometheus path (``prometheus`` or ``prometheusremotewrite``
exporter, or Prometheus's own OTLP receiver with its default underscore translation) produces
the same names and labels, possibly without ``otel_scope_name`` (hence ``=~"openai_bluegreen|"``)
and with different ``job``/``instance`` labels (never grouped on). UTF-8 names with dots
(Prometheus 3 with a no-escaping translation strategy) are not supported.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .._config import mask_url
from . import CatchingUp, EnvStats, Histogram, RolloutStats, Snapshot, SourceUnavailable

__all__ = ["FORGET_AFTER", "LOOKBACK", "MARGIN", "MAX_PIECES", "MAX_SPAN", "RETIRE_AFTER",
           "PrometheusSource"]

DURATION_COUNT = "gen_ai_client_operation_duration_seconds_count"
DURATION_BUCKET = "gen_ai_client_operation_duration_seconds_bucket"
TTFC_BUCKET = "gen_ai_client_operation_time_to_first_chunk_seconds_bucket"
FALLBACKS = "bluegreen_fallbacks_total"
ROLLOUT = "bluegreen_rollout"
ENVIRONMENT = "bluegreen_environment"
ERROR_TYPE = "error_type"
SCOPE_LABEL = "otel_scope_name"
SCOPE = "openai_bluegreen"

LOOKBACK = 300.0
"""Seconds before the origin the first query looks for each series' value at the origin
(Prometheus's default staleness period)."""
MARGIN = 60.0
"""Seconds before the previous snapshot later queries start at, for samples stored late (a
scrape's samples are stamped with its start and stored when it ends)."""
FORGET_AFTER = 900.0
"""Seconds without a sample after which a series is dormant: no longer expected, its last value
kept in case it comes back."""
RETIRE_AFTER = 6 * 3600.0
"""Seconds without a sample after which a series' count is kept only in its group's total."""
MAX_SPAN = 600.0
"""Seconds of samples one query asks for at most (a long catch-up is read in pieces)."""
MAX_PIECES = 6
"""Queries one snapshot makes at most; a longer catch-up goes on at the next snapshot."""
REBUILD_PIECES = 48
"""The same for a source rewound to rebuild a rollout's history (one step of up to 8 hours is
read in one snapshot)."""

_NAMES = f"{DURATION_COUNT}|{DURATION_BUCKET}|{TTFC_BUCKET}|{FALLBACKS}"
_CHUNK = 65_536

_Group = tuple[str, str, str, str, float]  # metric, rollout, environment, error type, le


@dataclass(slots=True)
class _Series:
    group: _Group
    last_t: float
    last_v: float
    total: float
    family: tuple[str, ...] = ()  # its histogram's label set (see _family): one bucket layout


class PrometheusSource:
    """Per-rollout, per-environment counts from a Prometheus server, summed across replicas.

    Args:
        url: The Prometheus server, e.g. ``http://prometheus:9090`` (a path prefix and
            ``user:password@`` basic auth are allowed; the password is masked in messages).
        timeout: Seconds one query may take in all (connect, answer, body).
        origin: Unix time the counts start from; default: the first snapshot's ``now``.
        extra_selector: Label matchers added to every series selector, e.g.
            ``'job="checkout", namespace="prod"'``, to read one application's replicas.
    """

    def __init__(self, url: str, *, timeout: float = 2.0, origin: float | None = None,
                 extra_selector: str = "", max_pieces: int = MAX_PIECES) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Prometheus URL must start with http:// or https:// "
                             f"(got {mask_url(url)!r})")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be > 0 (got {timeout!r})")
        self.url = url.rstrip("/")
        self.masked_url = mask_url(self.url)
        self.timeout = timeout
        self.origin = origin
        self.max_pieces = max_pieces
        extra = extra_selector.strip()
        if extra.startswith("{") and extra.endswith("}"):
            extra = extra[1:-1].strip()
        self.extra_selector = extra.rstrip(",").strip()
        self._endpoint, self._auth = _split_auth(self.url)
        self._secrets = _secrets(self.url, self._auth)
        self._lock = threading.Lock()
        self._series: dict[tuple[tuple[str, str], ...], _Series] = {}
        self._dormant: dict[tuple[tuple[str, str], ...], _Series] = {}  # see FORGET_AFTER
        self._retired: dict[tuple[_Group, tuple[str, ...]], float] = {}
        self._last_now: float | None = None
        # Per scrape target (job, instance): the time of its first sample this source saw, and
        # whether Prometheus was scraping it before that (its series are then new, not old).
        self._targets: dict[tuple[str, str], tuple[float, bool]] = {}
        self._newest = -math.inf  # the newest sample time seen (Prometheus's clock)

    @property
    def counts_since(self) -> float | None:
        """When the counts begin (the origin; ``None`` before the first answer)."""
        return self.origin

    def reset(self) -> None:
        """Forget every count and the origin: the next snapshot starts afresh (a watcher
        taking over discards its windows anyway, and must not first read the samples of the
        hours it was not leading)."""
        with self._lock:
            self.origin = None
            self._series.clear()
            self._dormant.clear()
            self._retired.clear()
            self._targets.clear()
            self._last_now = None
            self._newest = -math.inf

    def rewind(self, origin: float) -> PrometheusSource:
        """A fresh source on the same Prometheus whose counts start at ``origin`` (the past).

        The watcher uses it to rebuild a rollout's step windows from the step start times in
        the rollout's history when it did not see them itself (it took over the lease, or an
        operator resumed the rollout): snapshot it at those times, in order, then keep going.
        """
        return PrometheusSource(self.url, timeout=self.timeout, origin=origin,
                                extra_selector=self.extra_selector,
                                max_pieces=REBUILD_PIECES)

    # -- the protocol ------------------------------------------------------------------
    def snapshot(self, now: float) -> Snapshot:
        """Cumulative counts per rollout and environment since the origin, as of ``now``.

        Raises:
            SourceUnavailable: Prometheus is unreachable, answers with an error or with
                something that is not a Prometheus API answer.
        """
        with self._lock:
            # The origin is fixed by the first query that succeeds, not the first attempt: a
            # Prometheus down for longer than LOOKBACK at the start would otherwise leave no
            # baseline, and every series' whole lifetime would count.
            origin = self.origin if self.origin is not None else now
            last = self._last_now
            if last is None:
                start = origin - LOOKBACK
            else:
                # From where the samples read so far end, on either clock: a watcher clock
                # ahead of Prometheus's must not leave the newest samples behind the next
                # window. (No sample for FORGET_AFTER: none are coming; the watcher's end.)
                newest = self._newest
                start = (min(last, newest) if last - newest < FORGET_AFTER else last) - MARGIN
            # Catching up (a long outage, a rebuild from history) in bounded pieces: one query
            # per MAX_SPAN seconds, at most MAX_PIECES per snapshot; what is left is read by
            # the next snapshot, which holds the watcher until then.
            for _ in range(self.max_pieces):
                until = min(now, start + MAX_SPAN)
                result = self._query(self.selector(max(1, math.ceil(until - start))), until)
                if self.origin is None:
                    # As Prometheus's clock has it: the newest sample at the first answer
                    # (the watcher's clock may be off); the watcher's time if there is none.
                    seen = max((t for _, values in _items(result)
                                for t, _ in _samples(values)), default=None)
                    self.origin = now if seen is None else min(seen, now)
                    origin = self.origin
                self._absorb(result, origin)
                self._last_now = until if self._last_now is None else max(self._last_now,
                                                                            until)
                if until >= now:
                    break
                start = until - MARGIN
            else:
                raise CatchingUp(
                    f"Prometheus at {self.masked_url}: catching up, "
                    f"{now - (self._last_now or now):.0f}s of samples still to read")
            self._forget()
            return Snapshot(now, self._summarise())

    def close(self) -> None:
        """Nothing to release: every query opens and closes its own connection."""

    # -- queries -----------------------------------------------------------------------
    def selector(self, seconds: int) -> str:
        """The PromQL range selector of one snapshot, ``seconds`` long."""
        matchers = [f'__name__=~"{_NAMES}"', f'{ROLLOUT}!=""',
                    f'{ENVIRONMENT}=~"blue|green"', f'{SCOPE_LABEL}=~"{SCOPE}|"']
        if self.extra_selector:
            matchers.append(self.extra_selector)
        return "{" + ", ".join(matchers) + "}" + f"[{seconds}s]"

    def _query(self, promql: str, at: float) -> list[Any]:
        params = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}",
                                         "timeout": f"{self.timeout:g}s"})
        request = urllib.request.Request(f"{self._endpoint}/api/v1/query?{params}",
                                         headers={"Accept": "application/json"})
        if self._auth is not None:
            request.add_header("Authorization", self._auth)
        where = f"Prometheus at {self.masked_url}"
        deadline = time.monotonic() + self.timeout
        watchdog = _Watchdog(self.timeout)
        try:
            try:
                with watchdog, _OPENER.open(request, timeout=self.timeout) as answer:
                    body = _read(answer, deadline)
                if watchdog.fired:  # cut mid-body: what was read is not the answer
                    raise TimeoutError("cut at the deadline")
            except Exception as exc:
                if watchdog.fired:  # e.g. the status line or headers trickled past it
                    raise TimeoutError("cut at the deadline") from exc
                raise
        except urllib.error.HTTPError as exc:
            raise SourceUnavailable(f"{where} answered HTTP {exc.code}"
                                    f"{self._scrub(_api_error(exc))}") from exc
        except urllib.error.URLError as exc:
            raise SourceUnavailable(f"{where} is unreachable: {exc.reason}") from exc
        except TimeoutError as exc:
            raise SourceUnavailable(f"{where} did not answer within {self.timeout:g}s"
                                    ) from exc
        except OSError as exc:
            raise SourceUnavailable(f"{where} failed: {exc}") from exc
        except http.client.HTTPException as exc:  # a broken status line or body
            raise SourceUnavailable(f"{where} answered badly: {exc!r}") from exc
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise SourceUnavailable(f"{where} answered with something that is not JSON "
                                    f"({self._scrub(body)[:60]!r})") from exc
        if not isinstance(doc, dict) or doc.get("status") != "success":
            error = doc.get("error") if isinstance(doc, dict) else None
            raise SourceUnavailable(f"{where} refused the query: "
                                    f"{self._scrub(str(error or 'no status'))}")
        data = doc.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "matrix" \
                or not isinstance(data.get("result"), list):
            raise SourceUnavailable(f"{where} answered without a matrix result")
        result: list[Any] = data["result"]
        return result

    def _scrub(self, text: Any) -> Any:
        """``text`` (str or bytes) with this source's credentials masked: a proxy in front of
        Prometheus may echo the ``Authorization`` header (or the password) in its answer, and
        messages built from answers reach logs, ``status()`` and the decision telemetry."""
        for secret in self._secrets:
            if isinstance(text, bytes):
                text = text.replace(secret.encode(), b"***")
            else:
                text = text.replace(secret, "***")
        return text

    # -- accumulation ------------------------------------------------------------------
    def _absorb(self, result: Iterable[Any], origin: float) -> None:
        items = [(labels, values, group)
                 for labels, values in _items(result)
                 if (group := _group_of(labels)) is not None]
        resets = self._histogram_resets(items)
        new: dict[tuple[str, str], float] = {}  # targets seen for the first time: when
        for labels, values, _ in items:
            target = _target(labels)
            for t, _v in _samples(values):
                self._newest = max(self._newest, t)
                if target not in self._targets:
                    new[target] = min(t, new.get(target, math.inf))
        for target, first in new.items():
            self._targets[target] = (first, first > origin and self._was_new(target, first,
                                                                              origin))
        for labels, values, group in items:
            key = _key(labels)
            series = self._series.get(key)
            if series is None and key in self._dormant:  # back after a gap: as before it
                series = self._series[key] = self._dormant.pop(key)
            family = resets.get(_family(labels))
            since, new_target = self._targets[_target(labels)]
            for t, v in _samples(values):
                if series is None:
                    # A value at or before the origin is the baseline. A series first seen
                    # after it was born since (a new error type, a restarted replica) and
                    # counts from 0, if its target was already scraped before it (this
                    # source saw it earlier, or Prometheus has an earlier ``up`` sample, or
                    # the process started after the origin). Otherwise it may be old (a
                    # Prometheus that just started, a target just discovered): its first
                    # value is the baseline, as ``increase()`` would take it.
                    born = origin < t and (since < t or new_target)
                    series = self._series[key] = _Series(group, t, v, v if born else 0.0,
                                                         _family(labels))
                    continue
                if t <= series.last_t:
                    continue
                if t <= origin:  # stored late, still before the origin: a later baseline
                    series.last_t, series.last_v = t, v
                    continue
                restarted = v < series.last_v or (
                    family is not None and any(series.last_t < r <= t for r in family))
                series.total += v if restarted else v - series.last_v
                series.last_t, series.last_v = t, v

    def _was_new(self, target: tuple[str, str], first: float, origin: float) -> bool:
        """Whether a target first seen at ``first`` (after the origin) started after the origin:
        Prometheus scraped it successfully before (an ``up == 1`` sample before ``first``: it
        had none of our series yet), or its process started after the origin. No evidence (a
        query that fails, a target without those series): not new."""
        job, instance = (_quote(v) for v in target)
        matchers = f'job="{job}", instance="{instance}"'
        try:
            earlier = self._query(f"up{{{matchers}}}[{LOOKBACK:g}s]", first - 0.001)
            # A successful scrape before (up == 1), not a failing one: a live replica whose
            # scrapes failed across the origin is not new.
            if any(v == 1.0 for _, values in _items(earlier) for _, v in _samples(values)):
                return True
            started = self._query(f"process_start_time_seconds{{{matchers}}}[{LOOKBACK:g}s]",
                                  first)
        except SourceUnavailable:
            return False
        # Linux derives a process's start from the boot time in whole seconds: allow for it.
        return any(v > origin - 2.0 for _, values in _items(started)
                   for _, v in _samples(values))

    def _histogram_resets(self, items: list[tuple[dict[str, Any], list[Any], _Group]]
                          ) -> dict[tuple[str, ...], list[float]]:
        """When each histogram (one label set, all its buckets) restarted from 0, as its total
        (``_count``, or the ``+Inf`` bucket) shows by going down. A restarted replica's small
        buckets may come back at or above their old values, which alone would hide the restart
        (``expected (2, 11) got (1, 12)``); they restart with their total."""
        resets: dict[tuple[str, ...], list[float]] = {}
        for labels, values, group in items:
            metric, le = group[0], group[4]
            if not (metric == DURATION_COUNT or (metric.endswith("_bucket") and le == math.inf)):
                continue
            key = _key(labels)
            series = self._series.get(key) or self._dormant.get(key)  # back after a gap too
            last_t, last_v = (series.last_t, series.last_v) if series else (-math.inf, None)
            for t, v in _samples(values):
                if t <= last_t:
                    continue
                if last_v is not None and v < last_v:
                    resets.setdefault(_family(labels), []).append(t)
                last_t, last_v = t, v
        return resets

    def _forget(self) -> None:
        # Measured on Prometheus's clock (the newest sample), not the watcher's: a skewed
        # clock must not retire every series and count it again.
        now = self._newest
        for key in [k for k, s in self._series.items() if now - s.last_t > FORGET_AFTER]:
            self._dormant[key] = self._series.pop(key)
        for key in [k for k, s in self._dormant.items() if now - s.last_t > RETIRE_AFTER]:
            series = self._dormant.pop(key)
            where = (series.group, series.family)
            self._retired[where] = self._retired.get(where, 0.0) + series.total

    def _summarise(self) -> dict[str, RolloutStats]:
        # One part per histogram label set: each has one bucket layout, and replicas with
        # different layouts are combined per bucket layout, on the bounds they share.
        parts: dict[tuple[str, ...], dict[_Group, float]] = {}
        for (group, family), total in self._retired.items():
            part = parts.setdefault(family, {})
            part[group] = part.get(group, 0.0) + total
        for series in (*self._series.values(), *self._dormant.values()):
            part = parts.setdefault(series.family, {})
            part[series.group] = part.get(series.group, 0.0) + series.total
        return summarise(*parts.values())


def summarise(*parts: Mapping[_Group, float]) -> dict[str, RolloutStats]:
    """Stats per rollout from counts per (metric, rollout, environment, error type, le).

    Each part's buckets share one layout (one replica's histogram, or replicas with the same
    bounds): cumulative ``le`` counts are turned into buckets per part, then the parts' buckets
    are added on the bounds they have in common. Summed across layouts first, a bound only
    some replicas have would miss the others' calls, and they would reappear at ``+Inf``."""
    envs: dict[tuple[str, str], dict[str, Any]] = {}
    for totals in parts:
        cumulative: dict[tuple[str, str, str], dict[float, int]] = {}
        for (metric, rollout, env, error, le), value in totals.items():
            acc = envs.setdefault((rollout, env), {"requests": 0, "by_type": {},
                                                   "duration": Histogram(), "ttfc": Histogram(),
                                                   "fallbacks": 0})
            count = round(value)
            if metric == DURATION_COUNT:
                acc["requests"] += count
                if error:
                    acc["by_type"][error] = acc["by_type"].get(error, 0) + count
            elif metric in (DURATION_BUCKET, TTFC_BUCKET) and not error:
                which = "duration" if metric == DURATION_BUCKET else "ttfc"
                buckets = cumulative.setdefault((rollout, env, which), {})
                buckets[le] = buckets.get(le, 0) + count
            elif metric == FALLBACKS:
                acc["fallbacks"] += count
        for (rollout, env, which), buckets in cumulative.items():
            acc = envs[(rollout, env)]
            acc[which] = acc[which].plus(_histogram(buckets))
    out: dict[str, RolloutStats] = {}
    for (rollout, env), acc in sorted(envs.items()):
        by_type = {k: v for k, v in acc["by_type"].items() if v > 0}
        stats = EnvStats(acc["requests"], sum(by_type.values()), by_type,
                         acc["duration"], acc["ttfc"], acc["fallbacks"])
        current = out.get(rollout, RolloutStats())
        out[rollout] = (RolloutStats(current.blue, stats) if env == "green"
                        else RolloutStats(stats, current.green))
    return out


def _histogram(cumulative: Mapping[float, int]) -> Histogram:
    """Per-bucket counts from cumulative ``le`` counts (bounds: the finite ``le`` values)."""
    if not cumulative:
        return Histogram()
    bounds = tuple(sorted(le for le in cumulative if math.isfinite(le)))
    running = 0
    counts: list[int] = []
    for le in (*bounds, math.inf):
        level = max(running, cumulative.get(le, running))  # never below a lower bucket
        counts.append(level - running)
        running = level
    return Histogram(bounds, tuple(counts))


def _items(result: Iterable[Any]) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    for item in result:
        if isinstance(item, dict):
            labels, values = item.get("metric"), item.get("values")
            if isinstance(labels, dict) and isinstance(values, list):
                yield labels, values


def _samples(values: list[Any]) -> Iterator[tuple[float, float]]:
    for sample in values:
        try:
            t, v = float(sample[0]), float(sample[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(v):
            yield t, v


def _quote(value: str) -> str:
    """A PromQL string literal's content."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _target(labels: Mapping[str, Any]) -> tuple[str, str]:
    """The scrape target a series came from."""
    return str(labels.get("job", "")), str(labels.get("instance", ""))


def _key(labels: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


def _family(labels: Mapping[str, Any]) -> tuple[str, ...]:
    """One histogram's label set: its buckets and ``_count`` share it (name without suffix)."""
    name = str(labels.get("__name__", ""))
    base = name.removesuffix("_bucket").removesuffix("_count")
    return (base, *sorted(f"{k}={v}" for k, v in labels.items() if k not in ("__name__", "le")))


def _group_of(labels: Mapping[str, Any]) -> _Group | None:
    metric, rollout = labels.get("__name__"), labels.get(ROLLOUT)
    env = labels.get(ENVIRONMENT)
    if not isinstance(metric, str) or not isinstance(rollout, str) or not rollout \
            or env not in ("blue", "green"):
        return None
    le = 0.0  # only buckets have one
    if metric.endswith("_bucket"):
        try:
            le = float(labels.get("le", ""))  # "1", "1.0" and "+Inf" alike
        except ValueError:
            return None
    return metric, rollout, str(env), str(labels.get(ERROR_TYPE, "") or ""), le


def _split_auth(url: str) -> tuple[str, str | None]:
    """The URL without ``user:password@``, and the Basic ``Authorization`` header for it.

    The user info is in the authority, which ends at the first ``/``, ``?`` or ``#`` (RFC
    3986). An ``@`` after it is refused rather than guessed at: either a password with one of
    those characters unescaped (it would be taken for the host, and sent to it), or an ``@``
    in the path, which a Prometheus URL never needs.
    """
    scheme, sep, rest = url.partition("://")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in tail:
        raise ValueError(
            f"Prometheus URL {mask_url(url)!r} has an '@' after its host: percent-encode "
            "'/', '?', '#' and '@' in a user name or password (%2F, %3F, %23, %40)")
    if "@" not in authority:
        return url, None
    userinfo, _, hostport = authority.rpartition("@")
    user, _, password = userinfo.partition(":")
    user, password = urllib.parse.unquote(user), urllib.parse.unquote(password)
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"{scheme}{sep}{hostport}{tail}", f"Basic {token}"


def _secrets(url: str, auth: str | None) -> tuple[str, ...]:
    """What must not appear in a message about this source: the Basic token sent, and the
    password as written in the URL and decoded (longest first, so none is left half-masked)."""
    if auth is None:
        return ()
    userinfo = url.partition("://")[2].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    found = {auth.removeprefix("Basic "), password, urllib.parse.unquote(password)}
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


class _Watchdog:
    """Cuts the connections a query opened (this thread's) when ``seconds`` have passed, so a
    server that trickles its status line or headers (each receive within the socket timeout)
    cannot hold a look past its deadline either; the body has its own (``_read``)."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        _watched.sockets = self._sockets
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        _watched.sockets = None

    def _cut(self) -> None:
        self.fired = True
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


_watched = threading.local()  # .sockets: the running query's list, where connect() adds


def _watch(sock: socket.socket | None) -> None:
    sockets = getattr(_watched, "sockets", None)
    if sockets is not None and sock is not None:
        sockets.append(sock)


class _WatchedHTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _watch(self.sock)


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _watch(self.sock)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_WatchedHTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        # As the base class does (its keyword arguments differ between Python versions).
        options: dict[str, Any] = {"context": getattr(self, "_context", None)}
        if hasattr(self, "_check_hostname"):
            options["check_hostname"] = self._check_hostname
        return self.do_open(_WatchedHTTPSConnection, req, **options)


_OPENER = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler)


def _read(answer: Any, deadline: float) -> bytes:
    """The whole body by ``deadline``: a server that trickles it (each receive well within the
    socket timeout) is given up on at the deadline, not after it sent everything.

    ``read1`` returns what one receive brings (``read`` would wait for a whole chunk or the
    end), and before each receive the socket waits at most the time left.
    """
    sock = _socket_of(answer)
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer took too long")
        if sock is not None:
            sock.settimeout(left)
        chunk = answer.read1(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _socket_of(answer: Any) -> socket.socket | None:
    """The socket under an ``http.client`` answer, when it can be found (CPython keeps it in
    ``answer.fp.raw._sock``); ``None`` leaves the per-receive timeout as it was."""
    sock = getattr(getattr(getattr(answer, "fp", None), "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _api_error(exc: urllib.error.HTTPError) -> str:
    """``: <error>`` from a Prometheus API error body, when it has one."""
    try:
        doc = json.loads(exc.read(4096) or b"null")
    except (OSError, ValueError):
        return ""
    finally:
        exc.close()
    if isinstance(doc, dict) and doc.get("error"):
        return f": {doc['error']}"
    return ""
