"""Fallback: green failing before any byte reached the caller is retried once on blue; the
failure still lands in green's metrics and the fallback is counted. Blue failures propagate."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

import openai_bluegreen
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, Telemetry, rollout_config
from .services import free_port, sdk_http

MSGS = [{"role": "user", "content": "hello"}]
# What a stream cut mid-way raises: openai.APIConnectionError on 3.x, the HTTP library's own
# error before.
TRANSPORT_ERROR: type[Exception] = sdk_http().TransportError


def _client(blue: SimulatedUpstream, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0, **kw)


def _assert_fell_back(telemetry: Telemetry, error_type: str) -> None:
    assert telemetry.count("gen_ai.client.operation.duration", bluegreen__environment="green",
                           error__type=error_type) == 1
    assert telemetry.count("gen_ai.client.operation.duration", bluegreen__environment="blue") == 1
    assert telemetry.count("bluegreen.fallbacks", bluegreen__rollout="chat-upgrade") == 1
    (span,) = telemetry.spans()
    attrs = dict(span.attributes or {})
    assert attrs["bluegreen.environment"] == "blue"
    assert attrs["bluegreen.fallback"] is True
    assert attrs["gen_ai.request.model"] == "blue-model"
    assert span.name == "chat blue-model"
    assert "error.type" not in attrs
    (event,) = [e for e in span.events if e.name == "bluegreen.fallback"]
    assert dict(event.attributes or {})["error.type"] == error_type


@pytest.mark.parametrize(("status", "error_type"), [(503, "openai.InternalServerError"),
                                                     (500, "openai.InternalServerError"),
                                                     (429, "openai.RateLimitError")])
def test_green_error_status_falls_back_to_blue(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    status: int, error_type: str,
) -> None:
    green.configure(error_rates={status: 1.0})
    install(rollout_config(green, weight=100))
    out = _client(blue).chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert out.model == "blue-model"
    assert [r.status for r in green.requests] == [status]
    assert len(blue.requests) == 1
    _assert_fell_back(telemetry, error_type)


def test_green_timeout_falls_back_to_blue(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    green.configure(stall_rate=1.0, stall_seconds=5)
    install(rollout_config(green, weight=100))
    out = _client(blue, timeout=0.3).chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert out.model == "blue-model"
    _assert_fell_back(telemetry, "openai.APITimeoutError")


def test_green_refusing_connections_falls_back_to_blue(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    port = free_port()  # a port nobody listens on
    config = rollout_config(green, weight=100)
    config["rollouts"][0]["green"]["base_url"] = f"http://127.0.0.1:{port}/v1"
    install(config)
    out = _client(blue).chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert out.model == "blue-model"
    _assert_fell_back(telemetry, "openai.APIConnectionError")


def test_green_stream_cut_before_first_chunk_falls_back(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    green.configure(disconnect_rate=1.0, disconnect_after_chunks=0)
    install(rollout_config(green, weight=100))
    stream = _client(blue).chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True)
    chunks = list(stream)
    assert {c.model for c in chunks} == {"blue-model"}
    assert len(green.requests) == 1
    assert len(blue.requests) == 1
    (span,) = telemetry.spans()
    assert dict(span.attributes or {})["bluegreen.fallback"] is True
    assert telemetry.count("bluegreen.fallbacks") == 1
    assert telemetry.count("gen_ai.client.operation.time_to_first_chunk",
                           bluegreen__environment="blue") == 1


def test_green_stream_cut_after_first_chunk_reaches_caller_as_error(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    green.configure(disconnect_rate=1.0, disconnect_after_chunks=2)
    install(rollout_config(green, weight=100))
    stream = _client(blue).chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True)
    seen = []
    with pytest.raises(Exception) as caught:
        for chunk in stream:
            seen.append(chunk)
    assert len(seen) == 2
    assert not blue.requests  # bytes had reached the caller: no silent retry
    (span,) = telemetry.spans()
    attrs = dict(span.attributes or {})
    assert attrs["bluegreen.environment"] == "green"
    error = type(caught.value)  # openai's (3.x) or httpx's (1.x, 2.x): fully qualified
    qualified = f"{error.__module__}.{error.__qualname__}"
    assert attrs["error.type"] == qualified
    assert telemetry.count("gen_ai.client.operation.duration", bluegreen__environment="green",
                           error__type=qualified) == 1


def test_blue_failure_propagates_with_the_sdks_exception_type(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    blue.configure(error_rates={503: 1.0})
    client = _client(blue)
    with pytest.raises(openai.APIStatusError) as plain:
        client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    install(rollout_config(green, weight=0))
    with pytest.raises(openai.APIStatusError) as routed:
        client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert type(routed.value) is type(plain.value) is openai.InternalServerError
    assert routed.value.status_code == 503
    (span,) = telemetry.spans()
    assert dict(span.attributes or {})["error.type"] == "openai.InternalServerError"
    assert span.status.status_code.name == "ERROR"
    assert telemetry.count("bluegreen.fallbacks") == 0


def test_green_and_blue_both_failing_raises_blues_error(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    green.configure(error_rates={503: 1.0})
    blue.configure(error_rates={500: 1.0})
    install(rollout_config(green, weight=100))
    with pytest.raises(openai.InternalServerError) as caught:
        _client(blue).chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert caught.value.status_code == 500
    assert telemetry.count("bluegreen.fallbacks") == 1
    assert telemetry.count("gen_ai.client.operation.duration",
                           error__type="openai.InternalServerError",
                           bluegreen__environment="blue") == 1


@pytest.mark.parametrize(("status", "config_change", "error"), [
    pytest.param(503, {"fallback": {"enabled": False}}, openai.InternalServerError,
                 id="fallback-disabled"),
    pytest.param(503, {"fallback": {"on": ["timeout"]}}, openai.InternalServerError,
                 id="class-not-configured"),
    pytest.param(400, {}, openai.BadRequestError, id="client-error"),
])
def test_green_failure_outside_configured_classes_is_not_retried(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    status: int, config_change: dict[str, Any], error: type[Exception],
) -> None:
    green.configure(error_rates={status: 1.0})
    install(rollout_config(green, weight=100, **config_change))
    with pytest.raises(error):
        _client(blue).chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert not blue.requests
    assert telemetry.count("bluegreen.fallbacks") == 0


@pytest.fixture
def green_always_503(install: Any, green: SimulatedUpstream) -> SimulatedUpstream:
    """Green answers every call with 503; the rollout sends every call to green."""
    green.configure(error_rates={503: 1.0})
    install(rollout_config(green, weight=100))
    return green


def test_async_green_failure_falls_back(telemetry: Telemetry, blue: SimulatedUpstream,
                                        green_always_503: SimulatedUpstream) -> None:
    async def main() -> str:
        client = openai.AsyncOpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
        out = await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
        stream = await client.chat.completions.create(model="gpt-4.1", messages=MSGS,
                                                      stream=True)
        models = {chunk.model async for chunk in stream}
        await client.close()
        return out.model + "|" + ",".join(sorted(models))

    assert asyncio.run(main()) == "blue-model|blue-model"
    assert telemetry.count("bluegreen.fallbacks") == 2


def test_green_sdk_retries_are_off_when_fallback_is_on(
    blue: SimulatedUpstream, green_always_503: SimulatedUpstream,
) -> None:
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=2)
    with openai_bluegreen.force("green"):
        assert client.chat.completions.create(model="gpt-4.1", messages=MSGS).model == "blue-model"
    assert len(green_always_503.requests) == 1  # green_max_retries=0: straight to blue


@pytest.mark.parametrize("lifecycle_events", [1, 2])
def test_green_responses_stream_cut_after_its_lifecycle_events_falls_back(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    lifecycle_events: int,
) -> None:
    """response.created / response.in_progress are not the answer: a green stream that fails
    after them, before its first chunk reached the caller, is still retried on blue."""
    green.configure(disconnect_rate=1.0, disconnect_after_chunks=lifecycle_events)
    install(rollout_config(green, weight=100))
    events = list(_client(blue).responses.create(model="gpt-4.1", input="hi", stream=True))
    assert events[0].type == "response.created"
    assert events[-1].response.model == "blue-model"
    assert len(green.requests) == 1
    assert telemetry.count("bluegreen.fallbacks") == 1
    assert telemetry.count("gen_ai.client.operation.time_to_first_chunk",
                           bluegreen__environment="blue") == 1


@pytest.mark.asyncio
async def test_async_green_responses_stream_cut_after_its_first_chunk_reaches_the_caller(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    green.configure(disconnect_rate=1.0, disconnect_after_chunks=3)  # created, in_progress, 1
    install(rollout_config(green, weight=100))
    client = openai.AsyncOpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    seen = []
    with pytest.raises((openai.APIError, TRANSPORT_ERROR)) as caught:  # openai 3.x / httpx
        async for event in await client.responses.create(model="gpt-4.1", input="hi",
                                                         stream=True):
            seen.append(event.type)
    assert seen == ["response.created", "response.in_progress", "response.output_item.added"]
    assert not blue.requests  # bytes of the answer had reached the caller: no silent retry
    assert telemetry.count("bluegreen.fallbacks") == 0
    error = type(caught.value)  # the caller got the SDK's own error, and the span records it
    (span,) = telemetry.spans()
    assert dict(span.attributes or {})["error.type"] == f"{error.__module__}.{error.__qualname__}"
    await client.close()


@pytest.mark.parametrize("surface", ["responses", "chat"])
def test_a_green_stream_failing_in_band_before_its_answer_falls_back(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    surface: str,
) -> None:
    """A Responses stream reports a server error as a ``response.failed`` event, which the SDK
    hands over as an event; a chat stream as an ``error`` event, which it raises."""
    green.configure(stream_failure_rate=1.0)
    install(rollout_config(green, weight=100))
    client = _client(blue)
    if surface == "responses":
        events = list(client.responses.create(model="gpt-4.1", input="hi", stream=True))
        assert events[-1].type == "response.completed"
        assert events[-1].response.model == "blue-model"
        expected = "server_error"  # the provider's error code
    else:
        chunks = list(client.chat.completions.create(model="gpt-4.1", messages=MSGS,
                                                     stream=True))
        assert {c.model for c in chunks} == {"blue-model"}
        expected = "openai.APIError"
    assert len(green.requests) == 1 and len(blue.requests) == 1
    _assert_fell_back(telemetry, expected)


def test_a_green_responses_stream_failing_in_band_without_fallback_is_a_failure(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    green.configure(stream_failure_rate=1.0)
    install(rollout_config(green, weight=100, fallback={"enabled": False}))
    events = list(_client(blue).responses.create(model="gpt-4.1", input="hi", stream=True))
    assert [e.type for e in events] == ["response.created", "response.in_progress",
                                        "response.failed"]
    (span,) = telemetry.spans()
    attrs = dict(span.attributes or {})
    assert attrs["error.type"] == "server_error"
    assert span.status.status_code.name == "ERROR"
    assert telemetry.count("gen_ai.client.operation.duration", bluegreen__environment="green",
                           error__type="server_error") == 1
    # A failure event is not the answer's first chunk.
    assert telemetry.count("gen_ai.client.operation.time_to_first_chunk") == 0


def test_a_green_408_is_a_timeout_and_falls_back(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """The SDK retries a 408 (the server gave up waiting): with its retries off for green, it
    is the ``timeout`` class, or it would reach the caller with neither retry nor fallback."""
    green.configure(error_rates={408: 1.0})
    install(rollout_config(green, weight=100))
    assert _client(blue).chat.completions.create(model="gpt-4.1", messages=MSGS).model == \
        "blue-model"
    _assert_fell_back(telemetry, "openai.APIStatusError")
