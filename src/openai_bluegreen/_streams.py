"""Stream proxies: measure time to first chunk, usage and errors; finalize exactly once.

A proxy wraps the SDK's ``Stream``/``AsyncStream`` and is what the caller iterates. It ends the
call's span and records its metrics once, from whichever comes first: the stream is exhausted, it
raises, it is closed, its context manager exits, or it is garbage-collected unfinished.
"""

from __future__ import annotations

import json
import time
import types
from typing import Any

import wrapt

from . import _telemetry as T
from ._call import NOTHING, Call, StreamFailed, error_type

__all__ = ["PREFETCH_MAX", "AsyncDeferredResponse", "AsyncStreamProxy",
           "ClosableDeferredResponse", "DeferredResponse", "SyncStreamProxy", "counts_as_first",
           "end_helper_stream", "in_band_failure"]

_perf = time.perf_counter
# Responses stream events that are not a chunk of the answer: its lifecycle, and its failure
# reported in band (which the SDK yields as events, not exceptions).
_LIFECYCLE = frozenset({"response.created", "response.in_progress", "response.queued"})
_FAILED = frozenset({"response.failed", "error"})
_NOT_FIRST = _LIFECYCLE | _FAILED


def _known_codes() -> frozenset[str]:
    """The codes a failed Responses response reports: those of the installed SDK's
    ``ResponseError.code`` type, plus OpenAI's API spec's ``ResponseErrorCode`` (for an SDK
    without the type). Any other value (an OpenAI-compatible provider's own, possibly one per
    request) is error.type ``_OTHER``, the semantic conventions' fallback, so it cannot grow
    the metric's series."""
    spec = {"server_error", "rate_limit_exceeded", "invalid_prompt", "data_residency_mismatch",
            "bio_policy", "vector_store_timeout", "invalid_image", "invalid_image_format",
            "invalid_base64_image", "invalid_image_url", "image_too_large", "image_too_small",
            "image_parse_error", "image_content_policy_violation", "invalid_image_mode",
            "image_file_too_large", "unsupported_image_media_type", "empty_image_file",
            "failed_to_download_image", "image_file_not_found"}
    try:
        import typing

        from openai.types.responses.response_error import ResponseError

        sdk = typing.get_args(ResponseError.model_fields["code"].annotation)
    except Exception:  # an SDK without the Responses API
        sdk = ()
    return frozenset(spec | {c for c in sdk if isinstance(c, str)})


_KNOWN_CODES = _known_codes()


def in_band_failure(item: Any) -> StreamFailed | None:
    """The failure a Responses stream event reports (``response.failed``, ``error``), else
    ``None``."""
    kind = getattr(item, "type", None)
    if kind not in _FAILED:
        return None
    source = getattr(getattr(item, "response", None), "error", None) if \
        kind == "response.failed" else item
    code = getattr(source, "code", None)
    if not isinstance(code, str) or not code:
        return StreamFailed(kind)
    # error.type is a metric attribute: the provider's code only from its known, bounded set.
    return StreamFailed(code if code in _KNOWN_CODES else "_OTHER")


class _Accumulated:
    """What the chunks seen so far say about the response."""

    __slots__ = ("by_choice", "details", "fingerprint", "in_tokens", "model", "out_tokens",
                 "output", "reasons", "response_id", "texts", "tier")

    def __init__(self) -> None:
        # opt-in capture: choice -> [text pieces, finish reason, {call index: [id, name, args]}]
        self.texts: dict[int, list[Any]] | None = None
        self.output: str | None = None  # opt-in capture: a Responses stream's final output
        self.response_id: str | None = None
        self.model: str | None = None
        self.reasons: tuple[str, ...] = ()
        # chat and legacy completion chunks: choice index -> its finish reason (made when the
        # first one arrives, so once per choice, not per chunk)
        self.by_choice: dict[int, str] | None = None
        self.in_tokens: int | None = None
        self.out_tokens: int | None = None
        self.tier: str | None = None
        self.fingerprint: str | None = None
        self.details: T.Details | None = None

    def observe(self, item: Any) -> None:
        response = getattr(item, "response", None)
        source = response if response is not None and hasattr(item, "type") else item
        response_id, model, reasons, in_tokens, out_tokens, tier, fingerprint, details = \
            T.describe_response(source)
        if response_id is not None:
            self.response_id = response_id
        if model is not None:
            self.model = model
        if reasons:
            # A Responses lifecycle event carries the whole status; chat chunks add theirs.
            self.reasons = reasons if source is not item else self._by_choice(item)
        if in_tokens is not None:
            self.in_tokens = in_tokens
        if out_tokens is not None:
            self.out_tokens = out_tokens
        if tier is not None:
            self.tier = tier
        if fingerprint is not None:
            self.fingerprint = fingerprint
        if details is not None:
            self.details = details

    def _by_choice(self, chunk: Any) -> tuple[str, ...]:
        """The finish reasons so far, one per choice in choice-index order, as a non-streamed
        answer lists them: with ``n`` > 1 the choices' chunks interleave and finish in any
        order (and a provider that repeats a choice's finish reason does not count it twice)."""
        by_choice = self.by_choice
        if by_choice is None:
            by_choice = self.by_choice = {}
        for choice in chunk.choices:
            reason = getattr(choice, "finish_reason", None)
            if reason:
                index = getattr(choice, "index", None)
                # A provider that leaves the index out sends one choice: choice 0 (a numbering
                # of our own would count a repeated finish reason twice).
                by_choice[index if isinstance(index, int) else 0] = reason
        return tuple(by_choice[index] for index in sorted(by_choice))

    def capture(self, item: Any) -> None:
        """Opt-in content capture: keep the answer's text as it streams."""
        response = getattr(item, "response", None)
        if response is not None and getattr(item, "type", None) == "response.completed":
            self.output = T.output_messages_json(response)
            return
        for choice in getattr(item, "choices", None) or ():
            delta = getattr(choice, "delta", None)
            text = getattr(delta, "content", None) if delta is not None else \
                getattr(choice, "text", None)
            texts = self.texts if self.texts is not None else {}
            self.texts = texts
            index = getattr(choice, "index", 0)
            entry = texts.get(index)
            if entry is None:
                entry = texts[index] = [[], None, {}]
            if isinstance(text, str):
                entry[0].append(text)
            # Tool calls stream as fragments per call index: id and name once, the
            # arguments in pieces.
            for call in getattr(delta, "tool_calls", None) or ():
                parts = entry[2].setdefault(getattr(call, "index", 0), [None, None, []])
                function = getattr(call, "function", None)
                parts[0] = getattr(call, "id", None) or parts[0]
                parts[1] = getattr(function, "name", None) or parts[1]
                arguments = getattr(function, "arguments", None)
                if isinstance(arguments, str):
                    parts[2].append(arguments)
            if getattr(choice, "finish_reason", None):
                entry[1] = choice.finish_reason

    def output_json(self, failed: bool = False) -> str | None:
        """The streamed answer as ``gen_ai.output.messages``; a stream that ended without a
        finish reason ends with ``error`` when it failed, else ``stop``."""
        if self.output is not None or not self.texts:
            return self.output
        return T.dumps([
            {"role": "assistant",
             "parts": ([{"type": "text", "content": "".join(texts)}] if texts or not calls
                       else []) + [T.tool_call_part(call_id, name, "".join(arguments))
                                   for _, (call_id, name, arguments) in sorted(calls.items())],
             "finish_reason": reason or ("error" if failed else "stop")}
            for _, (texts, reason, calls) in sorted(self.texts.items())])

    def described(self) -> T.Described:
        return (self.response_id, self.model, self.reasons, self.in_tokens, self.out_tokens,
                self.tier, self.fingerprint, self.details)


def _escaped(exc: BaseException | None) -> BaseException | None:
    """The failure an exception leaving ``with stream:`` makes of the call: any exception,
    including the app's own (say, failing to parse green's chunks) and cancellation, as
    OpenTelemetry's OpenAI instrumentation records it; not ``GeneratorExit``, which is a
    consumer closing early."""
    return None if exc is None or isinstance(exc, GeneratorExit) else exc


def counts_as_first(item: Any) -> bool:
    """Whether a stream item is a chunk of the answer (a Responses stream's lifecycle events,
    ``response.created`` and the like, and its failure events are not)."""
    return getattr(item, "type", None) not in _NOT_FIRST


PREFETCH_MAX = 8  # items read ahead of the caller, at most, looking for the first chunk


class _StreamProxyBase(wrapt.ObjectProxy[Any]):
    """State and bookkeeping shared by the sync and async proxies (no I/O)."""

    def __init__(self, stream: Any, call: Call, pending: list[Any] | None = None,
                 pending_error: BaseException | None = None, first_at: float | None = None) -> None:
        super().__init__(stream)
        self._self_call = call
        self._self_pending = pending or None  # read ahead, not yet handed to the caller
        self._self_error = pending_error
        self._self_done = False
        self._self_first = first_at is not None
        # The headers are in (the SDK hands out the stream then): a stream dropped unread ends
        # here, not at the call's start.
        self._self_last = first_at if first_at is not None else _perf()
        self._self_acc = _Accumulated()
        self._self_failed: StreamFailed | None = None
        self._self_responses = call.api_type == "responses"
        for item in pending or ():  # read now: their time to first chunk is now
            self._bg_observe(item)

    def _bg_take_pending(self) -> Any:
        pending = self._self_pending
        assert pending is not None
        item = pending.pop(0)
        if not pending:
            self._self_pending = None
        return item

    def _bg_observe(self, item: Any) -> None:
        try:
            now = _perf()
            self._self_last = now
            acc = self._self_acc
            acc.observe(item)  # first: the first chunk's model goes on time to first chunk
            if self._self_responses:
                self._self_failed = in_band_failure(item) or self._self_failed
            if not self._self_first and counts_as_first(item):
                self._self_first = True
                self._self_call.first_chunk(now, acc.model)
            if self._self_call.router.capture_content:
                acc.capture(item)
        except Exception:  # telemetry must never break the caller's iteration
            return

    def _bg_finalize(self, error: BaseException | None, abandoned: bool = False) -> None:
        if self._self_done:
            return
        self._self_done = True
        # A read-ahead failure still waiting for the caller's next read is the call's failure
        # when the caller closes or drops the stream first: the upstream failed all the same.
        failure = error if error is not None else (self._self_error or self._self_failed)
        try:
            if self._self_call.router.capture_content:
                self._self_call.output = self._self_acc.output_json(failure is not None)
            self._self_call.finished(self._self_acc.described(),
                                     None if failure is None else error_type(failure),
                                     self._self_last if abandoned else _perf())
        except Exception:
            return

    def __del__(self) -> None:
        self._bg_finalize(None, abandoned=True)


class SyncStreamProxy(_StreamProxyBase):
    """Proxy for ``openai.Stream``."""

    def __iter__(self) -> SyncStreamProxy:
        return self

    def __next__(self) -> Any:
        if self._self_pending is not None:
            return self._bg_take_pending()  # observed when read
        if self._self_error is not None:
            error, self._self_error = self._self_error, None
            self._bg_finalize(error)
            raise error
        try:
            item = self.__wrapped__.__next__()
        except StopIteration:
            self._bg_finalize(None)
            raise
        except BaseException as exc:  # errors, and cancellation or interrupts
            self._bg_finalize(exc)
            raise
        self._bg_observe(item)
        return item

    def __enter__(self) -> SyncStreamProxy:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            self._bg_finalize(_escaped(exc_info[1]))

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._bg_finalize(None)


class AsyncStreamProxy(_StreamProxyBase):
    """Proxy for ``openai.AsyncStream``."""

    def __aiter__(self) -> AsyncStreamProxy:
        return self

    async def __anext__(self) -> Any:
        if self._self_pending is not None:
            return self._bg_take_pending()  # observed when read
        if self._self_error is not None:
            error, self._self_error = self._self_error, None
            self._bg_finalize(error)
            raise error
        try:
            item = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            self._bg_finalize(None)
            raise
        except BaseException as exc:  # errors, and cancellation or interrupts
            self._bg_finalize(exc)
            raise
        self._bg_observe(item)
        return item

    async def __aenter__(self) -> AsyncStreamProxy:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            self._bg_finalize(_escaped(exc_info[1]))

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._bg_finalize(None)

    async def aclose(self) -> None:
        await self.close()


def fields(body: bytes | str) -> Any:
    """A response body's JSON fields as attributes (what telemetry reads off a parsed answer),
    or ``None`` when it is not JSON: measured without the answer's numbers."""
    try:
        return json.loads(body, object_hook=lambda found: types.SimpleNamespace(**found))
    except Exception:
        return None


def end_helper_stream(helper: Any, error: BaseException | None) -> None:
    """A ``stream()`` helper's stream (``ChatCompletionStream``, ``ResponseStream`` and their
    async twins) is done: end our proxy's call. The helper closes the HTTP response itself, past
    our proxy, and an exception leaving its ``with`` block (the app's own, or the helper's
    parsing of the final chunk) never passes through our proxy."""
    if isinstance(helper, _DeferredResponse):  # with_streaming_response's response
        helper._bg_escaped(_escaped(error))
        return
    raw = getattr(helper, "_raw_stream", None)
    if isinstance(raw, _StreamProxyBase):
        raw._bg_finalize(_escaped(error))


class _DeferredResponse(wrapt.ObjectProxy[Any]):
    """Proxy for a call's response whose body the caller reads later through ``parse()``: a
    streamed ``with_raw_response`` result, or any ``with_streaming_response`` one. What
    ``parse()`` returns is measured: a stream through our stream proxy (time to first chunk,
    usage, errors), a model object at once (usage, response id). A response never parsed (its
    body read some other way, or not at all) ends the call when it is dropped, at the time its
    headers arrived."""

    def __init__(self, response: Any, call: Call, stream_types: tuple[type, type]) -> None:
        super().__init__(response)
        self._self_call = call
        self._self_types = stream_types
        self._self_headers_at = _perf()
        self._self_result: Any = None
        self._self_out: Any = None
        self._self_taken = False

    def _bg_take(self, result: Any) -> Any:
        if self._self_taken:  # measured once: the same object again, or another parse
            return self._self_out if result is self._self_result else result
        self._self_taken = True
        sync_type, async_type = self._self_types
        call = self._self_call
        out: Any = result
        try:
            if isinstance(result, sync_type):
                out = SyncStreamProxy(result, call)
            elif isinstance(result, async_type):
                out = AsyncStreamProxy(result, call)
            else:
                call.succeeded(result)
        except Exception:  # telemetry must never break the caller
            out = result
        self._self_result, self._self_out = result, out
        return out

    def _bg_escaped(self, error: BaseException | None) -> None:
        """An exception left ``with_streaming_response``'s ``with`` block (the SDK's manager
        closes the response without passing it on): it fails the call unless the call was
        already measured whole (a model object, parsed)."""
        if error is None:
            return
        if not self._self_taken:
            self._bg_fail(error)
        elif isinstance(self._self_out, _StreamProxyBase):
            self._self_out._bg_finalize(error)

    def _bg_parse_failed(self, error: BaseException) -> None:
        """``parse()`` raised. If reading the body failed (a connection cut mid-body, a
        timeout), so did the call. If the body was read and turning it into the caller's type
        failed (a schema the answer fails, ``LengthFinishReasonError``), the error is the
        caller's to meet, as without us, and the call is measured from the body's fields."""
        if self._self_taken:
            return
        try:
            body = self.__wrapped__.http_response.content  # raises when it was never read
        except Exception:
            self._bg_fail(error)
            return
        self._bg_take(fields(body))

    def _bg_fail(self, error: BaseException) -> None:
        """End the call, never measured yet, as failed with ``error``."""
        self._self_taken = True
        try:
            self._self_call.finished(NOTHING, error_type(error), _perf())
        except Exception:  # telemetry must never break the caller
            return

    def _bg_closed(self, at: float) -> None:
        """The response is closed (``with_streaming_response``'s block exited): end the call,
        or the stream parsed from it, which the SDK closed past our stream proxy."""
        try:
            if not self._self_taken:
                self._self_taken = True
                self._self_call.finished(NOTHING, None, at)
            elif isinstance(self._self_out, _StreamProxyBase):
                self._self_out._bg_finalize(None)
        except Exception:
            return

    def __del__(self) -> None:
        if not self._self_taken:
            self._bg_closed(self._self_headers_at)


class DeferredResponse(_DeferredResponse):
    """A response whose ``parse()`` is a plain call and that has no ``close()``
    (``LegacyAPIResponse``: the proxy must not offer one either)."""

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self.__wrapped__.parse(*args, **kwargs)
        except BaseException as exc:
            self._bg_parse_failed(exc)
            raise
        return self._bg_take(result)


class ClosableDeferredResponse(DeferredResponse):
    """``APIResponse`` (``with_streaming_response``): ``parse()`` and ``close()``."""

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._bg_closed(_perf())


class AsyncDeferredResponse(_DeferredResponse):
    """A response whose ``parse()`` is a coroutine (``AsyncAPIResponse``)."""

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await self.__wrapped__.parse(*args, **kwargs)
        except BaseException as exc:
            self._bg_parse_failed(exc)
            raise
        return self._bg_take(result)

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._bg_closed(_perf())
