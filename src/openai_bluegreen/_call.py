"""One routed call's lifecycle: span, metrics, fallback decision. No I/O here.

The sync and async wrappers in ``_patch`` carry out the upstream calls; everything they share
(starting the span, recording success or failure, deciding on fallback, switching to blue) lives
in :class:`Call` so the two differ only where one awaits.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import _telemetry as T
from ._router import Lane, RolloutRuntime, Router

__all__ = ["Call", "classify", "error_type"]

_perf = time.perf_counter


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """The HTTP library's timeout and transport errors (httpx2 for openai 3.x, httpx before)."""
    import openai._base_client as base_client

    module = getattr(base_client, "httpx2", None) or getattr(base_client, "httpx", None)
    if module is None:  # pragma: no cover - every supported SDK has one of them
        return (), ()
    return (module.TimeoutException,), (module.TransportError,)


_TIMEOUTS, _TRANSPORT = _transport_errors()


def classify(exc: BaseException) -> str | None:
    """The fallback class of an upstream failure, or ``None`` for one that must not fall back."""
    import openai

    if isinstance(exc, openai.APITimeoutError) or isinstance(exc, _TIMEOUTS):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError) or isinstance(exc, _TRANSPORT):
        return "connection"
    if isinstance(exc, openai.RateLimitError):
        return "rate_limit"
    if isinstance(exc, openai.APIStatusError):
        return "server_error" if exc.status_code >= 500 else None
    if isinstance(exc, openai.APIError):  # an error event inside a stream
        return "server_error"
    return None


def error_type(exc: BaseException) -> str:
    """``error.type``: the exception class name (low cardinality, never the message)."""
    return type(exc).__qualname__


class Call:
    """State of one logical call, from routing decision to the end of its span."""

    __slots__ = ("fell_back", "kwargs", "lane", "prefetch", "rollout", "router", "span", "start",
                 "stream", "token")

    def __init__(self, router: Router, rollout: RolloutRuntime, operation: str, instance: Any,
                 kwargs: dict[str, Any]) -> None:
        self.router = router
        self.rollout = rollout
        self.kwargs = kwargs
        env = rollout.choose(kwargs)
        requested = kwargs["model"]
        self.lane: Lane = router.lane(instance, rollout, env, operation, requested)
        self.stream = kwargs.get("stream") is True
        self.prefetch = self.stream and env == "green" and rollout.fallback_enabled
        self.fell_back = False
        lane = self.lane
        span = router.tracer.start_span(lane.span_name, kind=SpanKind.CLIENT,
                                        attributes=lane.span_attrs)
        if router.capture_content:
            text = T.input_messages_json(kwargs)
            if text is not None:
                span.set_attribute(T.INPUT_MESSAGES, text)
        self.span = span
        self.token = context.attach(trace.set_span_in_context(span))
        self.start = _perf()

    def detach(self) -> None:
        context.detach(self.token)

    def arguments(self) -> dict[str, Any]:
        return self.lane.rewrite(self.kwargs)

    def should_fall_back(self, exc: BaseException) -> bool:
        """Green failed before any byte reached the caller: retry on blue if configured."""
        if self.lane.env != "green" or self.fell_back or not self.rollout.fallback_enabled:
            return False
        kind = classify(exc)
        return kind is not None and kind in self.rollout.fallback_on

    def switch_to_blue(self, exc: BaseException, instance: Any) -> None:
        """Record green's failure in green's metrics, count the fallback, continue on blue."""
        green = self.lane
        etype = error_type(exc)
        instruments = self.router.instruments
        instruments.duration.record(_perf() - self.start, green.attrs_for_error(etype))
        instruments.fallbacks.add(1, {T.ROLLOUT: green.rollout.name, T.ENVIRONMENT: "green",
                                      T.ERROR_TYPE: etype})
        self.span.add_event("bluegreen.fallback", {
            T.ERROR_TYPE: etype,
            T.ENVIRONMENT: "green",
            T.REQUEST_MODEL: green.model,
        })
        blue = self.router.lane(instance, green.rollout, "blue",
                                green.metric_attrs[T.OPERATION], self.kwargs["model"])
        self.lane = blue
        self.fell_back = True
        self.prefetch = False
        self.span.update_name(blue.span_name)
        self.span.set_attributes(blue.span_attrs)
        self.span.set_attribute(T.FALLBACK, True)
        self.start = _perf()

    def failed(self, exc: BaseException) -> None:
        """The call failed for the caller: record it and end the span."""
        etype = error_type(exc)
        self.router.instruments.duration.record(_perf() - self.start,
                                                self.lane.attrs_for_error(etype))
        span = self.span
        span.set_attribute(T.ERROR_TYPE, etype)
        span.set_status(Status(StatusCode.ERROR, etype))
        span.end()

    def succeeded(self, response: Any) -> None:
        """A complete, non-streaming response: record it and end the span."""
        self.record_end(T.describe_response(response), None, _perf())
        if self.router.capture_content:
            text = T.output_messages_json(response)
            if text is not None:
                self.span.set_attribute(T.OUTPUT_MESSAGES, text)
        self.span.end()

    def record_end(self, described: tuple[str | None, str | None, tuple[str, ...], int | None,
                                          int | None],
                   error: BaseException | None, end: float) -> None:
        response_id, response_model, reasons, in_tokens, out_tokens = described
        lane = self.lane
        instruments = self.router.instruments
        span = self.span
        if error is not None:
            etype = error_type(error)
            instruments.duration.record(end - self.start, lane.attrs_for_error(etype))
            span.set_attribute(T.ERROR_TYPE, etype)
            span.set_status(Status(StatusCode.ERROR, etype))
        else:
            instruments.duration.record(end - self.start, lane.metric_attrs)
        attrs: dict[str, Any] = {}
        if response_id is not None:
            attrs[T.RESPONSE_ID] = response_id
        if response_model is not None:
            attrs[T.RESPONSE_MODEL] = response_model
        if reasons:
            attrs[T.FINISH_REASONS] = reasons
        if in_tokens is not None:
            attrs[T.INPUT_TOKENS] = in_tokens
            instruments.tokens.record(in_tokens, lane.token_attrs[0])
        if out_tokens is not None:
            attrs[T.OUTPUT_TOKENS] = out_tokens
            instruments.tokens.record(out_tokens, lane.token_attrs[1])
        if attrs:
            span.set_attributes(attrs)

    def first_chunk(self, at: float) -> None:
        self.router.instruments.ttfc.record(at - self.start, self.lane.metric_attrs)
