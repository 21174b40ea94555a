"""Stream proxies finalize exactly once, however the stream ends, and measure what streams carry."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

import openai_bluegreen
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, Telemetry, rollout_config
from .services import sdk_http

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(install: Any, blue: SimulatedUpstream, green: SimulatedUpstream
           ) -> Iterator[openai.OpenAI]:
    install(rollout_config(green, weight=0))
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
        yield client


@pytest.fixture
async def green_async_client(install: Any, blue: SimulatedUpstream, green: SimulatedUpstream
                             ) -> AsyncIterator[openai.AsyncOpenAI]:
    """An async client of the app's, with every matched call routed to green."""
    install(rollout_config(green, weight=100))
    client = openai.AsyncOpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    yield client
    await client.close()


def _one_span(telemetry: Telemetry) -> dict[str, Any]:
    spans = telemetry.spans()
    assert len(spans) == 1, [s.name for s in spans]
    assert telemetry.count("gen_ai.client.operation.duration") == 1
    return dict(spans[0].attributes or {})


def _stream(client: openai.OpenAI) -> Any:
    return client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True,
                                          stream_options={"include_usage": True})


def test_exhausted_stream_records_usage_ttfc_and_finish_reason(client: openai.OpenAI,
                                                               telemetry: Telemetry) -> None:
    chunks = list(_stream(client))
    assert chunks[-1].usage is not None
    attrs = _one_span(telemetry)
    assert attrs["gen_ai.usage.output_tokens"] == 8
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.response.model"] == "blue-model"
    assert telemetry.count("gen_ai.client.operation.time_to_first_chunk") == 1
    list(_stream(client))  # iterating past the end does not finalize again
    assert len(telemetry.spans()) == 2


def test_closed_early_stream_finalizes_once(client: openai.OpenAI, telemetry: Telemetry) -> None:
    stream = _stream(client)
    next(stream)
    stream.close()
    stream.close()
    attrs = _one_span(telemetry)
    assert "error.type" not in attrs


def test_context_manager_exit_finalizes_once(client: openai.OpenAI, telemetry: Telemetry) -> None:
    with _stream(client) as stream:
        next(stream)
    _one_span(telemetry)


def test_abandoned_stream_finalizes_on_garbage_collection(client: openai.OpenAI,
                                                           telemetry: Telemetry) -> None:
    stream = _stream(client)
    next(stream)
    stream.response.close()  # the app drops the stream without closing it ...
    del stream
    gc.collect()  # ... and the proxy still ends the span
    _one_span(telemetry)


def test_stream_error_is_recorded_and_reaches_caller(client: openai.OpenAI, telemetry: Telemetry,
                                                     blue: SimulatedUpstream) -> None:
    blue.configure(disconnect_rate=1.0, disconnect_after_chunks=3)
    stream = _stream(client)
    with pytest.raises(Exception) as caught:
        list(stream)
    attrs = _one_span(telemetry)
    # openai.APIConnectionError (3.x), httpx.RemoteProtocolError (1.x, 2.x): fully qualified
    error = type(caught.value)
    assert attrs["error.type"] == f"{error.__module__}.{error.__qualname__}"


def test_async_stream_finalizes_once_on_close(install: Any, telemetry: Telemetry,
                                              blue: SimulatedUpstream,
                                              green: SimulatedUpstream) -> None:
    install(rollout_config(green, weight=0))

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
        stream = await client.chat.completions.create(model="gpt-4.1", messages=MSGS,
                                                      stream=True)
        await stream.__anext__()
        await stream.close()
        await stream.close()
        async with await client.chat.completions.create(model="gpt-4.1", messages=MSGS,
                                                        stream=True) as second:
            async for _ in second:
                pass
        await client.close()

    asyncio.run(main())
    assert len(telemetry.spans()) == 2
    assert telemetry.count("gen_ai.client.operation.duration") == 2


def test_stream_proxy_keeps_the_sdk_stream_interface(client: openai.OpenAI) -> None:
    stream = _stream(client)
    assert isinstance(stream, openai.Stream)
    assert stream.response.status_code == 200
    list(stream)
    openai_bluegreen.flush()


def test_cancelled_async_calls_and_streams_are_recorded_as_such(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    """A call cancelled by the app (here ``asyncio.wait_for``) ends its span with
    ``error.type=CancelledError``, and so does a stream cancelled mid-iteration."""
    install(rollout_config(green, weight=0))

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
        blue.configure(latency=2.0)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                client.chat.completions.create(model="gpt-4.1", messages=MSGS), 0.2)
        blue.configure(latency=0.0, ttfc=0.0, chunk_interval=1.0)
        stream = await client.chat.completions.create(model="gpt-4.1", messages=MSGS,
                                                      stream=True)

        async def read_all() -> None:
            async for _ in stream:
                pass

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(read_all(), 0.3)
        await client.close()

    asyncio.run(main())
    spans = telemetry.spans()
    assert len(spans) == 2
    assert {(s.attributes or {}).get("error.type") for s in spans} == {
        "asyncio.exceptions.CancelledError"}
    assert all(not s.status.is_ok for s in spans)
    assert telemetry.count("gen_ai.client.operation.duration",
                           error__type="asyncio.exceptions.CancelledError") == 2


def test_an_exception_leaving_with_stream_is_the_calls_failure_but_closing_early_is_not(
        client: openai.OpenAI, telemetry: Telemetry) -> None:
    """As OpenTelemetry's OpenAI instrumentation records it: an exception raised in the body of
    ``with stream:`` (the app failing on a chunk, an interrupt) fails the call; a generator over
    the stream closed early (``GeneratorExit``) does not."""
    with pytest.raises(ValueError), _stream(client) as stream:
        for _ in stream:
            raise ValueError("the app could not parse this chunk")
    with pytest.raises(KeyboardInterrupt), _stream(client) as stream:
        next(iter(stream))
        raise KeyboardInterrupt

    def relay() -> Any:
        with _stream(client) as stream:
            yield from stream

    chunks = relay()
    next(chunks)
    chunks.close()
    spans = sorted(telemetry.spans(), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {}).get("error.type") for s in spans] == [
        "ValueError", "KeyboardInterrupt", None]
    assert telemetry.count("gen_ai.client.operation.duration", error__type="ValueError") == 1


# stream() helpers: the SDK's helper stream closes the HTTP response past our proxy, and an
# exception leaving its ``with`` block never reaches the proxy.

def test_stream_helper_with_block_error_ends_the_call_at_exit(client: openai.OpenAI,
                                                              telemetry: Telemetry) -> None:
    with pytest.raises(ValueError), client.chat.completions.stream(
            model="gpt-4.1", messages=MSGS) as stream:
        for _ in stream:
            raise ValueError("the app chokes on a chunk")
    # The helper stream is still referenced: the span ended at the with-block's exit.
    attrs = _one_span(telemetry)
    assert attrs["error.type"] == "ValueError"
    assert stream is not None


def test_responses_stream_helper_early_break_ends_the_call_at_exit(
    client: openai.OpenAI, telemetry: Telemetry,
) -> None:
    with client.responses.stream(model="gpt-4.1", input="hi") as stream:
        for _ in stream:
            break
    attrs = _one_span(telemetry)
    assert "error.type" not in attrs
    assert stream is not None


def test_stream_helper_closed_without_with_ends_the_call(client: openai.OpenAI,
                                                         telemetry: Telemetry) -> None:
    manager = client.chat.completions.stream(model="gpt-4.1", messages=MSGS)
    stream = manager.__enter__()
    next(iter(stream))
    stream.close()
    assert "error.type" not in _one_span(telemetry)


@pytest.mark.asyncio
async def test_async_stream_helpers_end_the_call_at_exit(
    green_async_client: openai.AsyncOpenAI, telemetry: Telemetry,
) -> None:
    client = green_async_client
    with pytest.raises(ValueError):
        async with client.chat.completions.stream(model="gpt-4.1", messages=MSGS) as chat:
            async for _ in chat:
                raise ValueError("the app chokes on a chunk")
    async with client.responses.stream(model="gpt-4.1", input="hi") as responses:
        async for _ in responses:
            break
    spans = telemetry.spans()
    assert [dict(s.attributes or {}).get("error.type") for s in spans] == ["ValueError", None]
    assert chat is not None and responses is not None


# with_raw_response(stream=True): the body is the stream that parse() returns.

def test_raw_response_stream_is_measured_to_its_end(client: openai.OpenAI,
                                                    telemetry: Telemetry) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=MSGS, stream=True, stream_options={"include_usage": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.parse() is raw.parse()
    chunks = list(raw.parse())
    assert chunks[-1].usage is not None
    attrs = _one_span(telemetry)
    assert attrs["gen_ai.usage.output_tokens"] == 8
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert telemetry.count("gen_ai.client.operation.time_to_first_chunk") == 1


def test_raw_response_stream_failing_mid_stream_is_a_failure(
    client: openai.OpenAI, telemetry: Telemetry, blue: SimulatedUpstream,
) -> None:
    blue.configure(disconnect_rate=1.0, disconnect_after_chunks=3)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MSGS,
                                                           stream=True)
    with pytest.raises(Exception) as caught:  # the SDK's (3.x) or httpx's (1.x, 2.x)
        list(raw.parse())
    error = type(caught.value)
    assert _one_span(telemetry)["error.type"] == f"{error.__module__}.{error.__qualname__}"


def test_raw_response_stream_never_parsed_ends_when_dropped(client: openai.OpenAI,
                                                            telemetry: Telemetry) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MSGS,
                                                           stream=True)
    raw.http_response.close()
    del raw
    gc.collect()
    attrs = _one_span(telemetry)
    assert "error.type" not in attrs


@pytest.mark.asyncio
async def test_async_raw_response_stream_is_measured_to_its_end(
    green_async_client: openai.AsyncOpenAI, telemetry: Telemetry,
) -> None:
    client = green_async_client
    raw = await client.responses.with_raw_response.create(model="gpt-4.1", input="hi",
                                                          stream=True)
    events = [event async for event in raw.parse()]
    assert events
    attrs = _one_span(telemetry)
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["bluegreen.environment"] == "green"
    assert telemetry.count("gen_ai.client.operation.time_to_first_chunk") == 1


# with_streaming_response: the body is read when the caller parses it.

def test_streaming_response_streamed_is_measured_to_its_end(client: openai.OpenAI,
                                                             telemetry: Telemetry) -> None:
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4.1", messages=MSGS, stream=True,
            stream_options={"include_usage": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = list(response.parse())
    assert chunks[-1].usage is not None
    attrs = _one_span(telemetry)
    assert attrs["gen_ai.usage.output_tokens"] == 8
    assert telemetry.count("gen_ai.client.operation.time_to_first_chunk") == 1


def test_streaming_response_read_without_parse_ends_at_its_headers(
    client: openai.OpenAI, telemetry: Telemetry,
) -> None:
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4.1", messages=MSGS) as response:
        assert response.json()["choices"]
    attrs = _one_span(telemetry)
    assert "gen_ai.usage.output_tokens" not in attrs  # the plugin did not read the body


@pytest.mark.asyncio
async def test_async_streaming_response_records_usage_and_pins_follow_ups(
    green_async_client: openai.AsyncOpenAI, telemetry: Telemetry,
) -> None:
    client = green_async_client
    async with client.responses.with_streaming_response.create(model="gpt-4.1",
                                                               input="hi") as response:
        first = await response.parse()
    openai_bluegreen.set_weight("chat-upgrade", 0)
    follow_up = await client.responses.create(model="gpt-4.1", input="more",
                                              previous_response_id=first.id)
    assert follow_up.model == first.model == "green-model"
    spans = [dict(s.attributes or {}) for s in telemetry.spans()]
    assert spans[0]["gen_ai.usage.output_tokens"] == 8
    assert spans[0]["gen_ai.response.id"] == first.id


def test_streaming_response_stream_left_early_ends_when_the_block_exits(
    client: openai.OpenAI, telemetry: Telemetry,
) -> None:
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4.1", messages=MSGS, stream=True) as response:
        stream = response.parse()
        next(iter(stream))
    assert "error.type" not in _one_span(telemetry)
    assert stream is not None  # still referenced: ended by the block's exit, not by GC


def test_raw_streamed_response_offers_no_close_it_does_not_have(client: openai.OpenAI,
                                                                telemetry: Telemetry) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MSGS,
                                                           stream=True)
    assert not hasattr(raw, "close")  # as the SDK's LegacyAPIResponse: duck typing holds
    list(raw.parse())
    _one_span(telemetry)


@pytest.mark.parametrize("weight", [0, 100])  # blue: no read-ahead; green: its first chunk read
def test_a_stream_dropped_unread_is_measured_to_what_arrived(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    weight: int,
) -> None:
    for upstream in (blue, green):
        upstream.configure(ttfc=1.0)
    install(rollout_config(green, weight=weight))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    stream = _stream(client)
    stream.response.close()
    del stream
    gc.collect()
    points = telemetry.points("gen_ai.client.operation.duration")
    assert len(points) == 1, points  # the dropped stream ended exactly once
    point = points[0][1]
    if weight:  # green: the plugin read up to the first chunk, 1 s in
        assert point.sum >= 0.99
        assert telemetry.count("gen_ai.client.operation.time_to_first_chunk") == 1
    else:  # blue: the headers came at once, the chunk a second later; never 0
        assert 0 < point.sum < 0.9, point
    client.close()


def _refusing_model() -> Any:
    """A response_format whose validator refuses every answer: parse() fails after reading."""
    import pydantic

    class Refused(pydantic.BaseModel):
        answer: str

        @pydantic.field_validator("answer")
        @classmethod
        def _never(cls, value: str) -> str:
            raise ValueError("the app's validator refuses every answer")

    return Refused


def test_a_raw_response_whose_parse_fails_is_the_callers_to_meet_and_still_measured(
        client: openai.OpenAI, telemetry: Telemetry) -> None:
    import pydantic

    Refused = _refusing_model()
    raw = client.chat.completions.with_raw_response.parse(model="gpt-4.1", messages=MSGS,
                                                          response_format=Refused)
    assert raw.headers["x-upstream"] == "blue"  # the caller gets its raw response, as before
    with pytest.raises(pydantic.ValidationError):
        raw.parse()  # and meets the error where it would without us
    attrs = _one_span(telemetry)
    assert "error.type" not in attrs
    assert attrs["gen_ai.usage.output_tokens"] == 8
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)


def test_an_in_band_error_code_outside_the_known_set_is_other() -> None:
    """error.type is a metric attribute: a provider's own codes (possibly one per request)
    must not each make a series."""
    from types import SimpleNamespace

    from openai_bluegreen._streams import in_band_failure

    def failed(code: Any) -> Any:
        return SimpleNamespace(type="response.failed",
                               response=SimpleNamespace(error=SimpleNamespace(code=code)))

    events = [failed("server_error"), failed("invalid_image"), failed("quota_exceeded_req_7"),
              failed(None), SimpleNamespace(type="error", code=None),
              SimpleNamespace(type="error", code="rate_limit_exceeded")]
    codes = [f.code for f in map(in_band_failure, events) if f is not None]
    assert codes == ["server_error", "invalid_image", "_OTHER", "response.failed", "error",
                     "rate_limit_exceeded"]
    assert in_band_failure(SimpleNamespace(type="response.output_text.delta")) is None
    # Every code the installed SDK's ResponseError knows is kept (none becomes _OTHER).
    import typing

    from openai.types.responses.response_error import ResponseError

    for code in typing.get_args(ResponseError.model_fields["code"].annotation):
        failure = in_band_failure(failed(code))
        assert failure is not None and failure.code == code


def _only_span_attrs(telemetry: Telemetry) -> dict[str, Any]:
    openai_bluegreen.flush()
    spans = telemetry.spans()
    assert len(spans) == 1, [s.name for s in spans]
    return dict(spans[0].attributes or {})


def test_an_exception_leaving_a_with_streaming_response_block_fails_the_call(
        client: openai.OpenAI, telemetry: Telemetry) -> None:
    """The SDK's manager closes the response without passing the exception on; it fails the
    call as it does for ``with stream:`` and the ``stream()`` helpers."""
    with pytest.raises(ValueError, match="chokes"), \
            client.chat.completions.with_streaming_response.create(
                model="gpt-4.1", messages=MSGS, stream=True) as response:
        for _ in response.parse():
            raise ValueError("the app chokes on a chunk")
    assert _only_span_attrs(telemetry).get("error.type") == "ValueError"
    assert telemetry.count("gen_ai.client.operation.duration", error__type="ValueError") == 1
    # Never parsed: the exception is the call's failure too.
    with pytest.raises(KeyError), client.chat.completions.with_streaming_response.create(
            model="gpt-4.1", messages=MSGS):
        raise KeyError("before reading")
    assert telemetry.count("gen_ai.client.operation.duration", error__type="KeyError") == 1
    # Parsed whole, then the app fails: the call itself succeeded.
    with pytest.raises(KeyError), client.chat.completions.with_streaming_response.create(
            model="gpt-4.1", messages=MSGS) as response:
        response.parse()
        raise KeyError("after the answer")
    assert telemetry.count("gen_ai.client.operation.duration", error__type="KeyError") == 1


async def test_an_exception_leaving_an_async_with_streaming_response_block_fails_the_call(
        green_async_client: openai.AsyncOpenAI, telemetry: Telemetry) -> None:
    with pytest.raises(ValueError, match="chokes"):
        async with green_async_client.chat.completions.with_streaming_response.create(
                model="gpt-4.1", messages=MSGS, stream=True) as response:
            async for _ in await response.parse():
                raise ValueError("the app chokes on a chunk")
    assert _only_span_attrs(telemetry).get("error.type") == "ValueError"


def _cut_body_client() -> openai.OpenAI:
    httpx2 = sdk_http()

    class CutBody(httpx2.SyncByteStream):  # type: ignore[misc]
        def __iter__(self) -> Iterator[bytes]:
            yield b'{"id": "chatcmpl-1", "object": "chat.completion", "model": "blue-mo'
            raise httpx2.ReadError("connection reset mid-body")

    def handler(request: Any) -> Any:
        return httpx2.Response(200, headers={"content-type": "application/json"},
                               stream=CutBody())

    return openai.OpenAI(base_url="http://upstream.test/v1", api_key=BLUE_KEY, max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def test_a_streaming_response_whose_body_read_fails_is_a_failure(
        install: Any, telemetry: Telemetry, green: SimulatedUpstream) -> None:
    """``parse()`` reads the body: when that read fails, the caller meets a transport error,
    and so must the call's telemetry (on green, the watcher's evidence)."""
    httpx2 = sdk_http()
    install(rollout_config(green, weight=0))
    with pytest.raises(httpx2.ReadError), \
            _cut_body_client().chat.completions.with_streaming_response.create(
                model="gpt-4.1", messages=MSGS) as response:
        response.parse()
    attrs = _only_span_attrs(telemetry)
    assert attrs["error.type"] == f"{httpx2.__name__}.ReadError"
    assert telemetry.count("gen_ai.client.operation.duration", bluegreen__environment="blue",
                           error__type=attrs["error.type"]) == 1


def test_a_streaming_response_whose_parse_fails_after_reading_is_measured_as_an_answer(
        client: openai.OpenAI, telemetry: Telemetry) -> None:
    """A body read whole that the caller's type refuses: the error is the caller's, as with
    ``with_raw_response``, and the answer's usage is still measured."""
    import pydantic

    Refused = _refusing_model()
    with pytest.raises(pydantic.ValidationError), \
            client.chat.completions.with_streaming_response.parse(
                model="gpt-4.1", messages=MSGS, response_format=Refused) as response:
        response.parse()
    attrs = _only_span_attrs(telemetry)
    assert "error.type" not in attrs
    assert attrs["gen_ai.usage.output_tokens"] == 8


@pytest.mark.parametrize("how", ["close", "with", "drop"])
def test_a_green_read_ahead_failure_counts_even_if_the_caller_stops_before_meeting_it(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
        how: str) -> None:
    """Green's stream failed while the plugin read ahead for its first chunk, with a failure
    not configured for fallback: the caller would meet it on its next read. Closing, leaving
    ``with`` or dropping the stream first must not turn green's failure into a success."""
    green.configure(disconnect_rate=1.0, disconnect_after_chunks=0)  # cut before any chunk
    install(rollout_config(green, weight=100,
                           fallback={"enabled": True, "on": ["server_error"]}))
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
        stream = client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True)
        assert not blue.requests  # a connection cut is not configured for fallback
        if how == "close":
            stream.close()
        elif how == "with":
            with stream:
                pass
        else:
            del stream
            gc.collect()
    attrs = _only_span_attrs(telemetry)
    assert attrs["bluegreen.environment"] == "green"
    # openai 3 wraps the cut in APIConnectionError; earlier majors raise httpx's own error.
    assert attrs["error.type"] in ("openai.APIConnectionError", "httpx.RemoteProtocolError"), \
        attrs.get("error.type")


def test_cancelled_while_closing_a_failed_green_stream_still_ends_the_call(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before falling back, the plugin closes green's failed stream; a cancellation arriving
    then (``asyncio.wait_for``) must still end the call, with its span and metrics."""
    green.configure(disconnect_rate=1.0, disconnect_after_chunks=0)
    install(rollout_config(green, weight=100))
    original = openai.AsyncStream.close

    async def slow_close(self: Any) -> None:  # a close that takes a moment (TLS shutdown...)
        await asyncio.sleep(0.5)
        await original(self)

    monkeypatch.setattr(openai.AsyncStream, "close", slow_close)

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.chat.completions.create(
                model="gpt-4.1", messages=MSGS, stream=True), 0.2)
        await client.close()

    asyncio.run(main())
    attrs = _only_span_attrs(telemetry)
    assert attrs.get("error.type") == "asyncio.exceptions.CancelledError"
    assert not blue.requests


def _interleaved_choices_client(kind: str, *, indexed: bool = True) -> openai.OpenAI:
    """An upstream streaming two choices whose chunks interleave, choice 1 finishing first;
    not ``indexed``: one choice, its chunks without an index, its finish reason sent twice."""
    import json

    httpx2 = sdk_http()
    base = {"id": "x-1", "created": 0, "model": "blue-model"}
    if kind == "chat":
        def chunk(index: int, text: str | None, reason: str | None) -> dict[str, Any]:
            return {**base, "object": "chat.completion.chunk", "choices": [
                {"index": index, "delta": {} if text is None else {"content": text},
                 "finish_reason": reason}]}
    else:
        def chunk(index: int, text: str | None, reason: str | None) -> dict[str, Any]:
            return {**base, "object": "text_completion", "choices": [
                {"index": index, "text": text or "", "finish_reason": reason}]}
    events = [chunk(0, "a", None), chunk(1, "b", None), chunk(1, None, "length"),
              chunk(0, "c", None), chunk(0, None, "stop")]
    if not indexed:
        events = [chunk(0, "a", None), chunk(0, None, "stop"), chunk(0, None, "stop")]
        for event in events:
            del event["choices"][0]["index"]
    body = b"".join(b"data: %s\n\n" % json.dumps(e).encode() for e in events) + \
        b"data: [DONE]\n\n"

    def handler(request: Any) -> Any:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return openai.OpenAI(base_url="http://upstream.test/v1", api_key=BLUE_KEY, max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_streamed_choices_finish_reasons_are_in_choice_order_however_they_interleave(
        install: Any, telemetry: Telemetry, green: SimulatedUpstream, kind: str) -> None:
    """``n=2``: choice 1 finishes first, yet ``gen_ai.response.finish_reasons`` lists choice 0's
    reason first, one per choice, as for the same answer not streamed."""
    install(rollout_config(green, weight=0))
    client = _interleaved_choices_client(kind)
    if kind == "chat":
        list(client.chat.completions.create(model="gpt-4.1", messages=MSGS, n=2, stream=True))
    else:
        list(client.completions.create(model="gpt-4.1", prompt="hi", n=2, stream=True))
    assert _only_span_attrs(telemetry)["gen_ai.response.finish_reasons"] == ("stop", "length")


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_a_streamed_choice_without_an_index_has_one_finish_reason(
        install: Any, telemetry: Telemetry, green: SimulatedUpstream, kind: str) -> None:
    """A provider that leaves ``index`` out of its chunks and sends the finish reason twice
    (again with the usage) answered one choice: one reason, not two."""
    install(rollout_config(green, weight=0))
    client = _interleaved_choices_client(kind, indexed=False)
    if kind == "chat":
        list(client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True))
    else:
        list(client.completions.create(model="gpt-4.1", prompt="hi", stream=True))
    assert _only_span_attrs(telemetry)["gen_ai.response.finish_reasons"] == ("stop",)
