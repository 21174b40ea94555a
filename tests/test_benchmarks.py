"""The benchmarks run (their numbers are BENCHMARKS.md's business): each ``--quick`` run ends
with its table, one row per arm, and leaves BENCHMARKS.md alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("script", "rows"), [
    ("overhead.py", ["| plain |", "| bluegreen |", "| bluegreen-noop-telemetry |",
                     "| sdk-telemetry-inline |", "| sdk-bare-span-inline |", "| otel-openai |",
                     "Ceiling, same run", "one bare CLIENT span per call",
                     "held off during the telemetry worker's bursts: yes; still held off at the "
                     "end of the run: yes"]),
    ("worker_interval.py", ["| plain |", "| bluegreen, every 50 ms |",
                            "| bluegreen, every 250 ms |", "| bluegreen, every 1000 ms |"]),
    ("hotpath.py", ["| wrapper, SDK providers, worker paused (request path) |",
                    "| the same, each call after an unrouted SDK call (caches cold) |",
                    "| worker tasks of one call, drained afterwards |",
                    "| objects the collector tracks, left per finished span until export |"]),
    ("detection.py", ["| A/A (green = blue) | ours |", "| green total outage | ours |",
                      "|  | z-test |"]),
    ("fleet.py", ["| bluegreen, state: redis:// |", "| pub/sub |", "| poll 1 s |",
                  "| bluegreen, state: redis:// (server stopped) |"]),
])
def test_benchmark_quick_run_prints_every_arm(script: str, rows: list[str]) -> None:
    before = (ROOT / "BENCHMARKS.md").read_text()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
                          check=False, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    for row in rows:
        assert done.stdout.count(row) >= 1, (row, done.stdout[-3000:])
    assert (ROOT / "BENCHMARKS.md").read_text() == before


def test_overhead_without_the_young_pass_hold_runs_a_whole_run_without_it() -> None:
    """--no-gc-hold: the comparison the hold is judged by, run against run (full collections
    are the process's, so an arm cannot show it)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick",
                           "--no-gc-hold"], check=False, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("bursts: no (--no-gc-hold); still held off at the end of the run: no"
            in done.stdout), done.stdout[-2000:]
    assert "Command: `python benchmarks/overhead.py --quick --no-gc-hold`" in done.stdout


def test_benchmark_refuses_bad_intervals() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "worker_interval.py"),
                           "--intervals", "0.25,-1"], check=False, capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert "--intervals" in done.stderr and "'0.25,-1'" in done.stderr
