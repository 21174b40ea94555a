"""Optional exporters for the demo and ``run-watcher``: Prometheus ``/metrics`` and OTLP."""

from __future__ import annotations

import importlib
from typing import Any

from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import SpanProcessor

from ._errors import BlueGreenError

__all__ = ["ExporterError", "Exporters"]


class ExporterError(BlueGreenError):
    """An optional exporter package is missing, or its port is taken."""


def _import(module: str, extra: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExporterError(f"{what} needs the {exc.name or module!r} package: "
                        f"pip install 'openai-bluegreen[{extra}]'") from None


class Exporters:
    """Prometheus (``/metrics`` on 127.0.0.1) and OTLP export for the demo and the watcher.

    One HTTP server serves every scenario of the run; each scenario's MeterProvider gets its own
    Prometheus reader (unregistered again when the provider shuts down).
    """

    def __init__(self, prometheus_port: int | None, otlp: bool) -> None:
        self._prometheus: Any = None
        self._otlp_metrics: Any = None
        self._otlp_traces: Any = None
        self._server: Any = None
        self.url: str | None = None
        if prometheus_port is not None:
            what = "--prometheus-port"
            self._prometheus = _import("opentelemetry.exporter.prometheus", "prometheus", what)
            client = _import("prometheus_client", "prometheus", what)
            try:
                started = client.start_http_server(prometheus_port, addr="127.0.0.1")
            except OSError as exc:
                raise ExporterError(f"cannot serve /metrics on 127.0.0.1:{prometheus_port}: "
                                f"{exc.strerror or exc}") from None
            self._server = started[0] if isinstance(started, tuple) else None
            self.url = f"http://127.0.0.1:{prometheus_port}/metrics"
        if otlp:
            what = "OTEL_EXPORTER_OTLP_ENDPOINT"
            self._otlp_metrics = _import(
                "opentelemetry.exporter.otlp.proto.http.metric_exporter", "otlp", what)
            self._otlp_traces = _import(
                "opentelemetry.exporter.otlp.proto.http.trace_exporter", "otlp", what)

    def metric_readers(self) -> list[MetricReader]:
        readers: list[MetricReader] = []
        if self._prometheus is not None:
            readers.append(self._prometheus.PrometheusMetricReader())
        if self._otlp_metrics is not None:
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(PeriodicExportingMetricReader(
                self._otlp_metrics.OTLPMetricExporter(), export_interval_millis=5_000))
        return readers

    def span_processors(self) -> list[SpanProcessor]:
        if self._otlp_traces is None:
            return []
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        return [BatchSpanProcessor(self._otlp_traces.OTLPSpanExporter())]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
