"""No API key anywhere in telemetry; message content only on opt-in; bounded metric labels."""

from __future__ import annotations

import json
import urllib.parse
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


def test_prometheus_credentials_echoed_by_an_answer_are_masked_in_its_errors() -> None:
    """A proxy in front of Prometheus that echoes the Authorization header (or the password) in
    its answer: the source's errors, which reach logs, status() and the decision telemetry,
    carry neither."""
    import base64
    import http.server
    import threading
    import time

    from openai_bluegreen.sources import SourceUnavailable
    from openai_bluegreen.sources.prometheus import PrometheusSource

    password = "pr0m/Pass:word"
    token = base64.b64encode(f"admin:{password}".encode()).decode()
    answers = [
        (401, lambda auth: json.dumps({"status": "error", "error": f"bad {auth}"})),
        (200, lambda auth: json.dumps({"status": "error", "error": f"no {password} {auth}"})),
        (200, lambda auth: f"<html>{password} {auth}</html>"),
    ]
    which = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answers[which[0]]
            data = body(self.headers.get("Authorization", "")).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://admin:{urllib.parse.quote(password, safe='')}@127.0.0.1:" \
              f"{server.server_address[1]}"
        for index, (status, _) in enumerate(answers):
            which[0] = index
            with pytest.raises(SourceUnavailable) as info:
                PrometheusSource(url).snapshot(time.time())
            message = str(info.value)
            assert ("HTTP 401" in message) == (status == 401), message
            for secret in (token, password, urllib.parse.quote(password, safe="")):
                assert secret not in message, message
            assert "***" in message, message
    finally:
        server.shutdown()
        server.server_close()
