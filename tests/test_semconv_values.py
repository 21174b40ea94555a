"""Attribute values and histogram boundaries follow the GenAI semantic conventions, as
OpenTelemetry's own OpenAI instrumentation emits them (so both can share dashboards)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from openai.types.responses import Response

import openai_bluegreen
from openai_bluegreen._router import infer_provider
from openai_bluegreen._telemetry import describe_response
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, Telemetry, rollout_config

MSGS = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("host", "client", "expected"), [
    ("api.openai.com", openai.OpenAI, "openai"),
    ("myres.openai.azure.com", openai.OpenAI, "azure.ai.openai"),
    ("myres.cognitiveservices.azure.com", openai.OpenAI, "azure.ai.openai"),
    ("us-central1-aiplatform.googleapis.com", openai.OpenAI, "gcp.vertex_ai"),
    ("generativelanguage.googleapis.com", openai.OpenAI, "gcp.gemini"),
    ("bedrock-runtime.us-east-1.amazonaws.com", openai.OpenAI, "aws.bedrock"),
    ("api.cohere.ai", openai.OpenAI, "cohere"),
    ("api.deepseek.com", openai.OpenAI, "deepseek"),
    # The host decides before the client class: an Azure app's green on DeepSeek is DeepSeek.
    ("api.deepseek.com", openai.AzureOpenAI, "deepseek"),
    ("127.0.0.1", openai.AzureOpenAI, "azure.ai.openai"),
    ("127.0.0.1", openai.OpenAI, "openai"),
])
def test_provider_is_inferred_from_the_host_before_the_client_class(
    host: str, client: type, expected: str,
) -> None:
    instance = client.__new__(client)  # only its class is looked at
    assert infer_provider(host, instance) == expected


@pytest.mark.parametrize(("base_url", "expected"), [
    ("https://bedrock-mantle.us-east-1.api.aws/v1", "aws.bedrock"),
    ("https://us-south.ml.cloud.ibm.com/ml/gateway/v1", "ibm.watsonx.ai"),
    ("https://myres.services.ai.azure.com/openai/v1/", "azure.ai.openai"),
    ("https://myres.services.ai.azure.com/models", "azure.ai.inference"),
    ("https://my-endpoint.eastus2.models.ai.azure.com/v1", "azure.ai.inference"),
    ("https://models.inference.ai.azure.com", "azure.ai.inference"),
])
def test_provider_of_a_green_on_another_providers_openai_compatible_endpoint_is_its_own(
    base_url: str, expected: str,
) -> None:
    """Endpoints these providers document for the OpenAI SDK are theirs, with their semconv
    well-known value, not ``openai`` (green gets a plain ``OpenAI`` client on its base_url)."""
    client = openai.OpenAI(base_url=base_url, api_key="k")
    assert infer_provider(urlsplit(base_url).hostname, client) == expected


def _response(status: str, output: list[dict[str, Any]], **extra: Any) -> Response:
    return Response.model_validate({
        "id": "resp_1", "object": "response", "created_at": 0, "model": "m", "status": status,
        "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        **extra,
    })


MESSAGE = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
           "content": [{"type": "output_text", "text": "hi", "annotations": []}]}
CALL = {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f", "arguments": "{}",
        "status": "completed"}


@pytest.mark.parametrize(("response", "reasons"), [
    (_response("completed", [MESSAGE]), ("stop",)),
    (_response("completed", [CALL]), ("tool_calls",)),
    (_response("completed", [MESSAGE, CALL]), ("stop", "tool_calls")),
    (_response("incomplete", [MESSAGE],
               incomplete_details={"reason": "max_output_tokens"}), ("length",)),
    (_response("incomplete", [], incomplete_details={"reason": "content_filter"}),
     ("content_filter",)),
    (_response("failed", []), ("error",)),
    (_response("cancelled", []), ("error",)),
    (_response("in_progress", []), ()),
], ids=["message", "function-call", "both", "max-tokens", "filtered", "failed", "cancelled",
        "in-progress"])
def test_responses_api_finish_reasons_use_the_chat_values(response: Response,
                                                          reasons: tuple[str, ...]) -> None:
    assert describe_response(response)[2] == reasons


def test_routed_responses_call_reports_stop_not_its_status(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    client.responses.create(model="gpt-4.1", input="hello")
    for event in client.responses.create(model="gpt-4.1", input="hello", stream=True):
        del event
    spans = telemetry.spans()
    assert [dict(s.attributes or {})["gen_ai.response.finish_reasons"] for s in spans] == [
        ("stop",), ("stop",)]


def test_time_to_first_chunk_uses_the_semconv_boundaries_up_to_82_seconds(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    for chunk in client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True):
        del chunk
    ((_, point),) = telemetry.points("gen_ai.client.operation.time_to_first_chunk")
    # The semantic conventions' boundaries, written out (not the code's constant).
    assert tuple(point.explicit_bounds) == (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28,
                                            2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


def test_request_parameters_are_on_the_span_as_each_environment_sent_them(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    config = rollout_config(green, weight=50, sticky=["user"])
    config["rollouts"][0]["green"]["params"] = {"temperature": 0.1, "max_tokens": 64}
    install(config)
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    for user in (f"user-{i}" for i in range(40)):
        client.chat.completions.create(model="gpt-4.1", messages=MSGS, user=user,
                                       temperature=0.7, max_completion_tokens=256, top_p=0.9,
                                       seed=7, stop=["END"], n=2, frequency_penalty=0.5)
    spans = [dict(s.attributes or {}) for s in telemetry.spans()]
    assert {s["bluegreen.environment"] for s in spans} == {"blue", "green"}
    for attrs in spans:
        green_side = attrs["bluegreen.environment"] == "green"
        assert attrs["gen_ai.request.temperature"] == (0.1 if green_side else 0.7)
        assert attrs["gen_ai.request.max_tokens"] == (64 if green_side else 256)
        assert attrs["gen_ai.request.top_p"] == 0.9
        assert attrs["gen_ai.request.seed"] == 7
        assert attrs["gen_ai.request.stop_sequences"] == ("END",)
        assert attrs["gen_ai.request.choice.count"] == 2
        assert attrs["gen_ai.request.frequency_penalty"] == 0.5
        assert attrs["openai.api.type"] == "chat_completions"
        assert "gen_ai.request.stream" not in attrs
        assert "gen_ai.request.presence_penalty" not in attrs  # not sent


def test_streams_carry_the_stream_flag_and_their_time_to_first_chunk(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    for event in client.responses.create(model="gpt-4.1", input="hi", stream=True,
                                         max_output_tokens=32):
        del event
    client.embeddings.create(model="gpt-4.1", input="hi", encoding_format="float")
    streamed, embedded = (dict(s.attributes or {}) for s in telemetry.spans())
    assert streamed["gen_ai.request.stream"] is True
    assert streamed["openai.api.type"] == "responses"
    assert streamed["gen_ai.request.max_tokens"] == 32
    ((_, point),) = telemetry.points("gen_ai.client.operation.time_to_first_chunk")
    assert streamed["gen_ai.response.time_to_first_chunk"] == pytest.approx(point.sum)
    assert embedded["gen_ai.request.encoding_formats"] == ("float",)
    assert "openai.api.type" not in embedded
    assert "gen_ai.response.time_to_first_chunk" not in embedded


def test_request_parameters_never_become_metric_attributes(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    for seed in range(5):
        client.chat.completions.create(model="gpt-4.1", messages=MSGS, seed=seed)
    points = telemetry.points("gen_ai.client.operation.duration")
    assert len(points) == 1  # one series whatever the seeds
    assert not any(key.startswith("gen_ai.request.") and key != "gen_ai.request.model"
                   for key in points[0][0])


CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
]


def _capturing_on_span(install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
                       monkeypatch: pytest.MonkeyPatch) -> openai.OpenAI:
    """Content capture on spans, every call routed to green; the app's client."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
    install(rollout_config(green, weight=100))
    return openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)


def test_captured_content_has_the_semconv_message_shape(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = _capturing_on_span(install, blue, green, monkeypatch)
    answer = client.chat.completions.create(model="gpt-4.1", messages=CONVERSATION)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gpt-4.1", messages=CONVERSATION, stream=True) if c.choices)
    response = client.responses.create(model="gpt-4.1", instructions="be kind", input="hi")
    chat, chat_stream, responses = (dict(s.attributes or {}) for s in telemetry.spans())
    assert json.loads(chat["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "weather?"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1",
                                         "name": "weather", "arguments": {"city": "Oslo"}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1",
                                    "response": "rain"}]},
    ]
    assert json.loads(chat["gen_ai.output.messages"]) == [{
        "role": "assistant", "finish_reason": "stop",
        "parts": [{"type": "text", "content": answer.choices[0].message.content}]}]
    assert json.loads(chat_stream["gen_ai.output.messages"]) == [{
        "role": "assistant", "finish_reason": "stop",
        "parts": [{"type": "text", "content": streamed}]}]
    assert json.loads(responses["gen_ai.system_instructions"]) == [
        {"type": "text", "content": "be kind"}]
    assert json.loads(responses["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]}]
    assert json.loads(responses["gen_ai.output.messages"]) == [{
        "role": "assistant", "finish_reason": "stop",
        "parts": [{"type": "text", "content": response.output_text}]}]


@pytest.mark.parametrize("mode", ["", "false", "NO_CONTENT", "EVENT_ONLY", "nonsense", "1",
                                  "yes"])
def test_content_is_not_on_spans_unless_span_capture_is_asked_for(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    monkeypatch: pytest.MonkeyPatch, mode: str,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", mode)
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4.1", messages=CONVERSATION)
    (span,) = telemetry.spans()
    assert not any(key.startswith(("gen_ai.input", "gen_ai.output", "gen_ai.system"))
                   for key in dict(span.attributes or {}))


def test_capture_never_changes_or_breaks_the_call(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the SDK accepts, capture must survive without consuming it (a generator is the
    SDK's to read) or sending the call elsewhere."""
    from openai.types.chat.chat_completion_message_function_tool_call import Function

    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)

    def with_calls(calls: Any) -> list[dict[str, Any]]:
        return [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}]

    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    client.chat.completions.create(model="gpt-4.1", messages=with_calls(c for c in [call]))
    client.chat.completions.create(model="gpt-4.1", messages=with_calls([{
        **call, "function": Function(name="f", arguments='{"a": 1}')}]))
    deep = "[" * 5000 + "]" * 5000
    client.chat.completions.create(model="gpt-4.1", messages=with_calls([{
        **call, "function": {"name": "f", "arguments": deep}}]))
    assert [r.body["messages"][1]["tool_calls"][0]["function"]["name"]
            for r in green.requests] == ["f", "f", "f"]
    assert not blue.requests
    spans = [dict(s.attributes or {}) for s in telemetry.spans()]
    assert len(spans) == 3
    assert all(s["bluegreen.environment"] == "green" for s in spans)
    parsed = json.loads(spans[1]["gen_ai.input.messages"])
    assert parsed[1]["parts"][0]["arguments"] == {"a": 1}


def _chat(install: Any, blue: SimulatedUpstream, green: SimulatedUpstream, stream: bool,
          **kwargs: Any) -> openai.OpenAI:
    """Install green at 100 %, make one chat call (a stream read to its end); the client."""
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    result = client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=stream,
                                            **kwargs)
    for chunk in result if stream else ():
        del chunk
    return client


@pytest.mark.parametrize("stream", [False, True])
def test_openai_service_tier_and_fingerprint_are_on_the_span(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    stream: bool,
) -> None:
    client = _chat(install, blue, green, stream, service_tier="flex")
    client.chat.completions.create(model="gpt-4.1", messages=MSGS)  # no tier asked for
    flex, default = (dict(s.attributes or {}) for s in telemetry.spans())
    assert flex["openai.request.service_tier"] == "flex"
    assert flex["openai.response.service_tier"] == "flex"
    assert default["openai.response.service_tier"] == "default"
    assert "openai.request.service_tier" not in default
    # The simulated upstream's fingerprint names the server that answered: green's.
    assert flex["openai.response.system_fingerprint"] == f"fp_{green.name}"
    assert default["openai.response.system_fingerprint"] == f"fp_{green.name}"


def test_responses_api_service_tier_is_on_the_span(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    client.responses.create(model="gpt-4.1", input="hi", service_tier="priority")
    for event in client.responses.create(model="gpt-4.1", input="hi", stream=True):
        del event
    plain, streamed = (dict(s.attributes or {}) for s in telemetry.spans())
    assert plain["openai.response.service_tier"] == "priority"
    assert plain["openai.request.service_tier"] == "priority"
    assert streamed["openai.response.service_tier"] == "default"
    assert "openai.response.system_fingerprint" not in plain  # Responses have none


CACHE_READ = "gen_ai.usage.cache_read.input_tokens"
REASONING = "gen_ai.usage.reasoning.output_tokens"


def test_cached_and_reasoning_tokens_are_on_the_span_as_the_provider_reported_them(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """What a blue/green comparison of cost needs: prompt-cache hits and reasoning tokens, from
    chat's and the Responses API's usage details, streamed or not, sync or async."""
    import asyncio

    green.configure(input_tokens=40, cached_tokens=32, output_tokens=8, reasoning_tokens=5)
    blue.configure(input_tokens=40)  # no cache hit, no reasoning: zeros, as OpenAI reports
    install(rollout_config(green, weight=0))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    usage = {"stream_options": {"include_usage": True}}

    def calls() -> None:
        with openai_bluegreen.force("green"):
            client.chat.completions.create(model="gpt-4.1", messages=MSGS)
            for _ in client.chat.completions.create(model="gpt-4.1", messages=MSGS,
                                                    stream=True, **usage):
                pass
            client.responses.create(model="gpt-4.1", input="hi")
            for _ in client.responses.create(model="gpt-4.1", input="hi", stream=True):
                pass
            client.completions.create(model="gpt-4.1", prompt="hi")
            client.embeddings.create(model="gpt-4.1", input="hi")
        client.chat.completions.create(model="gpt-4.1", messages=MSGS)  # blue
        for _ in client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True):
            pass  # no include_usage: no usage at all

    async def async_calls() -> None:
        aclient = openai.AsyncOpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
        with openai_bluegreen.force("green"):
            await aclient.chat.completions.create(model="gpt-4.1", messages=MSGS)
            async for _ in await aclient.responses.create(model="gpt-4.1", input="hi",
                                                          stream=True):
                pass
        await aclient.close()

    calls()
    asyncio.run(async_calls())
    got = [(s.name, (s.attributes or {}).get(CACHE_READ), (s.attributes or {}).get(REASONING))
           for s in telemetry.spans()]
    assert got == [
        ("chat green-model", 32, 5), ("chat green-model", 32, 5),
        ("chat green-model", 32, 5), ("chat green-model", 32, 5),
        ("text_completion green-model", None, None), ("embeddings green-model", None, None),
        ("chat blue-model", 0, 0), ("chat blue-model", None, None),
        ("chat green-model", 32, 5), ("chat green-model", 32, 5),
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_metrics_carry_the_response_model(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    stream: bool,
) -> None:
    # The simulated upstream answers with the model it was asked for: green's.
    _chat(install, blue, green, stream,
          stream_options={"include_usage": True} if stream else openai.omit)
    names = ["gen_ai.client.operation.duration", "gen_ai.client.token.usage"]
    if stream:
        names.append("gen_ai.client.operation.time_to_first_chunk")
    for name in names:
        points = telemetry.points(name)
        assert points, name
        for attrs, _ in points:
            assert attrs["gen_ai.response.model"] == "green-model", name
            assert attrs["gen_ai.request.model"] == "green-model", name


def test_failed_calls_and_unbounded_response_models_keep_metrics_bounded(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    from openai_bluegreen import _router, _state

    install(rollout_config(green, weight=100, fallback={"enabled": False}))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    green.configure(error_rates={503: 1.0})
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    failed = [a for a, _ in telemetry.points("gen_ai.client.operation.duration")
              if "error.type" in a]
    assert failed and all("gen_ai.response.model" not in a for a in failed)
    # A provider answering with ever new model names cannot grow the series without bound.
    assert _state.router is not None
    (lane,) = [lane for lanes in _state.router._lanes.values() for lane in lanes.values()
               if lane.env == "green"]
    for i in range(_router._MAX_RESPONSE_MODELS + 10):
        lane.response_attrs(f"m-{i}")
    assert len(lane._response_attrs) == _router._MAX_RESPONSE_MODELS
    assert lane.response_attrs("m-new")[0] is lane.metric_attrs
    # The budget is the environment's, not one client's: another client's lane has none left.
    green.configure(error_rates={})
    other = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    other.chat.completions.create(model="gpt-4.1", messages=MSGS)
    lanes = [lane for lanes in _state.router._lanes.values() for lane in lanes.values()
             if lane.env == "green"]
    assert len(lanes) == 2
    assert all(lane.response_attrs("m-other")[0] is lane.metric_attrs for lane in lanes)


@pytest.fixture
def events() -> Any:
    """An SDK LoggerProvider with an in-memory exporter: content events land in it."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        InMemoryLogRecordExporter,
        SimpleLogRecordProcessor,
    )

    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _install_with_events(telemetry: Telemetry, events: Any, green: SimulatedUpstream,
                         monkeypatch: pytest.MonkeyPatch, mode: str, emit: str = ""
                         ) -> tuple[openai.OpenAI, Any]:
    """Install with the capture ``mode`` and ``emit`` variables set and the ``events``
    LoggerProvider; the client and the in-memory log exporter."""
    import openai_bluegreen

    from .conftest import GREEN_KEY

    logger_provider, exporter = events
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", mode)
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_EMIT_EVENT", emit)
    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)
    openai_bluegreen.install(rollout_config(green, weight=100),
                             tracer_provider=telemetry.tracer_provider,
                             meter_provider=telemetry.meter_provider,
                             logger_provider=logger_provider)
    return openai.OpenAI(base_url=green.base_url, api_key=BLUE_KEY, max_retries=0), exporter


@pytest.mark.parametrize(("mode", "on_span", "in_event"), [
    ("EVENT_ONLY", False, True), ("span_and_event", True, True)])
def test_event_modes_emit_one_inference_event_per_call_with_the_content(
    telemetry: Telemetry, events: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
    monkeypatch: pytest.MonkeyPatch, mode: str, on_span: bool, in_event: bool,
) -> None:
    client, exporter = _install_with_events(telemetry, events, green, monkeypatch, mode)
    answer = client.chat.completions.create(model="gpt-4.1", messages=CONVERSATION)
    for chunk in client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True):
        del chunk
    client.embeddings.create(model="gpt-4.1", input="hi")  # not an inference: no event
    spans = telemetry.spans()
    records = [r.log_record for r in exporter.get_finished_logs()]
    assert len(spans) == 3
    assert [r.event_name for r in records] == ["gen_ai.client.inference.operation.details"] * 2
    for span, record in zip(spans, records, strict=False):
        attrs = dict(record.attributes or {})
        # Correlated with its call's span, and carrying its attributes.
        assert (record.trace_id, record.span_id) == (span.context.trace_id, span.context.span_id)
        assert attrs["bluegreen.environment"] == "green"
        assert attrs["gen_ai.response.id"] == dict(span.attributes or {})["gen_ai.response.id"]
        assert ("gen_ai.input.messages" in dict(span.attributes or {})) is on_span
        assert ("gen_ai.input.messages" in attrs) is in_event
    chat = dict(records[0].attributes or {})
    # Structured on events (lists of messages), as util-genai emits them; JSON on spans.
    assert chat["gen_ai.output.messages"][0]["parts"][0]["content"] == \
        answer.choices[0].message.content
    # (the SDK keeps sequences in log attributes as tuples)
    assert chat["gen_ai.input.messages"][0] == {
        "role": "system", "parts": ({"type": "text", "content": "be brief"},)}


@pytest.mark.parametrize(("mode", "emit", "expected"), [
    ("", "", 0),  # nothing asked for: no event, no content
    ("SPAN_ONLY", "", 0),
    ("EVENT_ONLY", "false", 0),  # events turned off explicitly
    ("", "true", 1),  # events without content
])
def test_events_follow_the_emit_event_variable_and_carry_content_only_on_opt_in(
    telemetry: Telemetry, events: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
    monkeypatch: pytest.MonkeyPatch, mode: str, emit: str, expected: int,
) -> None:
    client, exporter = _install_with_events(telemetry, events, green, monkeypatch, mode, emit)
    client.chat.completions.create(model="gpt-4.1", messages=CONVERSATION)
    assert len(telemetry.spans()) == 1
    records = [r.log_record for r in exporter.get_finished_logs()]
    assert len(records) == expected
    for record in records:
        assert not any(key.startswith(("gen_ai.input", "gen_ai.output", "gen_ai.system"))
                       for key in dict(record.attributes or {}))


def test_empty_strings_from_a_provider_are_missing_values() -> None:
    # Azure's first chat-stream chunk (prompt_filter_results) has model "" and id "".
    from openai.types.chat import ChatCompletionChunk

    chunk = ChatCompletionChunk.model_validate({
        "id": "", "object": "chat.completion.chunk", "created": 0, "model": "", "choices": [],
        "system_fingerprint": ""})
    described = describe_response(chunk)
    response_id, model, fingerprint = described[0], described[1], described[6]
    assert (response_id, model, fingerprint) == (None, None, None)


def test_a_streamed_tool_call_is_captured_and_a_failed_stream_ends_in_error() -> None:
    # The SDK's own chunk types, as a provider streams a tool call: id and name in the first
    # fragment, the arguments in pieces.
    from openai.types.chat import ChatCompletionChunk

    from openai_bluegreen._streams import _Accumulated

    def chunk(delta: dict[str, Any], finish: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk.model_validate({
            "id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    acc = _Accumulated()
    for item in (
        chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type":
               "function", "function": {"name": "weather", "arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}),
        chunk({}, "tool_calls"),
    ):
        acc.capture(item)
    assert json.loads(acc.output_json() or "") == [{
        "role": "assistant", "finish_reason": "tool_calls",
        "parts": [{"type": "tool_call", "id": "call_1", "name": "weather",
                   "arguments": {"city": "Oslo"}}]}]
    cut = _Accumulated()
    cut.capture(chunk({"role": "assistant", "content": "Half an ans"}))
    assert json.loads(cut.output_json(failed=True) or "")[0]["finish_reason"] == "error"
    assert json.loads(cut.output_json() or "")[0]["finish_reason"] == "stop"


def test_request_values_follow_the_semconv_types_and_rules(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    import pydantic

    class Answer(pydantic.BaseModel):
        answer: str

    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4.1", messages=MSGS, temperature=0, top_p=1,
                                   presence_penalty=0, service_tier="auto")
    client.chat.completions.parse(model="gpt-4.1", messages=MSGS, response_format=Answer)
    client.chat.completions.create(model="gpt-4.1", messages=MSGS,
                                   response_format={"type": "json_object"})
    # The same parameters but no output format: the lane's shared attribute sets must tell
    # the two apart.
    client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    client.responses.create(model="gpt-4.1", input="hi",
                            text={"format": {"type": "text"}})
    plain, parsed, json_mode, bare, text = (dict(s.attributes or {}) for s in telemetry.spans())
    assert "gen_ai.output.type" not in bare
    for name in ("temperature", "top_p", "presence_penalty"):  # doubles, though given as 0/1
        assert type(plain[f"gen_ai.request.{name}"]) is float
    assert "openai.request.service_tier" not in plain  # not when "auto"
    assert "gen_ai.output.type" not in plain  # no output format asked for
    assert parsed["gen_ai.output.type"] == "json"
    assert json_mode["gen_ai.output.type"] == "json"
    assert text["gen_ai.output.type"] == "text"


def test_captured_content_leaves_embeddings_out_and_inline_images_are_blobs(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = _capturing_on_span(install, blue, green, monkeypatch)
    client.embeddings.create(model="gpt-4.1", input="embed me")
    client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    embedding, chat = (dict(s.attributes or {}) for s in telemetry.spans())
    assert "gen_ai.input.messages" not in embedding  # embeddings inputs are not messages
    assert json.loads(chat["gen_ai.input.messages"]) == [{"role": "user", "parts": [
        {"type": "blob", "modality": "image", "mime_type": "image/png",
         "content": "iVBORw0KGgo="},
        {"type": "uri", "modality": "image", "uri": "https://example.com/cat.png"}]}]


def test_openai_attributes_are_only_on_spans_of_the_openai_api_providers(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """``gen_ai.provider.name`` is the conventions' discriminator: a green on DeepSeek's
    OpenAI-compatible API records no ``openai.*`` attributes ("not expected" on another
    provider's spans); blue, on OpenAI's API, records them all."""
    config = rollout_config(green)
    config["rollouts"][0]["green"]["provider"] = "deepseek"
    install(config)
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    for env in ("blue", "green"):
        with openai_bluegreen.force(env):
            client.chat.completions.create(model="gpt-4.1", messages=MSGS, service_tier="flex")
    spans = {s.attributes["bluegreen.environment"]: dict(s.attributes or {})
             for s in telemetry.spans()}
    openai_keys = {"openai.api.type", "openai.request.service_tier",
                   "openai.response.service_tier", "openai.response.system_fingerprint"}
    assert spans["green"]["gen_ai.provider.name"] == "deepseek"
    assert not openai_keys & set(spans["green"])
    assert spans["blue"]["gen_ai.provider.name"] == "openai"
    assert openai_keys <= set(spans["blue"])
