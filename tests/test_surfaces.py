"""Every routed SDK surface, sync and async, streamed and not, raw and streaming-response:
the call lands on the right server with the right model and key, and its span and metrics carry
the contract's names and values."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from pydantic import BaseModel

import openai_bluegreen
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, GREEN_KEY, Telemetry, rollout_config

MSGS = [{"role": "user", "content": "hello"}]


class Answer(BaseModel):
    text: str
    score: int


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


async def _adrain(stream: Any) -> None:
    async for _ in stream:
        pass


def s_chat(c: openai.OpenAI) -> None:
    assert c.chat.completions.create(model="gpt-4.1", messages=MSGS).choices[0].message.content


def s_chat_stream(c: openai.OpenAI) -> None:
    _drain(c.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True,
                                     stream_options={"include_usage": True}))


def s_chat_parse(c: openai.OpenAI) -> None:
    out = c.chat.completions.parse(model="gpt-4.1", messages=MSGS, response_format=Answer)
    assert isinstance(out.choices[0].message.parsed, Answer)


def s_chat_stream_helper(c: openai.OpenAI) -> None:
    with c.chat.completions.stream(model="gpt-4.1", messages=MSGS) as stream:
        _drain(stream)
        assert stream.get_final_completion().choices[0].message.content


def s_responses(c: openai.OpenAI) -> None:
    assert c.responses.create(model="gpt-4.1", input="hello").output_text


def s_responses_stream(c: openai.OpenAI) -> None:
    _drain(c.responses.create(model="gpt-4.1", input="hello", stream=True))


def s_responses_parse(c: openai.OpenAI) -> None:
    out = c.responses.parse(model="gpt-4.1", input="hello", text_format=Answer)
    assert isinstance(out.output_parsed, Answer)


def s_responses_stream_helper(c: openai.OpenAI) -> None:
    with c.responses.stream(model="gpt-4.1", input="hello") as stream:
        _drain(stream)
        assert stream.get_final_response().output_text


def _beta_responses(c: Any) -> Any:
    """``client.beta.responses`` (openai 2.x and 3.x): it posts to /responses too."""
    if not hasattr(c.beta, "responses"):
        pytest.skip("this SDK has no client.beta.responses")
    return c.beta.responses


def s_beta_responses(c: openai.OpenAI) -> None:
    assert _beta_responses(c).create(model="gpt-4.1", input="hello").output


def s_beta_responses_stream(c: openai.OpenAI) -> None:
    _drain(_beta_responses(c).create(model="gpt-4.1", input="hello", stream=True))


def s_embeddings(c: openai.OpenAI) -> None:
    assert len(c.embeddings.create(model="gpt-4.1", input=["a", "b"]).data) == 2


def s_completions(c: openai.OpenAI) -> None:
    assert c.completions.create(model="gpt-4.1", prompt="hello").choices[0].text


def s_completions_stream(c: openai.OpenAI) -> None:
    _drain(c.completions.create(model="gpt-4.1", prompt="hello", stream=True))


def s_raw(c: openai.OpenAI) -> None:
    raw = c.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MSGS)
    assert raw.parse().choices[0].message.content


def s_raw_stream(c: openai.OpenAI) -> None:
    raw = c.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MSGS,
                                                      stream=True)
    _drain(raw.parse())


def s_streaming_response(c: openai.OpenAI) -> None:
    with c.chat.completions.with_streaming_response.create(model="gpt-4.1",
                                                           messages=MSGS) as resp:
        assert resp.parse().choices[0].message.content


def s_responses_raw(c: openai.OpenAI) -> None:
    assert c.responses.with_raw_response.create(model="gpt-4.1", input="x").parse().output_text


def s_embeddings_streaming_response(c: openai.OpenAI) -> None:
    with c.embeddings.with_streaming_response.create(model="gpt-4.1", input="x") as resp:
        assert resp.parse().data


async def a_beta_responses(c: openai.AsyncOpenAI) -> None:
    assert (await _beta_responses(c).create(model="gpt-4.1", input="hello")).output


async def a_beta_responses_stream(c: openai.AsyncOpenAI) -> None:
    await _adrain(await _beta_responses(c).create(model="gpt-4.1", input="hello", stream=True))


async def a_chat(c: openai.AsyncOpenAI) -> None:
    out = await c.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert out.choices[0].message.content


async def a_chat_stream(c: openai.AsyncOpenAI) -> None:
    await _adrain(await c.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True,
                                                  stream_options={"include_usage": True}))


async def a_chat_parse(c: openai.AsyncOpenAI) -> None:
    out = await c.chat.completions.parse(model="gpt-4.1", messages=MSGS, response_format=Answer)
    assert isinstance(out.choices[0].message.parsed, Answer)


async def a_chat_stream_helper(c: openai.AsyncOpenAI) -> None:
    async with c.chat.completions.stream(model="gpt-4.1", messages=MSGS) as stream:
        await _adrain(stream)
        assert (await stream.get_final_completion()).choices[0].message.content


async def a_responses(c: openai.AsyncOpenAI) -> None:
    assert (await c.responses.create(model="gpt-4.1", input="hello")).output_text


async def a_responses_stream(c: openai.AsyncOpenAI) -> None:
    await _adrain(await c.responses.create(model="gpt-4.1", input="hello", stream=True))


async def a_responses_parse(c: openai.AsyncOpenAI) -> None:
    out = await c.responses.parse(model="gpt-4.1", input="hello", text_format=Answer)
    assert isinstance(out.output_parsed, Answer)


async def a_responses_stream_helper(c: openai.AsyncOpenAI) -> None:
    async with c.responses.stream(model="gpt-4.1", input="hello") as stream:
        await _adrain(stream)
        assert (await stream.get_final_response()).output_text


async def a_embeddings(c: openai.AsyncOpenAI) -> None:
    assert len((await c.embeddings.create(model="gpt-4.1", input=["a", "b"])).data) == 2


async def a_completions(c: openai.AsyncOpenAI) -> None:
    assert (await c.completions.create(model="gpt-4.1", prompt="hello")).choices[0].text


async def a_completions_stream(c: openai.AsyncOpenAI) -> None:
    await _adrain(await c.completions.create(model="gpt-4.1", prompt="hello", stream=True))


async def a_raw(c: openai.AsyncOpenAI) -> None:
    raw = await c.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MSGS)
    assert raw.parse().choices[0].message.content


async def a_streaming_response(c: openai.AsyncOpenAI) -> None:
    async with c.chat.completions.with_streaming_response.create(model="gpt-4.1",
                                                                 messages=MSGS) as resp:
        assert (await resp.parse()).choices[0].message.content


# (id, operation, streamed, tokens recorded, sync call, async call)
CASES: list[tuple[str, str, bool, bool, Callable[[openai.OpenAI], None] | None,
                  Callable[[openai.AsyncOpenAI], Awaitable[None]] | None]] = [
    ("chat", "chat", False, True, s_chat, a_chat),
    ("chat-stream", "chat", True, True, s_chat_stream, a_chat_stream),
    ("chat-parse", "chat", False, True, s_chat_parse, a_chat_parse),
    ("chat-stream-helper", "chat", True, False, s_chat_stream_helper, a_chat_stream_helper),
    ("responses", "chat", False, True, s_responses, a_responses),
    ("responses-stream", "chat", True, True, s_responses_stream, a_responses_stream),
    ("responses-parse", "chat", False, True, s_responses_parse, a_responses_parse),
    ("responses-stream-helper", "chat", True, True, s_responses_stream_helper,
     a_responses_stream_helper),
    ("beta-responses", "chat", False, True, s_beta_responses, a_beta_responses),
    ("beta-responses-stream", "chat", True, True, s_beta_responses_stream,
     a_beta_responses_stream),
    ("embeddings", "embeddings", False, True, s_embeddings, a_embeddings),
    ("completions", "text_completion", False, True, s_completions, a_completions),
    ("completions-stream", "text_completion", True, False, s_completions_stream,
     a_completions_stream),
    ("raw", "chat", False, True, s_raw, a_raw),
    ("raw-stream", "chat", True, False, s_raw_stream, None),
    ("streaming-response", "chat", False, True, s_streaming_response, a_streaming_response),
    ("responses-raw", "chat", False, True, s_responses_raw, None),
    ("embeddings-streaming-response", "embeddings", False, True,
     s_embeddings_streaming_response, None),
]


def _params(kind: str) -> list[Any]:
    out = []
    for case_id, op, streamed, tokens, sync_fn, async_fn in CASES:
        fn = sync_fn if kind == "sync" else async_fn
        if fn is not None:
            for env in ("blue", "green"):
                out.append(pytest.param(op, streamed, tokens, fn, env, id=f"{case_id}-{env}"))
    return out


def _check(telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream, env: str,
           op: str, streamed: bool, tokens: bool) -> None:
    served, idle = (green, blue) if env == "green" else (blue, green)
    model = f"{env}-model"
    assert len(idle.requests) == 0
    assert len(served.requests) == 1
    request = served.requests[0]
    assert request.model == model
    assert request.api_key == (GREEN_KEY if env == "green" else BLUE_KEY)

    spans = telemetry.spans()
    assert len(spans) == 1, [s.name for s in spans]
    span = spans[0]
    attrs = dict(span.attributes or {})
    assert span.name == f"{op} {model}"
    assert span.kind.name == "CLIENT"
    assert attrs["gen_ai.operation.name"] == op
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == model
    assert attrs["bluegreen.rollout"] == "chat-upgrade"
    assert attrs["bluegreen.environment"] == env
    assert attrs["bluegreen.requested_model"] == "gpt-4.1"
    assert attrs["feature_flag.key"] == "chat-upgrade"
    assert attrs["feature_flag.result.variant"] == env
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == served.port
    assert "error.type" not in attrs
    if tokens:
        assert attrs["gen_ai.response.model"] == model
        assert attrs["gen_ai.usage.input_tokens"] > 0
        if op != "embeddings":
            assert attrs["gen_ai.usage.output_tokens"] == 8

    assert telemetry.count("gen_ai.client.operation.duration", bluegreen__environment=env,
                           bluegreen__rollout="chat-upgrade", gen_ai__request__model=model,
                           gen_ai__operation__name=op) == 1
    if tokens:
        assert telemetry.count("gen_ai.client.token.usage", bluegreen__environment=env,
                               gen_ai__token__type="input") == 1
    ttfc = telemetry.count("gen_ai.client.operation.time_to_first_chunk",
                           bluegreen__environment=env)
    assert ttfc == (1 if streamed else 0)


@pytest.mark.parametrize(("op", "streamed", "tokens", "fn", "env"), _params("sync"))
def test_sync_surface_is_routed_with_contract_telemetry(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    op: str, streamed: bool, tokens: bool, fn: Callable[[openai.OpenAI], None], env: str,
) -> None:
    install(rollout_config(green, weight=50))
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client, \
            openai_bluegreen.force(env):  # type: ignore[arg-type]
        fn(client)
    _check(telemetry, blue, green, env, op, streamed, tokens)


@pytest.mark.parametrize(("op", "streamed", "tokens", "fn", "env"), _params("async"))
def test_async_surface_is_routed_with_contract_telemetry(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    op: str, streamed: bool, tokens: bool, fn: Callable[[openai.AsyncOpenAI], Awaitable[None]],
    env: str,
) -> None:
    install(rollout_config(green, weight=50))

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
        with openai_bluegreen.force(env):  # type: ignore[arg-type]
            await fn(client)
        await client.close()

    asyncio.run(main())
    _check(telemetry, blue, green, env, op, streamed, tokens)


def test_unmatched_model_is_untouched(install: Any, telemetry: Telemetry,
                                      blue: SimulatedUpstream, green: SimulatedUpstream) -> None:
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    out = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert out.model == "gpt-4o-mini"
    assert [r.model for r in blue.requests] == ["gpt-4o-mini"]
    assert blue.requests[0].api_key == BLUE_KEY
    assert not green.requests
    assert telemetry.spans() == []


def test_environment_headers_and_params_are_applied(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    config = rollout_config(green, weight=100)
    config["rollouts"][0]["green"]["headers"] = {"x-tenant": "canary"}
    config["rollouts"][0]["green"]["params"] = {"temperature": 0.1, "top_p": 0.5}
    install(config)
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4.1", messages=MSGS, temperature=0.9,
                                   extra_headers={"x-caller": "app"})
    request = green.requests[0]
    assert request.body["temperature"] == 0.1
    assert request.body["top_p"] == 0.5
    assert request.headers["x-tenant"] == "canary"
    assert request.headers["x-caller"] == "app"


def test_green_client_is_derived_from_callers_and_cached(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    install(rollout_config(green, weight=100, fallback={"enabled": False}))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=3,
                           timeout=7.5)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    router = openai_bluegreen._state.router
    assert router is not None
    lanes = router._lanes[client]
    assert len(lanes) == 1
    derived = next(iter(lanes.values())).client
    assert derived is not client
    assert derived.timeout == 7.5
    assert derived.max_retries == 3
    assert derived._client is client._client  # same connection pool
    assert [r.api_key for r in green.requests] == [GREEN_KEY] * 3


@pytest.mark.parametrize("sdk_class", [False, True], ids=["http-lib", "DefaultHttpxClient"])
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_credentials_on_the_callers_http_client_never_reach_another_endpoint(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream, use_async: bool,
    sdk_class: bool,
) -> None:
    """The caller's HTTP client's own auth, headers, query and cookies were added by the HTTP
    library to green's requests too (its auth even replaced green's key): green's client now
    shares only its connection pool."""
    from .services import sdk_http

    http_lib = sdk_http()
    options: dict[str, Any] = {
        "auth": ("gateway-user", "gateway-password"), "headers": {"X-Gateway-Token": "gw-tok"},
        "params": {"gw": "gw-query"}, "cookies": {"session": "gw-cookie"}}
    install(rollout_config(green, weight=100, fallback={"enabled": False}))

    def sent(server: SimulatedUpstream) -> str:
        request = server.requests[-1]
        return f"{request.headers} {request.query}"

    if use_async:
        async def run() -> Any:
            client = openai.AsyncOpenAI(base_url=blue.base_url, api_key=BLUE_KEY,
                                        http_client=(openai.DefaultAsyncHttpxClient
                                                     if sdk_class else http_lib.AsyncClient)(
                                            **options))
            await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
            with openai_bluegreen.force("blue"):
                await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
            return client
        client = asyncio.run(run())
    else:
        client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY,
                               http_client=(openai.DefaultHttpxClient if sdk_class
                                            else http_lib.Client)(**options))
        client.chat.completions.create(model="gpt-4.1", messages=MSGS)
        with openai_bluegreen.force("blue"):
            client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert green.requests[-1].api_key == GREEN_KEY
    for secret in ("gw-tok", "gw-query", "gw-cookie", "Basic "):
        assert secret not in sent(green), sent(green)
        assert secret in sent(blue), sent(blue)  # the caller's own endpoint still gets them
    router = openai_bluegreen._state.router
    assert router is not None
    derived = next(lane.client for lane in router._lanes[client].values()
                   if lane.env == "green")
    assert derived._client._transport is client._client._transport  # same connection pool


@pytest.mark.parametrize("own_endpoint", [True, False], ids=["base_url", "key-only"])
def test_green_follows_the_timeout_and_retries_the_app_sets_on_its_client_later(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream, own_endpoint: bool,
) -> None:
    """The SDK reads ``timeout`` and ``max_retries`` per request, and an app may change them
    on its client (the module client's ``openai.timeout = ...`` does): green's client, built
    at the first call, must not keep the old ones."""
    config = rollout_config(green, weight=100, fallback={"enabled": False})
    if not own_endpoint:
        del config["rollouts"][0]["green"]["base_url"]
    install(config)
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=2, timeout=30)
    assert client.chat.completions.create(model="gpt-4.1", messages=MSGS).model == "green-model"
    client.timeout = 0.2
    client.max_retries = 0
    upstream = green if own_endpoint else blue
    upstream.requests.clear()
    upstream.configure(stall_rate=1.0, stall_seconds=1)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert time.monotonic() - started < 0.9
    assert len(upstream.requests) == 1


def _mock_http_client(answer: dict[str, Any]) -> Any:
    """The SDK's own HTTP client class on a transport that answers every request with
    ``answer`` (httpx2 for openai 3.x, httpx before)."""
    import openai._base_client as base_client

    httpx = getattr(base_client, "httpx2", None) or base_client.httpx
    return openai.DefaultHttpxClient(
        transport=httpx.MockTransport(lambda _request: httpx.Response(200, json=answer)))


@pytest.mark.parametrize("own_endpoint", [True, False], ids=["base_url", "key-only"])
def test_green_answers_are_validated_as_strictly_as_the_callers(
    install: Any, own_endpoint: bool,
) -> None:
    """A caller that asked for strict response validation gets it for green's answers too,
    whether green has its own endpoint (a client of ours) or only its own key (the SDK's
    ``with_options`` copy, which drops the setting)."""
    green = {"model": "green-model", "api_key_env": "GREEN_API_KEY"}
    if own_endpoint:
        green["base_url"] = "http://127.0.0.1:9/v1"
    install({"rollouts": [{"name": "r", "match": {"model": "gpt-4.1"}, "blue": {"model": "b"},
                           "green": green, "weight": 100, "fallback": {"enabled": False}}]})
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key=BLUE_KEY, max_retries=0,
                           http_client=_mock_http_client({"id": "x", "choices": "not a list"}),
                           _strict_response_validation=True)
    with pytest.raises(openai.APIResponseValidationError):
        client.chat.completions.create(model="gpt-4.1", messages=MSGS)


def test_callers_credentials_and_identity_never_reach_another_endpoint(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Green on another base_url gets its own key and headers only: not the caller's key,
    organization, project, default headers (a gateway token) or default query."""
    monkeypatch.setenv("OPENAI_ORG_ID", "org-from-env")
    config = rollout_config(green, weight=100)
    config["rollouts"][0]["green"]["headers"] = {"x-tenant": "canary"}
    install(config)
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, organization="org-blue",
                           project="proj-blue", max_retries=0, default_query={"tenant": "blue"},
                           default_headers={"x-gateway-token": "blue-gateway-secret"})
    client.chat.completions.create(model="gpt-4.1", messages=MSGS,
                                   extra_headers={"x-caller": "app"})
    (request,) = green.requests
    assert request.api_key == GREEN_KEY
    assert request.headers["x-tenant"] == "canary"
    assert request.headers["x-caller"] == "app"  # the call's own headers are the call's
    for name in ("x-gateway-token", "openai-organization", "openai-project"):
        assert name not in request.headers
    assert "tenant" not in request.query
    assert BLUE_KEY not in repr(request.headers)


def test_environment_without_a_key_sends_no_authorization(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    config = rollout_config(green, weight=100)
    del config["rollouts"][0]["green"]["api_key_env"]
    install(config)
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    (request,) = green.requests
    assert "authorization" not in request.headers


@pytest.mark.asyncio
async def test_azure_caller_reaches_a_non_azure_green_as_a_plain_openai_client(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    install(rollout_config(green, weight=100, models="chat-deployment"))
    async with openai.AsyncAzureOpenAI(azure_endpoint=f"http://127.0.0.1:{blue.port}",
                                       api_key=BLUE_KEY, api_version="2024-10-21",
                                       max_retries=0) as client:
        out = await client.chat.completions.create(model="chat-deployment", messages=MSGS)
    assert out.model == "green-model"
    (request,) = green.requests
    assert request.path == "/chat/completions"  # not Azure's /deployments/{model}/...
    assert "api-version" not in request.query
    assert request.api_key == GREEN_KEY
    assert "api-key" not in request.headers
    (span,) = telemetry.spans()
    assert dict(span.attributes or {})["gen_ai.provider.name"] == "openai"  # a 127.0.0.1 host


def test_azure_client_is_routed(install: Any, telemetry: Telemetry, blue: SimulatedUpstream,
                                green: SimulatedUpstream) -> None:
    install(rollout_config(green, weight=0, models="chat-deployment"))
    with openai.AzureOpenAI(azure_endpoint=f"http://127.0.0.1:{blue.port}", api_key=BLUE_KEY,
                            api_version="2024-10-21", max_retries=0) as client:
        out = client.chat.completions.create(model="chat-deployment", messages=MSGS)
    assert out.model == "blue-model"
    assert blue.requests[0].path == "/chat/completions"
    (span,) = telemetry.spans()
    assert dict(span.attributes or {})["gen_ai.provider.name"] == "azure.ai.openai"


def test_an_authorization_of_the_environment_or_the_call_reaches_a_keyless_endpoint(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """No key configured means no key of the caller's, not no Authorization at all: a gateway
    with Basic auth in the environment's headers, or a call's own header, gets through."""
    config = rollout_config(green, weight=100)
    del config["rollouts"][0]["green"]["api_key_env"]
    config["rollouts"][0]["green"]["headers"] = {"authorization": "Basic Z3c6cHc="}
    install(config)
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    config["rollouts"][0]["green"]["headers"] = {}
    install(config)
    client.chat.completions.create(model="gpt-4.1", messages=MSGS,
                                   extra_headers={"Authorization": "Bearer per-call"})
    assert [r.headers.get("authorization") for r in green.requests] == [
        "Basic Z3c6cHc=", "Bearer per-call"]
