"""Attribute values and histogram boundaries follow the GenAI semantic conventions, as
OpenTelemetry's own OpenAI instrumentation emits them (so both can share dashboards)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.responses import Response

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


def test_captured_content_has_the_semconv_message_shape(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
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


@pytest.mark.parametrize("mode", ["", "false", "NO_CONTENT", "EVENT_ONLY", "nonsense"])
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
