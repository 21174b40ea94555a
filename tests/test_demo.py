"""The ``demo`` command: real rollouts judged by the watcher, two simulated upstreams, no mocks."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from openai_bluegreen._demo import DemoRun, run_demo
from openai_bluegreen._exporters import ExporterError
from openai_bluegreen.cli import main

from .services import free_port

# Small but real: 1.5-2 s steps, enough traffic for the checks to decide within a step or two.
FAST: dict[str, Any] = {"rate": 300.0, "concurrency": 40, "tail": 0.5, "duration": 25.0}


def test_healthy_green_is_promoted_and_the_report_plots_it(tmp_path: Path) -> None:
    out = io.StringIO()
    report = tmp_path / "report.html"
    run = run_demo("healthy", step_seconds=1.5, out=out, live=True, report=report, **FAST)

    (result,) = run.results
    assert run.ok, result.why
    assert result.outcome == "promoted"
    assert [d.action for d in result.decisions] == ["start", "advance", "advance", "promote"]
    assert [d.weight for d in result.decisions] == [5.0, 25.0, 50.0, 100.0]
    assert result.deciding_check is None
    assert result.time_to_decision is not None and result.time_to_decision >= 3 * 1.5 - 0.5
    assert result.final.green.requests > 0 and result.final.blue.requests > 0

    text = out.getvalue()
    assert "\x1b[J" in text  # the live view redraws in place
    assert "PROMOTED" in text and "decisions (time since start)" in text
    assert "Summary of scenario 'healthy': promoted (as expected)" in text

    assert run.report == report
    page = report.read_text(encoding="utf-8")
    assert page.count("<svg") == 4  # weight, error rate, p95 latency, p95 time to first chunk
    assert "<script" not in page and "http://" not in page.replace("http://www.w3", "")
    assert 'class="decision" data-action="promote"' in page
    assert "<title>+" in page and "promoting to 100%" in page
    assert "polyline" in page


def test_erroring_green_is_rolled_back_and_prometheus_serves_the_metrics(
        tmp_path: Path) -> None:
    port = free_port()
    out = io.StringIO()
    runs: list[DemoRun] = []
    thread = threading.Thread(target=lambda: runs.append(run_demo(
        "errors", step_seconds=2.5, out=out, live=False, report=tmp_path / "r.html",
        prometheus_port=port, **FAST)))
    thread.start()
    scraped = ""
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                scraped = resp.read().decode()
        except OSError:
            scraped = ""
        if ("gen_ai_client_operation_duration_seconds_bucket" in scraped
                and "bluegreen_rollout_weight" in scraped):
            break
        time.sleep(0.2)
    thread.join(30)
    assert not thread.is_alive()

    assert "gen_ai_client_operation_duration_seconds_bucket" in scraped
    assert "bluegreen_rollout_weight" in scraped
    assert 'bluegreen_environment="blue"' in scraped
    (result,) = runs[0].results
    assert result.ok, result.why
    assert result.outcome == "rolled_back"
    assert result.deciding_check == "error_rate ratio<=1.5"
    assert result.degraded_at is not None
    assert result.decisions[-1].action == "rollback"
    assert result.final.green.fallbacks == result.final.green.errors
    text = out.getvalue()
    assert f"Prometheus metrics: http://127.0.0.1:{port}/metrics" in text
    assert "decision: rollback -> 0% green (rolled_back): error_rate ratio<=1.5 failed" in text
    assert "\x1b[" not in text
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'data-action="rollback"' in page and 'class="degraded"' in page
    # The server is gone with the run.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)


def test_cli_slow_green_is_rolled_back_by_a_latency_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "slow.html"
    code = main(["demo", "--scenario", "slow", "--no-live", "--step-seconds", "1.5",
                 "--rate", "300", "--concurrency", "40", "--duration", "25",
                 "--report", str(report)])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "Summary of scenario 'slow': rolled_back (as expected)" in captured.out
    assert ("latency p95 ratio<=1.5 failed" in captured.out
            or "ttft p95 ratio<=1.5 failed" in captured.out)
    assert captured.err == ""
    assert report.is_file() and 'data-action="rollback"' in report.read_text(encoding="utf-8")


@pytest.mark.parametrize("where", ["missing/report.html", "."])
def test_cli_refuses_a_report_path_it_cannot_write_before_the_run(
        tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The report is written at the end: a path in a missing directory ran the whole demo,
    then died in write_text() with a FileNotFoundError traceback."""
    report = str(tmp_path / where)
    started = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--report", report])
    assert exc.value.code == 2 and time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert "argument --report" in err and repr(report) in err and "Traceback" not in err, err


def test_cli_refuses_a_report_path_at_a_pipe_nobody_reads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The check looked only at the directory: a named pipe without a reader ran the whole
    demo, then blocked for ever in write_text() at its end."""
    pipe = tmp_path / "report.html"
    os.mkfifo(pipe)
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--report", str(pipe)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --report: cannot be written" in err and repr(str(pipe)) in err, err


def test_a_report_that_cannot_be_written_at_the_end_keeps_the_runs_summary(
        tmp_path: Path) -> None:
    """A report path that went bad during the run raised from run_demo after every scenario
    ran, losing their results and the closing summary."""
    out = io.StringIO()
    report = tmp_path / "gone" / "r.html"  # the CLI checks this up front; the API cannot
    run = run_demo("healthy", step_seconds=1.5, out=out, live=False, report=report,
                   **{**FAST, "duration": 2.0})
    assert len(run.results) == 1 and run.report is None
    assert run.report_error is not None and repr(str(report)) in run.report_error
    assert "No such file or directory" in run.report_error
    assert "Report not written to" in out.getvalue()


def test_cli_rejects_an_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--scenario", "flaky"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--scenario" in err and "'flaky'" in err


@pytest.mark.parametrize(("flag", "value"), [
    ("--duration", "0"), ("--rate", "fast"), ("--concurrency", "0"),
    ("--prometheus-port", "70000"), ("--step-seconds", "-1"),
])
def test_cli_rejects_bad_values(flag: str, value: str, capsys: pytest.CaptureFixture[str]
                                ) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and value in err


def test_missing_exporter_packages_name_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ExporterError, match=r"pip install 'openai-bluegreen\[prometheus\]'"):
        run_demo("healthy", prometheus_port=free_port(), report=None)
    monkeypatch.delitem(sys.modules, "prometheus_client")

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.metric_exporter",
                        None)
    assert main(["demo", "--no-live", "--report", "unused.html"]) == 1
    err = capsys.readouterr().err
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in err
    assert "pip install 'openai-bluegreen[otlp]'" in err


def test_run_demo_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown scenario 'nope'"):
        run_demo("nope")
    with pytest.raises(ValueError, match="rate must be > 0"):
        run_demo("healthy", rate=0)


def test_otlp_export_reaches_an_otlp_http_receiver(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, metrics and spans leave over OTLP/HTTP."""
    import http.server

    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    received: dict[str, list[bytes]] = {}

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.setdefault(self.path, []).append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT",
                           f"http://127.0.0.1:{server.server_address[1]}")
        run = run_demo("errors", step_seconds=2.0, out=io.StringIO(), live=False,
                       report=tmp_path / "r.html", **FAST)
        assert run.ok, run.results[0].why
    finally:
        server.shutdown()
        server.server_close()
    def names(path: str, parse: Any, resources: str, scopes: str, items: str) -> set[str]:
        """Names of every item in the OTLP requests posted to ``path``."""
        return {item.name
                for body in received.get(path, [])
                for resource in getattr(parse(body), resources)
                for scope in getattr(resource, scopes)
                for item in getattr(scope, items)}

    metric_names = names("/v1/metrics", ExportMetricsServiceRequest.FromString,
                         "resource_metrics", "scope_metrics", "metrics")
    assert {"gen_ai.client.operation.duration", "bluegreen.rollout.decisions",
            "bluegreen.rollout.weight"} <= metric_names
    span_names = names("/v1/traces", ExportTraceServiceRequest.FromString,
                       "resource_spans", "scope_spans", "spans")
    assert any(name.startswith("chat ") for name in span_names)
    assert "bluegreen.decide chat-upgrade" in span_names
