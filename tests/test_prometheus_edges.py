"""The Prometheus metric path at its edges: replicas with different bucket layouts keep every call
in its bucket, a series back after a long gap is not counted twice, and status reads a window of
hours at once."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from openai_bluegreen._config import Rollout
from openai_bluegreen._rollout import Action, initial_state, transition
from openai_bluegreen._telemetry import DURATION_BUCKETS
from openai_bluegreen.policy import Evidence, StepWindow, decide
from openai_bluegreen.sources.prometheus import DURATION_BUCKET, DURATION_COUNT, PrometheusSource

from .services import EMPTY_MATRIX, HttpStub, prometheus_server

ORIGIN = 100.0


def _series(name: str, instance: str, env: str, value: int, le: str | None = None
            ) -> dict[str, Any]:
    labels = {"__name__": name, "bluegreen_rollout": "r", "bluegreen_environment": env,
              "otel_scope_name": "openai_bluegreen", "job": "app", "instance": instance}
    if le is not None:
        labels["le"] = le
    # 0 before the origin (the baseline), `value` after it.
    return {"metric": labels, "values": [[90.0, "0"], [110.0, str(value)]]}


def _replica(instance: str, env: str, bounds: tuple[float, ...], calls: int,
             seconds: float) -> list[dict[str, Any]]:
    """One replica's duration histogram: `calls` successful calls of `seconds` each."""
    out = [_series(DURATION_BUCKET, instance, env, calls if seconds <= b else 0, f"{b:g}")
           for b in bounds]
    out.append(_series(DURATION_BUCKET, instance, env, calls, "+Inf"))
    out.append(_series(DURATION_COUNT, instance, env, calls))
    return out


# Replica a: the library's semconv layout. Replica b: another layout (a metric View, or an
# SDK that ignores the bucket advisory) -- the case Histogram.plus/minus were made for.
OTHER_LAYOUT = (0.5, 1.0, 2.5, 5.0, 10.0)


def _snapshot() -> Any:
    source = PrometheusSource("http://127.0.0.1:9")
    result: list[dict[str, Any]] = []
    for env in ("blue", "green"):
        result += _replica("a:1", env, tuple(DURATION_BUCKETS), 100, 0.7)
        result += _replica("b:1", env, OTHER_LAYOUT, 100, 0.7)
    source._absorb(result, origin=ORIGIN)
    return source._summarise()["r"]


def test_replicas_with_different_bucket_layouts_keep_every_call_in_its_bucket() -> None:
    # 200 green calls, every one of them 0.7 s.
    green = _snapshot().green
    assert green.requests == 200 and green.duration.total == 200
    # No call took longer than 1.28 s (a bound of both layouts... nearly): none may be
    # reported above 10 s, and the p95 cannot be beyond a couple of seconds.
    above = sum(c for b, c in zip((*green.duration.bounds, math.inf), green.duration.counts,
                                  strict=True) if b > 10.0)
    assert above == 0, (green.duration.bounds, green.duration.counts)
    p95 = green.duration.quantile(0.95)
    assert p95 is not None and p95 <= 1.28, p95


def test_a_healthy_green_on_mixed_layouts_is_not_rolled_back_by_a_latency_guardrail() -> None:
    rollout = Rollout.model_validate({
        "name": "r", "match": {"model": "m"}, "blue": {"model": "m"}, "green": {"model": "g"},
        "schedule": {"steps": [50, 100], "min_step_duration": 60, "min_requests": 100},
        "analysis": {"alpha": 0.01, "checks": [
            {"signal": "latency", "quantile": 0.95, "max": 10}]}})
    stats = _snapshot()
    state = transition(rollout, initial_state(rollout), Action.START, 0.0, actor="t",
                       reason="t")
    decision = decide(rollout, state, Evidence((StepWindow(0, 50.0, stats),)), now=120.0)
    # Every call took 0.7 s, far under the 10 s guardrail.
    assert decision.action.value != "rollback", (decision.reasons, decision.checks)


# -- the same with a real Prometheus scraping two replicas ---------------------------------




class _Exposition(HttpStub):
    """A /metrics endpoint serving one replica's duration histogram (text format)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.calls = bounds, 0
        super().__init__(lambda: ("text/plain; version=0.0.4", self.text().encode()))

    def text(self) -> str:
        name = "gen_ai_client_operation_duration_seconds"
        lines = [f"# TYPE {name} histogram"]
        for env in ("blue", "green"):
            labels = (f'bluegreen_rollout="r",bluegreen_environment="{env}",'
                      f'otel_scope_name="openai_bluegreen",error_type=""')
            for b in self.bounds:  # every call took 0.7 s
                lines.append(f'{name}_bucket{{{labels},le="{b:g}"}} '
                             f'{self.calls if b >= 0.7 else 0}')
            lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.calls}')
            lines.append(f"{name}_count{{{labels}}} {self.calls}")
            lines.append(f"{name}_sum{{{labels}}} {0.7 * self.calls}")
        return "\n".join(lines) + "\n"



def _scraped(url: str, job_targets: int) -> bool:
    """Whether Prometheus holds a sample of our duration count from ``job_targets`` targets."""
    query = urllib.parse.urlencode({"query": f"count({DURATION_COUNT})"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=2) as answer:
        result = json.loads(answer.read())["data"]["result"]
    # Two environments per target.
    return bool(result) and int(float(result[0]["value"][1])) >= 2 * job_targets


def test_real_prometheus_two_layouts_keep_healthy_calls_in_their_buckets(tmp_path: Path
                                                                           ) -> None:
    a, b = _Exposition(tuple(DURATION_BUCKETS)), _Exposition(OTHER_LAYOUT)
    try:
        with prometheus_server(tmp_path, [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]) as prom:
            deadline = time.monotonic() + 20
            while not _scraped(prom.url, 2):  # the origin once both replicas were scraped
                assert time.monotonic() < deadline, "Prometheus did not scrape both replicas"
                time.sleep(0.2)
            source = PrometheusSource(prom.url)
            source.snapshot(time.time())
            a.calls = b.calls = 100
            while True:
                green = source.snapshot(time.time()).get("r").green
                if green.requests == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert green.requests == 200
            # Every one of the 200 calls took 0.7 s.
            assert green.duration.count_above(10.24) == 0, green.duration
            assert (green.duration.quantile(0.95) or 0) <= 1.28, green.duration
    finally:
        a.close()
        b.close()


# -- `openai-bluegreen status --window 3600` ------------------------------------------------



def test_status_window_of_an_hour_shows_metrics_instead_of_catching_up() -> None:
    from openai_bluegreen._cli_control import _metrics

    prom = HttpStub(EMPTY_MATRIX)
    try:
        config = SimpleNamespace(metrics_source=prom.url)
        assert _metrics(config, 300.0) == ({}, None)  # the default window works
        # --window 3600 (an hour): the one-shot source reads window + LOOKBACK seconds in
        # pieces of 600 s; it used to stop after 6 and report "catching up".
        _metrics_read, problem = _metrics(config, 3600.0)
        assert problem is None, problem
        _metrics_read, problem = _metrics(config, 6 * 3600.0)  # the longest --window allowed
        assert problem is None, problem
    finally:
        prom.close()


# -- a replica whose scrapes fail for 16 minutes, then succeed again (no restart) ----------

def _count(instance: str, env: str, samples: list[tuple[float, int]]) -> dict[str, Any]:
    labels = {"__name__": DURATION_COUNT, "bluegreen_rollout": "r", "bluegreen_environment": env,
              "otel_scope_name": "openai_bluegreen", "job": "app", "instance": instance}
    return {"metric": labels, "values": [[t, str(v)] for t, v in samples]}


def test_a_replica_back_from_a_long_scrape_gap_is_not_counted_twice() -> None:
    source = PrometheusSource("http://127.0.0.1:9")
    # Replica a served 5000 green calls before the origin (100) and 50 after it; then its
    # scrapes fail for 16 minutes while replica b keeps being scraped.
    source._absorb([_count("a:1", "green", [(90, 5000), (110, 5050)]),
                    _count("b:1", "green", [(90, 0), (110, 10), (1100, 20)])], origin=ORIGIN)
    source._forget()
    # a is scraped again, not restarted: 2 more calls (5052).
    source._absorb([_count("a:1", "green", [(1200, 5052)]),
                    _count("b:1", "green", [(1200, 21)])], origin=ORIGIN)
    source._forget()
    green = source._summarise()["r"].green
    # Since the origin: a 52 calls, b 21.
    assert green.requests == 73, green.requests


def test_after_a_prometheus_outage_a_replica_scraped_a_few_seconds_later_is_not_counted_twice(
        ) -> None:
    """Prometheus is down 20 minutes (a crash, an upgrade): no samples for anyone. It comes back
    and scrapes replica a at 1320 and replica b at 1327 (their usual 7 s offset). The watcher's
    look at 1325 sees a's fresh sample, and b's last one 20 minutes old, and forgets b; b's
    next sample then looks like a new series and its whole lifetime counts."""
    source = PrometheusSource("http://127.0.0.1:9")
    # Look 1 (origin 100): both replicas, 15 s scrapes, a at :00/:15, b at :07/:22.
    source._absorb([_count("a:1", "green", [(90, 1000), (105, 1010)]),
                    _count("b:1", "green", [(97, 2000), (112, 2010)])], origin=ORIGIN)
    source._forget()
    # Prometheus down from 115 to 1320. Look at 1325: only a has been scraped again.
    source._absorb([_count("a:1", "green", [(1320, 1020)])], origin=ORIGIN)
    source._forget()
    # Look at 1355: both scraped normally again.
    source._absorb([_count("a:1", "green", [(1320, 1020), (1335, 1021), (1350, 1022)]),
                    _count("b:1", "green", [(1327, 2012), (1342, 2013)])], origin=ORIGIN)
    source._forget()
    green = source._summarise()["r"].green
    # Since the origin: a 1022 - 1000 = 22 calls, b 2013 - 2000 = 13.
    assert green.requests == 35, green.requests


def test_a_histogram_restarted_during_a_gap_restarts_all_its_buckets() -> None:
    """081a09f keeps a series dormant past FORGET_AFTER and takes it back from its last value.
    _histogram_resets still looks only in _series for the total's last value, so a replica
    restarted during the gap (its _count back at 16 after 30) is not seen to restart by its
    buckets: its 1 s bucket, back at 16 after 15, counts 1 new call instead of 16."""
    from openai_bluegreen.sources.prometheus import (
        DURATION_BUCKET,
        DURATION_COUNT,
        ENVIRONMENT,
        ROLLOUT,
        PrometheusSource,
    )

    source = PrometheusSource("http://127.0.0.1:9", origin=100.0)

    def series(instance: str, t: float, le1: float, total: float) -> list[dict[str, Any]]:
        base = {"job": "app", "instance": instance, ROLLOUT: "chat", ENVIRONMENT: "green"}
        return [
            {"metric": {**base, "__name__": DURATION_BUCKET, "le": "1"}, "values": [[t, str(le1)]]},
            {"metric": {**base, "__name__": DURATION_BUCKET, "le": "+Inf"},
             "values": [[t, str(total)]]},
            {"metric": {**base, "__name__": DURATION_COUNT}, "values": [[t, str(total)]]},
        ]

    with source._lock:
        source._absorb(series("a", 50.0, 10, 20), 100.0)  # the baseline, before the origin
        source._absorb(series("a", 200.0, 15, 30), 100.0)  # 5 calls <= 1 s, 10 in all
        source._absorb(series("b", 1300.0, 0, 0), 100.0)  # another replica, 1100 s on
        source._forget()  # "a" is dormant now (no sample for 1100 s)
        assert any(k for k in source._dormant)
        source._absorb(series("a", 1400.0, 16, 16), 100.0)  # restarted: 16 calls, all <= 1 s
        stats = source._summarise()["chat"].green
    assert stats.requests == 26  # 10 + 16
    assert stats.duration.total == 26
    assert stats.duration.counts[0] == 21, stats.duration  # 5 + 16 at or below 1 s
