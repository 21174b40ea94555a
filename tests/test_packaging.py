"""The lower bounds pyproject.toml declares are ones the package works with.

pip installs the lowest allowed version when an app pins it, so a floor below the first release
that has an API the package uses at import or on every call is a broken install. Each floor
here was found by installing the wheel with that release and making a routed call.
"""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the tomli dependency on Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _floors(extra: str | None = None) -> dict[str, Version]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    floors: dict[str, Version] = {}
    for line in lines:
        req = Requirement(line)
        for spec in req.specifier:
            if spec.operator in (">=", "==", "~="):
                floors[req.name.lower()] = Version(spec.version)
    return floors


def test_wrapt_floor_has_subscriptable_object_proxy() -> None:
    # _streams subclasses wrapt.ObjectProxy[Any]: wrapt 2.0 and 2.1 raise TypeError ("type
    # 'ObjectProxy' is not subscriptable") at import; 2.2.0 is the first that takes it.
    assert _floors()["wrapt"] >= Version("2.2")


def test_openai_floor_exports_omit() -> None:
    # Routing builds each lane (and a green's own client) with openai.Omit(); before 1.56.2
    # openai does not export Omit, and every routed call failed open to blue with
    # "module 'openai' has no attribute 'Omit'", recording nothing.
    assert _floors()["openai"] >= Version("1.56.2")


def test_instrumentor_names_the_openai_versions_the_package_allows() -> None:
    from openai_bluegreen.instrumentation import BlueGreenInstrumentor

    (declared,) = (Requirement(line) for line in tomllib.loads(
        PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
        if Requirement(line).name == "openai")
    (instruments,) = BlueGreenInstrumentor().instrumentation_dependencies()
    assert Requirement(instruments).specifier == declared.specifier


def test_opentelemetry_floor_takes_explicit_bucket_boundaries() -> None:
    # The semconv histogram buckets are given as explicit_bucket_boundaries_advisory, which
    # Meter.create_histogram takes from opentelemetry-api/sdk 1.30; with 1.27-1.29 install()
    # raised TypeError. The exporters the extras bring must allow an SDK that new: the
    # Prometheus exporter pins the SDK's minor (0.50b0 needs sdk 1.29, 0.51b0 takes 1.30).
    floors = _floors()
    assert floors["opentelemetry-api"] >= Version("1.30")
    assert floors["opentelemetry-sdk"] >= Version("1.30")
    assert _floors("otlp")["opentelemetry-exporter-otlp-proto-http"] >= Version("1.30")
    assert _floors("prometheus")["opentelemetry-exporter-prometheus"] >= Version("0.51b0")


def test_prometheus_client_floor_returns_the_server_it_starts() -> None:
    # demo and run-watcher --prometheus-port shut /metrics down on close with the server that
    # start_http_server returns; before 0.20 it returns None, so the port stayed open.
    for extra in ("prometheus", "dev"):
        assert _floors(extra)["prometheus-client"] >= Version("0.20")


def test_instrument_extra_floor_allows_wrapt_2() -> None:
    # opentelemetry-instrumentation (and the distro that pins it) requires wrapt<2 before
    # 0.62b0: a floor below it named versions pip can never install with this package.
    for extra in ("instrument", "dev"):
        floors = _floors(extra)
        assert floors["opentelemetry-instrumentation"] >= Version("0.62b0")
        assert floors["opentelemetry-distro"] >= Version("0.62b0")


def test_instrument_extra_brings_an_sdk_that_can_add_the_watchers_reader() -> None:
    # Under opentelemetry-instrument the distro makes the MeterProvider; a scheduled rollout's
    # watcher attaches its LocalSource with add_metric_reader, new in opentelemetry-sdk 1.43.
    # With 1.42 the app ran unrouted ("not routing any call: ... cannot add one").
    floors = _floors("instrument")
    assert floors["opentelemetry-sdk"] >= Version("1.43")
    # opentelemetry-instrumentation 0.6Xb0 needs the semantic conventions of its own release,
    # which pin opentelemetry-api exactly: 0.64b0 is the first that installs beside sdk 1.43.
    assert floors["opentelemetry-instrumentation"] >= Version("0.64b0")
    assert floors["opentelemetry-distro"] >= Version("0.64b0")


def test_the_declared_license_ships_its_text() -> None:
    # pyproject says Apache-2.0, whose section 4(a) has every redistribution carry the license;
    # hatchling puts a top-level LICENSE into the sdist and the wheel's dist-info.
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    text = (PYPROJECT.parent / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
