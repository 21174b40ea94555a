"""The ``demo`` command: real traffic through two simulated upstreams, read back from metrics."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from openai_bluegreen._demo import histogram_quantile, run_demo
from openai_bluegreen.cli import main


def test_demo_routes_traffic_and_reports_per_environment() -> None:
    out = io.StringIO()
    result = run_demo(duration=3, weight=50, rate=80, live=False, out=out)

    assert result.blue.requests > 20
    assert result.green.requests > 20
    assert 0.3 <= result.green_share <= 0.7
    assert result.weight == 50
    assert result.blue.p95_latency is not None and result.green.p95_latency is not None
    assert result.blue.p95_latency > result.green.p95_latency  # blue is the slower upstream
    assert result.blue.p95_ttfc is not None and result.green.p95_ttfc is not None
    assert result.blue.output_tokens > 0 and result.green.output_tokens > 0
    # Green's 503s fall back to blue; only blue's own 0.5 % can reach the caller.
    assert result.fallbacks == result.green.errors
    assert result.calls_failed_for_caller <= max(1, 0.02 * result.calls)
    assert result.calls == result.blue.requests + result.green.requests - result.fallbacks
    assert not result.interrupted

    text = out.getvalue()
    assert "\x1b[" not in text
    assert text.count("[  ") >= 2  # one compact line per second
    assert "Summary" in text
    assert "deepseek-v3.2" in text
    assert "green share" in text


def test_live_view_redraws_in_place() -> None:
    out = io.StringIO()
    run_demo(duration=2.2, weight=30, rate=40, concurrency=4, live=True, out=out)
    text = out.getvalue()
    assert "\x1b[J" in text  # the second frame erases the first
    assert "s left)" in text
    assert "Summary" in text


def test_cli_demo_runs_as_module() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", "openai_bluegreen", "demo", "--duration", "2",
         "--no-live"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Summary" in done.stdout
    assert "calls failed for the caller" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize(("flag", "value"), [
    ("--weight", "150"),
    ("--weight", "-1"),
    ("--weight", "nan"),
    ("--duration", "0"),
    ("--concurrency", "0"),
    ("--rate", "-5"),
    ("--rate", "fast"),
])
def test_cli_rejects_bad_values(flag: str, value: str, capsys: pytest.CaptureFixture[str]
                                ) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err
    assert value in err


def test_cli_weight_out_of_range_exits_2_as_a_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "openai_bluegreen", "demo", "--weight", "150"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "--weight" in done.stderr
    assert "150" in done.stderr


def test_cli_requires_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "demo" in capsys.readouterr().err


def test_run_demo_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="weight must be between 0 and 100"):
        run_demo(weight=101)


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    bounds = [0.1, 0.2, 0.4]
    assert histogram_quantile(bounds, [0, 0, 0, 0], 0.95) is None
    # 10 values in (0.1, 0.2]: p50 is half-way through that bucket.
    assert histogram_quantile(bounds, [0, 10, 0, 0], 0.5) == pytest.approx(0.15)
    # Observed min/max narrow the bucket being interpolated.
    assert histogram_quantile(bounds, [0, 10, 0, 0], 0.5, low=0.12, high=0.18) == (
        pytest.approx(0.15))
    # The open last bucket is closed by the observed max.
    assert histogram_quantile(bounds, [0, 0, 0, 4], 1.0, high=0.9) == pytest.approx(0.9)
    assert histogram_quantile(bounds, [90, 10, 0, 0], 0.95) == pytest.approx(0.15)
