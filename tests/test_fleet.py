"""Fleet mode end to end: three app replicas, a real Redis and a real Prometheus.

Each replica is its own process making real ``openai`` calls through the plugin and serving
``/metrics``; Prometheus scrapes them every second; the replicas share rollout state in Redis
and one of them (the lease holder) decides from the fleet's metrics in Prometheus.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from openai_bluegreen.testing import SimulatedUpstream

from .fleet_support import Replica, cli, fleet_config, wait_until
from .services import PrometheusServer, RedisServer, free_port, prometheus_server, redis_server


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with SimulatedUpstream("blue", latency=0.005) as blue, \
            SimulatedUpstream("green", latency=0.005) as green, \
            redis_server(tmp_path, password="fleet-secret") as redis:
        ports = [free_port() for _ in range(3)]
        with prometheus_server(tmp_path, [f"127.0.0.1:{p}" for p in ports]) as prom:
            config = fleet_config(tmp_path, redis.url, prom.url, green.base_url)
            replicas = [Replica(f"r{i}", config, blue.base_url, port)
                        for i, port in enumerate(ports)]
            try:
                yield {"replicas": replicas, "config": config, "green": green, "blue": blue,
                       "redis": redis, "prometheus": prom}
            finally:
                for replica in replicas:
                    replica.stop()
                for replica in replicas:
                    err = replica.close()
                    if "Traceback" in err:
                        print(f"--- {replica.name} stderr ---\n{err[-3000:]}")


def _all(replicas: list[Replica], pred: Callable[[dict[str, Any]], bool]) -> bool:
    return all(r.lines and pred(r.last) for r in replicas)


def test_fleet_follows_operators_and_rolls_back_a_degrading_green_from_prometheus(
        fleet: dict[str, Any]) -> None:
    replicas: list[Replica] = fleet["replicas"]
    config: Path = fleet["config"]
    redis: RedisServer = fleet["redis"]
    green: SimulatedUpstream = fleet["green"]
    prom: PrometheusServer = fleet["prometheus"]

    wait_until("every replica progressing at 25%", lambda: _all(
        replicas, lambda s: s.get("phase") == "progressing" and s.get("weight") == 25.0), 30)
    assert sum(r.last.get("role") == "leader" for r in replicas) == 1
    shown: list[subprocess.CompletedProcess[str]] = []

    def status_shows_fleet_calls() -> bool:  # once Prometheus has scraped the replicas
        shown.append(cli(config, "status"))
        assert shown[-1].returncode == 0, shown[-1].stderr
        return re.search(r"^\s*chat-upgrade\s+progressing\s+1/3\s+25%\s+\d+ calls, "
                         r"[\d.]+% err, p95 \d+ms\s+\d+ calls", shown[-1].stdout, re.M) is not None

    wait_until("the CLI status with the fleet's calls from Prometheus",
               status_shows_fleet_calls, 20)
    assert "fleet-secret" not in shown[-1].stdout + shown[-1].stderr

    # An operator's pause and resume reach every replica and the history.
    assert cli(config, "pause", "chat-upgrade", "--reason", "eval run").returncode == 0
    wait_until("every replica paused", lambda: _all(
        replicas, lambda s: s.get("phase") == "paused"), 5)
    assert cli(config, "resume", "chat-upgrade", "--reason", "eval passed").returncode == 0
    wait_until("every replica progressing again", lambda: _all(
        replicas, lambda s: s.get("phase") == "progressing"), 5)

    # The leader dies mid-rollout: another replica takes the lease; the split holds, and the
    # new leader rebuilds the evidence since the resume from Prometheus instead of starting over.
    leader = next(r for r in replicas if r.last.get("role") == "leader")
    wait_until("evidence since the resume", lambda: (
        leader.last.get("judged_green_calls") or 0) >= 20, 15)
    judged_before = leader.last["judged_green_calls"]
    leader.stop(signal.SIGKILL)
    others = [r for r in replicas if r is not leader]
    wait_until("a new leader judging", lambda: any(
        r.last.get("role") == "leader" and r.last.get("judged_green_calls") for r in others), 10)
    assert _all(others, lambda s: s.get("phase") == "progressing" and s.get("weight") == 25.0)
    new_leader = next(r for r in others if r.last.get("role") == "leader")
    assert new_leader.last["judged_green_calls"] >= judged_before

    # Redis goes away mid-rollout: no call fails and the replicas keep routing 25% to green;
    # Redis comes back empty (no persistence) and the leader puts the rollout back as it was.
    redis.stop()
    outage = time.time()
    wait_until("replicas noticing the outage", lambda: all(
        (r.last.get("problem") or "").startswith("state store unavailable") for r in others), 10)
    time.sleep(2)
    during = [x for r in others for x in r.since(outage)]
    calls, to_green = sum(x["calls"] for x in during), sum(x["green"] for x in during)
    assert calls > 50 and sum(x["failed"] for x in during) == 0
    assert 0.12 < to_green / calls < 0.40, (to_green, calls)  # still the 25% split
    assert all("fleet-secret" not in (x.get("problem") or "") for x in during)
    redis.start()
    wait_until("replicas recovering", lambda: all(
        r.last.get("problem") is None for r in others), 15)
    wait_until("the rollout restored in Redis, not restarted", lambda: re.search(
        r'"phase": "progressing"', cli(config, "status", "--json").stdout) is not None, 10)

    # Green degrades: the new leader, judging the fleet's metrics in Prometheus, rolls back.
    green.configure(error_rates={503: 0.6})
    degraded = time.time()
    wait_until("the watcher's rollback in every replica", lambda: _all(
        others, lambda s: s.get("phase") == "rolled_back"), 40)
    wait_until("every replica routing 100% to blue", lambda: all(
        r.since(time.time() - 1.5) and not any(x["green"] for x in r.since(time.time() - 1.5))
        for r in others), 10)
    history = json.loads(cli(config, "status", "--json").stdout)["rollouts"][0]["history"]
    assert [h["action"] for h in history] == ["start", "pause", "resume", "rollback"]
    assert history[-1]["actor"] == "watcher" and "error_rate" in history[-1]["reason"]
    assert history[-2]["actor"] == "oncall" and history[-2]["reason"] == "eval passed"
    assert time.time() - degraded < 45
    assert prom.proc.poll() is None
    green.configure(error_rates={})

    # After the outage operators steer the fleet again (the leader restored the state Redis
    # lost on its restart): a manual weight, then a manual rollback, seen by every replica.
    wait_until("the state back in Redis", lambda: '"rolled_back"' in cli(
        config, "status", "--json").stdout, 10)
    assert cli(config, "set-weight", "chat-upgrade", "30", "--reason", "retry with a fix"
               ).returncode == 0
    wait_until("every replica at 30%", lambda: _all(
        others, lambda s: s.get("phase") == "paused" and s.get("weight") == 30.0), 5)
    assert cli(config, "rollback", "chat-upgrade", "--reason", "fix not ready").returncode == 0
    wait_until("every replica rolled back", lambda: _all(
        others, lambda s: s.get("phase") == "rolled_back" and s.get("weight") == 0.0), 5)
    history = json.loads(cli(config, "status", "--json").stdout)["rollouts"][0]["history"]
    assert [(h["action"], h["actor"], h["reason"]) for h in history[-2:]] == [
        ("set_weight", "oncall", "retry with a fix"), ("rollback", "oncall", "fix not ready")]
