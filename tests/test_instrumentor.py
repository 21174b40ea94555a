"""Zero-code: ``opentelemetry-instrument python app.py`` routes an app that never imports us."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import openai
import pytest

import openai_bluegreen
from openai_bluegreen import ConfigError
from openai_bluegreen.instrumentation import BlueGreenInstrumentor
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, GREEN_KEY, Telemetry, rollout_config

APP = textwrap.dedent("""
    import os
    import openai
    client = openai.OpenAI(base_url=os.environ["BLUE_URL"], api_key="k", max_retries=0)
    for i in range(40):
        client.chat.completions.create(model="gpt-4.1", user=f"u{i}",
                                       messages=[{"role": "user", "content": "x"}])
""")


def _instrument_command() -> str:
    found = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
    assert found, "opentelemetry-instrument is missing: install the 'dev' extra"
    return found


def test_opentelemetry_instrument_routes_unchanged_app(tmp_path: Path, blue: SimulatedUpstream,
                                                       green: SimulatedUpstream) -> None:
    config = tmp_path / "openai-bluegreen.json"
    config.write_text(json.dumps(rollout_config(green, weight=100)))
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = {**os.environ, "OPENAI_BLUEGREEN_CONFIG": str(config), "GREEN_API_KEY": GREEN_KEY,
           "BLUE_URL": blue.base_url, "OTEL_TRACES_EXPORTER": "none",
           "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
           # Disabling the plain OpenAI instrumentation must not disable ours.
           "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "openai"}
    done = subprocess.run([_instrument_command(), sys.executable, str(app)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert len(green.requests) == 40
    assert {r.model for r in green.requests} == {"green-model"}
    assert not blue.requests


def test_instrumentor_uses_the_providers_it_is_given(telemetry: Telemetry,
                                                     blue: SimulatedUpstream,
                                                     green: SimulatedUpstream,
                                                     monkeypatch: Any) -> None:
    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)
    instrumentor = BlueGreenInstrumentor()
    instrumentor.instrument(config=rollout_config(green, weight=100),
                            tracer_provider=telemetry.tracer_provider,
                            meter_provider=telemetry.meter_provider)
    try:
        with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
            client.chat.completions.create(model="gpt-4.1",
                                           messages=[{"role": "user", "content": "x"}])
    finally:
        instrumentor.uninstrument()
    assert [s.name for s in telemetry.spans()] == ["chat green-model"]
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
        out = client.chat.completions.create(model="gpt-4.1",
                                             messages=[{"role": "user", "content": "x"}])
    assert out.model == "gpt-4.1"


def _run_instrumented(tmp_path: Path, blue: SimulatedUpstream, config: dict[str, Any],
                      **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "openai-bluegreen.json"
    path.write_text(json.dumps(config))
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = {**os.environ, "OPENAI_BLUEGREEN_CONFIG": str(path), "BLUE_URL": blue.base_url,
           "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none", **env}
    return subprocess.run([_instrument_command(), sys.executable, str(app)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_instrument_extra_exports_the_routed_calls_spans(
        tmp_path: Path, blue: SimulatedUpstream, green: SimulatedUpstream) -> None:
    """``opentelemetry-instrument`` configures the SDK only with opentelemetry-distro, which
    the ``instrument`` extra brings: without it no span would leave the app."""
    done = _run_instrumented(tmp_path, blue, rollout_config(green, weight=100),
                             GREEN_API_KEY=GREEN_KEY, OTEL_TRACES_EXPORTER="console",
                             OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="openai")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('"name": "chat green-model"') == 40, done.stdout[-2000:]
    assert GREEN_KEY not in done.stdout


def test_a_bad_config_under_opentelemetry_instrument_leaves_the_app_and_other_instrumentors(
        tmp_path: Path, blue: SimulatedUpstream, green: SimulatedUpstream,
        monkeypatch: Any) -> None:
    monkeypatch.delenv("GREEN_API_KEY", raising=False)
    done = _run_instrumented(tmp_path, blue, rollout_config(green, weight=100))
    assert done.returncode == 0, done.stderr
    assert "openai-bluegreen: not routing any call" in done.stderr
    assert "rollouts[0].green.api_key_env" in done.stderr
    assert len(blue.requests) == 40 and {r.model for r in blue.requests} == {"gpt-4.1"}
    assert not green.requests
    # OpenTelemetry's loader stops at the first instrumentor that raises: ours must not.
    path = tmp_path / "openai-bluegreen.json"
    monkeypatch.setenv("OPENAI_BLUEGREEN_CONFIG", str(path))
    instrumentor = BlueGreenInstrumentor()
    try:
        instrumentor.instrument()  # from the environment: logged, not raised
        assert not openai_bluegreen.status()["installed"]
    finally:
        instrumentor.uninstrument()
    try:
        with pytest.raises(ConfigError, match="api_key_env"):  # asked for in code: raised
            instrumentor.instrument(config=rollout_config(green, weight=100))
    finally:
        instrumentor.uninstrument()
