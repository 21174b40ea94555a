"""No API key anywhere in telemetry; message content only on opt-in; bounded metric labels."""

from __future__ import annotations

from typing import Any

import openai
import pytest

import openai_bluegreen
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, GREEN_KEY, Telemetry, rollout_config

SECRET_PROMPT = "my card number is 4111-1111"


def _all_telemetry_text(telemetry: Telemetry) -> str:
    parts = []
    for span in telemetry.spans():
        parts.append(span.to_json())
    data = telemetry.reader.get_metrics_data()
    parts.append(data.to_json() if data else "")
    return "\n".join(parts)


def _traffic(blue: SimulatedUpstream) -> None:
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    for env in ("blue", "green"):
        with openai_bluegreen.force(env):  # type: ignore[arg-type]
            client.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": SECRET_PROMPT}],
                user="user-123456")
            list(client.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": SECRET_PROMPT}],
                stream=True))


def test_no_key_no_content_no_user_by_default(install: Any, telemetry: Telemetry,
                                              blue: SimulatedUpstream,
                                              green: SimulatedUpstream,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    install(rollout_config(green, weight=50))
    _traffic(blue)
    text = _all_telemetry_text(telemetry)
    assert len(telemetry.spans()) == 4
    for secret in (BLUE_KEY, GREEN_KEY, SECRET_PROMPT, "user-123456", "blue green rollout"):
        assert secret not in text, secret
    labels = {key for attrs, _ in telemetry.points("gen_ai.client.operation.duration")
              for key in attrs}
    assert labels <= {"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
                      "gen_ai.response.model", "server.address", "server.port",
                      "bluegreen.rollout", "bluegreen.environment", "error.type"}


def test_content_is_captured_only_on_opt_in(install: Any, telemetry: Telemetry,
                                            blue: SimulatedUpstream, green: SimulatedUpstream,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    install(rollout_config(green, weight=50))
    _traffic(blue)
    spans = telemetry.spans()
    assert len(spans) == 4  # every call has its span (capture must not fail a call open)
    inputs = [dict(s.attributes or {}).get("gen_ai.input.messages", "") for s in spans]
    assert all(SECRET_PROMPT in text for text in inputs)
    outputs = [dict(s.attributes or {}).get("gen_ai.output.messages") for s in spans]
    assert all("blue green rollout" in (o or "") for o in outputs)  # streamed ones too
    text = _all_telemetry_text(telemetry)
    assert BLUE_KEY not in text and GREEN_KEY not in text
