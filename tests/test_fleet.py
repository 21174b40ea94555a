"""Fleet mode end to end: three app replicas, a real Redis and a real Prometheus.

Each replica is its own process making real ``openai`` calls through the plugin and serving
``/metrics``; Prometheus scrapes them every second; the replicas share rollout state in Redis
and one of them (the lease holder) decides from the fleet's metrics in Prometheus.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from openai_bluegreen.testing import SimulatedUpstream

from .services import PrometheusServer, RedisServer, free_port, prometheus_server, redis_server

APP = Path(__file__).parent / "apps" / "fleet_app.py"


class Replica:
    """An app process and the status lines it prints."""

    def __init__(self, name: str, config: Path, blue: str, port: int) -> None:
        self.name = name
        self.port = port
        self.lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), "--config", str(config), "--metrics-port", str(port),
             "--blue", blue, "--name", name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "GREEN_API_KEY": "green-key"})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                continue

    @property
    def last(self) -> dict[str, Any]:
        return self.lines[-1] if self.lines else {}

    def since(self, t: float) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["t"] >= t]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def close(self) -> str:
        """Stop, close the pipes, and return what the process wrote to stderr."""
        self.stop()
        self._reader.join(5)
        err = ""
        if self.proc.stderr is not None:
            err = self.proc.stderr.read()
            self.proc.stderr.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return err


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openai_bluegreen", *args, "--config",
                           str(config)], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "OPENAI_BLUEGREEN_ACTOR": "oncall"})


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with SimulatedUpstream("blue", latency=0.005) as blue, \
            SimulatedUpstream("green", latency=0.005) as green, \
            redis_server(tmp_path, password="fleet-secret") as redis:
        ports = [free_port() for _ in range(3)]
        with prometheus_server(tmp_path, [f"127.0.0.1:{p}" for p in ports]) as prom:
            config = tmp_path / "openai-bluegreen.yaml"
            config.write_text(yaml.safe_dump({
                "state": redis.url,
                "metrics_source": prom.url,
                "rollouts": [{
                    "name": "chat-upgrade", "match": {"model": "gpt-4.1"},
                    "blue": {"model": "blue-model"},
                    "green": {"model": "green-model", "base_url": green.base_url,
                              "api_key_env": "GREEN_API_KEY"},
                    "schedule": {"steps": [25, 50, 100], "min_step_duration": "10m",
                                 "min_requests": 30},
                    "analysis": {"interval": "1s", "alpha": 0.01, "checks": [
                        {"signal": "error_rate", "max_ratio": 1.5},
                        {"signal": "error_rate", "max": 0.2}]},
                }]}), encoding="utf-8")
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

    # The leader dies mid-rollout: another replica takes the lease; the split holds.
    leader = next(r for r in replicas if r.last.get("role") == "leader")
    leader.stop(signal.SIGKILL)
    others = [r for r in replicas if r is not leader]
    wait_until("a new leader", lambda: any(r.last.get("role") == "leader" for r in others), 10)
    assert _all(others, lambda s: s.get("phase") == "progressing" and s.get("weight") == 25.0)

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
    took = wait_until("every replica routing 100% to blue", lambda: all(
        r.since(time.time() - 1.5) and not any(x["green"] for x in r.since(time.time() - 1.5))
        for r in others), 10)
    assert took < 10
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
