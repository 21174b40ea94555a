"""Fleet test support: app replicas as processes, the CLI as a user runs it, the config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

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


def fleet_config(tmp_path: Path, state: str, metrics_source: str, green_url: str) -> Path:
    """A scheduled rollout on a shared Redis, judged from Prometheus every second."""
    config = tmp_path / "openai-bluegreen.yaml"
    config.write_text(yaml.safe_dump({
        "state": state,
        "metrics_source": metrics_source,
        "rollouts": [{
            "name": "chat-upgrade", "match": {"model": "gpt-4.1"},
            "blue": {"model": "blue-model"},
            "green": {"model": "green-model", "base_url": green_url,
                      "api_key_env": "GREEN_API_KEY"},
            "schedule": {"steps": [25, 50, 100], "min_step_duration": "10m",
                         "min_requests": 30},
            "analysis": {"interval": "1s", "alpha": 0.01, "checks": [
                {"signal": "error_rate", "max_ratio": 1.5},
                {"signal": "error_rate", "max": 0.2}]},
        }]}), encoding="utf-8")
    return config
