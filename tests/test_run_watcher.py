"""``openai-bluegreen run-watcher``: the watcher as its own process, over Redis and Prometheus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from openai_bluegreen.testing import SimulatedUpstream

from .fleet_support import Replica, fleet_config, wait_until
from .services import free_port, prometheus_server, redis_server


class Lines:
    """Collects a process's output lines as they come."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line)

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)


def test_run_watcher_leads_decides_from_prometheus_and_hands_over_on_sigterm(
        tmp_path: Path) -> None:
    with SimulatedUpstream("blue", latency=0.005) as blue, \
            SimulatedUpstream("green", latency=0.005) as green, \
            redis_server(tmp_path, password="watcher-secret") as redis:
        app_port, watcher_port = free_port(), free_port()
        with prometheus_server(tmp_path, [f"127.0.0.1:{app_port}"]) as prom:
            config = fleet_config(tmp_path, redis.url, prom.url, green.base_url)
            watcher = subprocess.Popen(
                [sys.executable, "-m", "openai_bluegreen", "run-watcher", "--config",
                 str(config), "--prometheus-port", str(watcher_port)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
            out, err = Lines(watcher.stdout), Lines(watcher.stderr)
            replica = None
            try:
                wait_until("the watcher leading", lambda: out.has("this watcher is the leader"),
                           20)
                assert out.has("state redis://:***@127.0.0.1")
                replica = Replica("app", config, blue.base_url, app_port)
                wait_until("the app following the watcher's start", lambda: bool(
                    replica.lines) and replica.last.get("phase") == "progressing"
                    and replica.last.get("weight") == 25.0, 30)
                assert replica.last.get("role") == "follower"
                with urllib.request.urlopen(f"http://127.0.0.1:{watcher_port}/metrics",
                                            timeout=5) as answer:
                    exposed = answer.read().decode()
                assert 'bluegreen_rollout_decisions_total{' in exposed
                assert 'bluegreen_decision="start"' in exposed
                assert 'bluegreen_rollout_state{' in exposed

                green.configure(error_rates={503: 0.6})
                wait_until("the watcher's rollback reaching the app",
                           lambda: replica.last.get("phase") == "rolled_back", 40)
                assert err.has("rollback") and err.has("error_rate")

                watcher.send_signal(signal.SIGTERM)
                assert watcher.wait(15) == 0
                assert out.has("watcher stopped")
                wait_until("the app taking the released lease",
                           lambda: replica.last.get("role") == "leader", 10)
                everything = "".join(out.lines + err.lines)
                assert "watcher-secret" not in everything
            finally:
                if watcher.poll() is None:
                    watcher.kill()
                    watcher.wait(5)
                for stream in (watcher.stdout, watcher.stderr):
                    if stream is not None:
                        stream.close()
                if replica is not None:
                    replica.close()
