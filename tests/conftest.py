from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import openai_bluegreen
from openai_bluegreen.testing import SimulatedUpstream

GREEN_KEY = "green-secret-key-0123456789"
BLUE_KEY = "blue-secret-key-0123456789"


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        openai_bluegreen.flush()
        return list(self.exporter.get_finished_spans())

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) for every point of the named metric."""
        openai_bluegreen.flush()
        data = self.reader.get_metrics_data()
        out = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        out.extend((dict(p.attributes), p) for p in metric.data.data_points)
        return out

    def count(self, name: str, **attrs: Any) -> int:
        """Sum of histogram counts (or counter values) whose attributes include ``attrs``."""
        total = 0
        for point_attrs, point in self.points(name):
            if all(point_attrs.get(k.replace("__", ".")) == v for k, v in attrs.items()):
                total += getattr(point, "count", None) or getattr(point, "value", 0)
        return total


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(tracer_provider, meter_provider, exporter, reader)
    openai_bluegreen.uninstall()
    openai_bluegreen.flush()
    meter_provider.shutdown()
    tracer_provider.shutdown()


@pytest.fixture
def blue() -> Iterator[SimulatedUpstream]:
    with SimulatedUpstream("blue") as server:
        yield server


@pytest.fixture
def green() -> Iterator[SimulatedUpstream]:
    with SimulatedUpstream("green") as server:
        yield server


def rollout_config(green: SimulatedUpstream, *, weight: float = 0, models: Any = "gpt-4.1",
                   **rollout: Any) -> dict[str, Any]:
    return {"rollouts": [{
        "name": "chat-upgrade",
        "match": {"model": models},
        "blue": {"model": "blue-model"},
        "green": {"model": "green-model", "base_url": green.base_url,
                  "api_key_env": "GREEN_API_KEY"},
        "weight": weight,
        **rollout,
    }]}


@pytest.fixture
def install(telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``install(config)`` with the test's in-memory providers; uninstalled afterwards."""
    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)

    def do(config: Any) -> None:
        openai_bluegreen.install(config, tracer_provider=telemetry.tracer_provider,
                                 meter_provider=telemetry.meter_provider)

    yield do
    openai_bluegreen.uninstall()


@pytest.fixture(autouse=True)
def _always_uninstalled() -> Iterator[None]:
    yield
    openai_bluegreen.uninstall()
