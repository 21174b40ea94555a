"""PrometheusSource against a real Prometheus scraping real app processes.

Each app process serves ``/metrics`` through the OpenTelemetry Prometheus exporter, routes real
``openai`` calls through ``openai_bluegreen.install()`` to simulated blue and green upstreams
(green answers 20 % of calls with 503, which fall back to blue; a third of the calls stream)
and writes what its own LocalSource counted. Prometheus scrapes every second; the source's
sums across replicas must equal the apps' own counts exactly.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openai_bluegreen.sources import EnvStats, Histogram, RolloutStats, Snapshot, SourceUnavailable
from openai_bluegreen.sources.prometheus import PrometheusSource

from .services import free_port, prometheus_server

ROLLOUT = "chat-upgrade"

APP = textwrap.dedent('''
    import json, os, sys, time

    import openai
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server

    import openai_bluegreen
    from openai_bluegreen.sources.local import LocalSource
    from openai_bluegreen.testing import SimulatedUpstream

    port, blue_port, green_port, calls, seed = (int(a) for a in sys.argv[1:6])
    out = sys.argv[6]
    start_http_server(port, addr="127.0.0.1")
    local = LocalSource()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(), local])
    blue = SimulatedUpstream("blue", port=blue_port, seed=seed).start()
    green = SimulatedUpstream("green", port=green_port, error_rates={503: 0.2},
                              seed=seed + 1).start()
    os.environ["GREEN_API_KEY"] = "green-key"
    openai_bluegreen.install({"rollouts": [{
        "name": "chat-upgrade", "match": {"model": "gpt-4.1"}, "weight": 50,
        "blue": {"model": "blue-model"},
        "green": {"model": "green-model", "base_url": green.base_url,
                  "api_key_env": "GREEN_API_KEY"}}]}, meter_provider=provider)
    client = openai.OpenAI(base_url=blue.base_url, api_key="blue-key", max_retries=0)
    for i in range(calls):
        kwargs = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}],
                  "user": f"user-{seed}-{i}"}
        if i % 3 == 0:
            for _chunk in client.chat.completions.create(stream=True, **kwargs):
                pass
        else:
            client.chat.completions.create(**kwargs)

    def hist(h):
        return {"bounds": list(h.bounds), "counts": list(h.counts)}

    openai_bluegreen.flush()  # telemetry is recorded off the request path
    snapshot = local.snapshot(time.time())
    doc = {name: {env: {"requests": s.requests, "errors": s.errors,
                        "errors_by_type": dict(s.errors_by_type), "fallbacks": s.fallbacks,
                        "duration": hist(s.duration), "ttfc": hist(s.ttfc)}
                  for env, s in (("blue", r.blue), ("green", r.green))}
           for name, r in snapshot.rollouts.items()}
    with open(out + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(out + ".tmp", out)
    while True:  # keep serving /metrics until killed
        time.sleep(1)
''')


class App:
    """One app replica: a subprocess on fixed ports (so a restart resumes the same series)."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.tmp, self.name = tmp, name
        self.port, self.blue_port, self.green_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.out = tmp / "none"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, calls: int, seed: int) -> None:
        self.runs += 1
        script = self.tmp / "app.py"
        if not script.exists():
            script.write_text(APP, encoding="utf-8")
        self.out = self.tmp / f"{self.name}-{self.runs}.json"
        with (self.tmp / f"{self.name}-{self.runs}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), str(self.port), str(self.blue_port),
                 str(self.green_port), str(calls), str(seed), str(self.out)],
                stdout=log, stderr=subprocess.STDOUT)

    def counted(self, timeout: float = 30.0) -> RolloutStats:
        """What the replica's own LocalSource counted once its calls are done."""
        deadline = time.monotonic() + timeout
        while not self.out.exists():
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.tmp / f"{self.name}-{self.runs}.log").read_text(errors="replace")
                pytest.fail(f"app {self.name} did not finish its calls:\n{log}")
            time.sleep(0.05)
        doc = json.loads(self.out.read_text())[ROLLOUT]
        return RolloutStats(_env(doc["blue"]), _env(doc["green"]))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        self.proc = None


def _env(doc: dict[str, Any]) -> EnvStats:
    def hist(h: dict[str, Any]) -> Histogram:
        return Histogram(tuple(h["bounds"]), tuple(h["counts"]))

    return EnvStats(doc["requests"], doc["errors"], doc["errors_by_type"],
                    hist(doc["duration"]), hist(doc["ttfc"]), doc["fallbacks"])


def _fields(stats: RolloutStats) -> dict[str, int]:
    """Every count of both environments by name, to check that none goes down."""
    out: dict[str, int] = {}
    for name, env in (("blue", stats.blue), ("green", stats.green)):
        out |= {f"{name}.requests": env.requests, f"{name}.errors": env.errors,
                f"{name}.fallbacks": env.fallbacks}
        out |= {f"{name}.duration[{i}]": c for i, c in enumerate(env.duration.counts)}
        out |= {f"{name}.ttfc[{i}]": c for i, c in enumerate(env.ttfc.counts)}
        out |= {f"{name}.{k}": v for k, v in env.errors_by_type.items()}
    return out


def _wait_until_equal(source: PrometheusSource, expected: RolloutStats,
                      timeout: float = 12.0) -> list[Snapshot]:
    """Snapshots until the source's counts equal ``expected``; all of them, for checks."""
    seen: list[Snapshot] = []
    deadline = time.monotonic() + timeout
    while True:
        seen.append(source.snapshot(time.time()))
        if seen[-1].get(ROLLOUT) == expected:
            return seen
        if time.monotonic() > deadline:
            got = seen[-1].get(ROLLOUT)
            pytest.fail(f"Prometheus counts never matched the apps' own:\n"
                        f"  expected {expected}\n  got      {got}")
        time.sleep(0.3)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[list[App]]:
    replicas = [App(tmp_path, "a"), App(tmp_path, "b")]
    yield replicas
    for app in replicas:
        app.kill()


def test_replicas_summed_restart_counted_and_outage_reported(tmp_path: Path,
                                                            apps: list[App]) -> None:
    a, b = apps
    with prometheus_server(tmp_path, [a.target, b.target], scrape_interval="1s") as prom:
        started = time.time()
        # Before any app ran: no series, so no rollouts (the policy holds on missing data).
        assert PrometheusSource(prom.url).snapshot(started - 3600).rollouts == {}
        source = PrometheusSource(prom.url, timeout=2.0)
        assert source.snapshot(started).rollouts == {}  # the origin

        a.start(calls=60, seed=1)
        b.start(calls=45, seed=2)
        first_a, only_b = a.counted(), b.counted()
        expected = first_a.plus(only_b)
        assert expected.green.errors > 0 and expected.green.fallbacks > 0
        assert expected.blue.ttfc.total > 0 and expected.green.ttfc.total > 0
        seen = _wait_until_equal(source, expected)

        # The names and labels the OpenTelemetry Prometheus exporter writes, as scraped.
        names = _get_json(prom.url + "/api/v1/label/__name__/values")["data"]
        for name in ("gen_ai_client_operation_duration_seconds_bucket",
                     "gen_ai_client_operation_duration_seconds_count",
                     "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
                     "bluegreen_fallbacks_total"):
            assert name in names
        match = urllib.parse.quote('gen_ai_client_operation_duration_seconds_count')
        series = _get_json(prom.url + f"/api/v1/series?match[]={match}")["data"]
        assert {s["otel_scope_name"] for s in series} == {"openai_bluegreen"}
        assert {s["bluegreen_environment"] for s in series} == {"blue", "green"}
        assert {s.get("error_type", "") for s in series} == {"", "openai.InternalServerError"}
        assert {s["bluegreen_rollout"] for s in series} == {ROLLOUT}

        # Replica a restarts on the same ports (same series, counters back at 0): its old
        # counts stay, its new calls add, and no snapshot ever goes down.
        a.kill()
        a.start(calls=20, seed=3)
        second_a = a.counted()
        expected = expected.plus(second_a)
        seen += _wait_until_equal(source, expected)
        # The same series were reset: their current values alone no longer add up.
        query = urllib.parse.quote("sum(gen_ai_client_operation_duration_seconds_count)")
        current = _get_json(prom.url + f"/api/v1/query?query={query}")["data"]["result"]
        requests = [s.requests for r in (only_b, second_a) for s in (r.blue, r.green)]
        assert round(float(current[0]["value"][1])) == sum(requests) < expected.blue.requests \
            + expected.green.requests
        for earlier, later in itertools.pairwise(seen):
            before, after = _fields(earlier.get(ROLLOUT)), _fields(later.get(ROLLOUT))
            assert all(after.get(k, 0) >= v for k, v in before.items()), (before, after)

        # Prometheus refuses the query (an invalid selector): unavailable, with the cause.
        bad = PrometheusSource(prom.url, extra_selector='job=~"("')
        with pytest.raises(SourceUnavailable, match=r"HTTP 400.*(parse|regex)"):
            bad.snapshot(time.time())
        # Something that is not Prometheus (the app's /metrics server answers any path).
        with pytest.raises(SourceUnavailable, match="not JSON") as info:
            PrometheusSource(f"http://{b.target}").snapshot(time.time())
        assert b.target in str(info.value)

        prom.proc.terminate()
        prom.proc.wait(10)
        t0 = time.monotonic()
        with pytest.raises(SourceUnavailable, match="unreachable") as info:
            source.snapshot(time.time())
        assert time.monotonic() - t0 < 1.0
        assert prom.url in str(info.value)


def test_unreachable_and_silent_servers_fail_within_the_timeout() -> None:
    port = free_port()  # nobody listens
    source = PrometheusSource(f"http://user:hunter2@127.0.0.1:{port}", timeout=0.5)
    with pytest.raises(SourceUnavailable) as info:
        source.snapshot(time.time())
    message = str(info.value)
    assert f"http://user:***@127.0.0.1:{port}" in message and "hunter2" not in message
    assert source.origin is None  # fixed by the first query that succeeds, not the first try

    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(SourceUnavailable, match=r"did not answer within 0.5s|timed out"
                           ) as info:
            PrometheusSource(url, timeout=0.5).snapshot(time.time())
        assert time.monotonic() - t0 < 1.5
        assert url in str(info.value)


def test_a_histogram_restarts_with_its_total_even_where_a_bucket_came_back_as_high() -> None:
    """A restarted replica's small bucket may be scraped again at its old value; the histogram's
    total going down is what shows the restart, and every bucket restarts with it."""
    from openai_bluegreen.sources.prometheus import TTFC_BUCKET

    def series(le: str, values: list[tuple[float, int]]) -> dict[str, Any]:
        return {"metric": {"__name__": TTFC_BUCKET, "bluegreen_rollout": "r",
                           "bluegreen_environment": "green", "otel_scope_name": "openai_bluegreen",
                           "instance": "a:1", "le": le},
                "values": [[t, str(v)] for t, v in values]}

    source = PrometheusSource("http://127.0.0.1:9")
    # Origin 100: before it, 1 sample under 1 ms of 10; then 2 more calls (over 1 ms); the
    # replica restarts and makes 4 calls, 1 of them under 1 ms again.
    source._absorb([series("0.001", [(90, 1), (110, 1), (130, 1)]),
                    series("+Inf", [(90, 10), (110, 12), (130, 4)])], origin=100.0)
    totals = {dict(key)["le"]: s.total for key, s in source._series.items()}
    assert totals == {"0.001": 1.0, "+Inf": 6.0}



def test_a_fresh_prometheus_never_counts_a_replicas_past(tmp_path: Path,
                                                          apps: list[App]) -> None:
    # A replica that served calls before Prometheus (re)started without its data: the first
    # look finds nothing, and its first scrape must be its baseline, not its whole lifetime.
    a, _ = apps
    a.start(calls=40, seed=4)
    a.counted()
    time.sleep(2.5)  # its process started well before the origin
    with prometheus_server(tmp_path, [a.target], scrape_interval="1s") as prom:
        source = PrometheusSource(prom.url, timeout=2.0)
        assert source.snapshot(time.time()).rollouts == {}  # the origin: nothing scraped yet
        deadline = time.monotonic() + 20
        while not source._targets:  # until Prometheus has scraped the replica
            assert time.monotonic() < deadline, "Prometheus never scraped the replica"
            time.sleep(0.5)
            stats = source.snapshot(time.time()).get(ROLLOUT)
        stats = source.snapshot(time.time()).get(ROLLOUT)
        assert (stats.blue.requests, stats.green.requests) == (0, 0), stats
        # Catching up a long way (a leader rebuilding hours of history) goes in bounded
        # pieces: a snapshot that cannot finish says so, and the next one goes on.
        rewound = source.rewind(time.time() - 3 * 3600)
        rewound.max_pieces = 6  # as an ordinary source (a rewound one reads 8 h at once)
        with pytest.raises(SourceUnavailable, match=r"catching up, \d+s of samples"):
            rewound.snapshot(time.time())
        for _ in range(3):  # 3 h 5 min in pieces of 10 min, 6 a snapshot
            with contextlib.suppress(SourceUnavailable):
                rewound.snapshot(time.time())
                break
        else:
            pytest.fail("the catch-up never finished")


def test_credentials_split_where_the_masking_splits_them() -> None:
    from openai_bluegreen.sources.prometheus import _split_auth

    plain, auth = _split_auth("http://admin:p%2Fw@127.0.0.1:9090/prefix")
    assert plain == "http://127.0.0.1:9090/prefix"
    assert auth == "Basic " + base64.b64encode(b"admin:p/w").decode()
    # Percent-encoded user info is sent decoded.
    assert _split_auth("http://a%40b:p%3Aw@h:9090") == (
        "http://h:9090", "Basic " + base64.b64encode(b"a@b:p:w").decode())
    assert _split_auth("http://127.0.0.1:9090") == ("http://127.0.0.1:9090", None)
    # An "@" after the host is refused, naming the fix and never the password: an unescaped
    # "/" in a password (which would send it to the wrong host), or one in the path (which
    # the last-"@" reading took for user info, sending queries to another host).
    for url in ("http://admin:12/S3cr#t?x@127.0.0.1:9090/prefix", "http://prom:9090/a@b"):
        with pytest.raises(ValueError, match="has an '@' after its host") as info:
            PrometheusSource(url)
        assert "S3cr" not in str(info.value)


def test_a_watcher_clock_ahead_of_prometheus_still_reads_new_samples(
        tmp_path: Path, apps: list[App]) -> None:
    a, _ = apps
    skew = 120.0  # the watcher's clock is 2 minutes ahead of Prometheus's
    with prometheus_server(tmp_path, [a.target], scrape_interval="1s") as prom:
        a.start(calls=60, seed=5)
        a.counted()
        source = PrometheusSource(prom.url, timeout=2.0)
        deadline = time.monotonic() + 20
        while not source._targets:  # until the replica was scraped: the origin is after it
            assert time.monotonic() < deadline, "Prometheus never scraped the replica"
            source = PrometheusSource(prom.url, timeout=2.0)
            source.snapshot(time.time() + skew)
            time.sleep(0.5)
        source.snapshot(time.time() + skew)
        a.kill()
        # Restarted: only these calls are after the origin (fewer than before in every series,
        # so the restart shows; see the module's limits).
        a.start(calls=10, seed=6)
        expected = a.counted()
        deadline = time.monotonic() + 15
        while (got := source.snapshot(time.time() + skew).get(ROLLOUT)) != expected:
            assert time.monotonic() < deadline, f"expected {expected}\n got {got}"
            time.sleep(0.5)


class _FlakyReplica:
    """A long-running replica's /metrics on loopback, as the OpenTelemetry Prometheus exporter
    writes one counter series, whose scrapes can be made to fail (HTTP 500)."""

    def __init__(self, requests: int) -> None:
        import http.server

        self.failing = True
        self.requests = requests
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                return None

            def do_GET(self) -> None:
                if outer.failing:
                    self.send_response(500)
                    self.end_headers()
                    return
                labels = (f'otel_scope_name="openai_bluegreen",bluegreen_rollout="{ROLLOUT}",'
                          'bluegreen_environment="blue",error_type=""')
                body = ("# TYPE process_start_time_seconds gauge\n"
                        f"process_start_time_seconds {time.time() - 86400}\n"
                        "# TYPE gen_ai_client_operation_duration_seconds histogram\n"
                        f"gen_ai_client_operation_duration_seconds_bucket{{{labels},le=\"+Inf\"}}"
                        f" {outer.requests}\n"
                        f"gen_ai_client_operation_duration_seconds_count{{{labels}}}"
                        f" {outer.requests}\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.target = f"127.0.0.1:{self.server.server_address[1]}"


def test_a_replica_whose_scrapes_failed_across_the_origin_is_not_counted_whole(
        tmp_path: Path) -> None:
    replica = _FlakyReplica(requests=50_000)  # its calls before the watcher started
    try:
        with prometheus_server(tmp_path, [replica.target], scrape_interval="1s") as prom:
            deadline = time.monotonic() + 30
            while not _get_json(prom.url + "/api/v1/query?query=up")["data"]["result"]:
                assert time.monotonic() < deadline, "Prometheus never scraped the replica"
                time.sleep(0.3)
            source = PrometheusSource(prom.url, timeout=2.0)
            assert source.snapshot(time.time()).rollouts == {}  # the origin: scrapes failing
            replica.failing = False  # scrapes succeed again; no call is made after the origin
            deadline = time.monotonic() + 20
            while not source._targets:
                assert time.monotonic() < deadline, "the replica's series never arrived"
                time.sleep(0.5)
                source.snapshot(time.time())
            assert source.snapshot(time.time()).get(ROLLOUT).blue.requests == 0
    finally:
        replica.server.shutdown()
        replica.server.server_close()
