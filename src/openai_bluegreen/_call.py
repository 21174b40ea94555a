"""One routed call's lifecycle: span, metrics, fallback decision. No I/O here.

The sync and async wrappers in ``_patch`` carry out the upstream calls; everything they share
(starting the span, recording success or failure, deciding on fallback, switching to blue) lives
in :class:`Call` so the two differ only where one awaits.

On the request path a call only takes timestamps and the caller's context; the telemetry worker
(``_worker``) starts the span with the call's start time as a child of that context, sets its
attributes, records the metrics and ends it with explicit times. Tasks of one call run in the
order they were submitted, so the span exists before anything else touches it. The price: our
span is not the current span while the SDK sends the request, so nothing can nest under it
(openai 3.x's httpx2 has no OpenTelemetry instrumentation that would).
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import _telemetry as T
from . import _worker
from ._router import Lane, RolloutRuntime, Router

__all__ = ["Call", "classify", "error_type"]

_perf = time.perf_counter
_wall_ns = time.time_ns

Described = tuple[str | None, str | None, tuple[str, ...], int | None, int | None]
NOTHING: Described = (None, None, (), None, None)
_DONE: dict[str, Any] = {}


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

    if isinstance(exc, (openai.APITimeoutError, *_TIMEOUTS)):
        return "timeout"
    if isinstance(exc, (openai.APIConnectionError, *_TRANSPORT)):
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

    __slots__ = ("fell_back", "kwargs", "lane", "prefetch", "rollout", "router", "span",
                 "start", "start_ns", "stream")

    def __init__(self, router: Router, rollout: RolloutRuntime, operation: str, instance: Any,
                 kwargs: dict[str, Any]) -> None:
        self.router = router
        self.rollout = rollout
        self.kwargs = kwargs
        env = rollout.choose(kwargs)
        lane = router.lane(instance, rollout, env, operation, kwargs["model"])
        self.lane = lane
        self.stream = kwargs.get("stream") is True
        self.prefetch = self.stream and env == "green" and rollout.fallback_enabled
        self.fell_back = False
        # Serialized now: the app may change its list afterwards.
        text = T.input_messages_json(kwargs) if router.capture_content else None
        self.span: Span = trace.INVALID_SPAN
        self.start_ns = _wall_ns()
        self.start = _perf()
        _worker.submit(self._open, context.get_current(), lane, self.start_ns, text)

    def _open(self, parent: context.Context, lane: Lane, start_ns: int, text: str | None
              ) -> None:
        """Run by the worker first: the call's span, started when the call started."""
        span = self.router.tracer.start_span(lane.span_name, context=parent,
                                             kind=SpanKind.CLIENT,
                                             attributes=lane.span_start_attrs,
                                             start_time=start_ns)
        if text is not None:
            span.set_attribute(T.INPUT_MESSAGES, text)
        self.span = span

    def detach(self) -> None:
        """Nothing to undo: the span is never made current on the request path."""

    def arguments(self) -> dict[str, Any]:
        return self.lane.rewrite(self.kwargs)

    def end_ns(self, end: float) -> int:
        return self.start_ns + int((end - self.start) * 1e9)

    def should_fall_back(self, exc: BaseException) -> bool:
        """Green failed before any byte reached the caller: retry on blue if configured."""
        if self.lane.env != "green" or self.fell_back or not self.rollout.fallback_enabled:
            return False
        kind = classify(exc)
        return kind is not None and kind in self.rollout.fallback_on

    def switch_to_blue(self, exc: BaseException, instance: Any) -> None:
        """Record green's failure in green's metrics, count the fallback, continue on blue."""
        green = self.lane
        now = _perf()
        blue = self.router.lane(instance, green.rollout, "blue",
                                green.metric_attrs[T.OPERATION], self.kwargs["model"])
        _worker.submit(self._record_fallback, green, blue, error_type(exc), now - self.start,
                       self.start_ns + int((now - self.start) * 1e9))
        self.lane = blue
        self.fell_back = True
        self.prefetch = False
        self.start_ns += int((now - self.start) * 1e9)
        self.start = now

    def failed(self, exc: BaseException) -> None:
        """The call failed for the caller: record it and end the span."""
        end = _perf()
        self.kwargs = _DONE  # the request (messages and all) need not outlive the call
        _worker.submit(self.finish, NOTHING, error_type(exc), end)

    def succeeded(self, response: Any) -> None:
        """A complete, non-streaming response: record it and end the span."""
        end = _perf()
        output = None
        if self.router.capture_content:
            output = T.output_messages_json(response)
        # The few numbers the span needs, read now: holding the response object until the
        # worker's next burst would keep every response of the last 50 ms alive, and older
        # objects make the garbage collector's passes slower for the whole process.
        self.kwargs = _DONE
        _worker.submit(self.finish_described, T.describe_response(response), end, output)

    def first_chunk(self, at: float) -> None:
        _worker.submit(self.router.instruments.ttfc.record, at - self.start,
                       self.lane.metric_attrs)

    # -- run by the telemetry worker ---------------------------------------------------------
    def finish_described(self, described: Described, end: float, output: str | None) -> None:
        if output is not None:
            self.span.set_attribute(T.OUTPUT_MESSAGES, output)
        self.finish(described, None, end)

    def finish(self, described: Described, etype: str | None, end: float) -> None:
        """Record duration and usage, set the span's remaining attributes, end it at ``end``."""
        response_id, response_model, reasons, in_tokens, out_tokens = described
        lane = self.lane
        instruments = self.router.instruments
        span: Span = self.span
        attrs: dict[str, Any] = dict(lane.span_end_attrs)
        if self.fell_back:
            attrs[T.FALLBACK] = True
        if etype is not None:
            instruments.duration.record(end - self.start, lane.attrs_for_error(etype))
            attrs[T.ERROR_TYPE] = etype
            span.set_status(Status(StatusCode.ERROR, etype))
        else:
            instruments.duration.record(end - self.start, lane.metric_attrs)
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
        span.set_attributes(attrs)
        span.end(end_time=self.end_ns(end))

    def _record_fallback(self, green: Lane, blue: Lane, etype: str, elapsed: float,
                         at_ns: int) -> None:
        instruments = self.router.instruments
        instruments.duration.record(elapsed, green.attrs_for_error(etype))
        instruments.fallbacks.add(1, {T.ROLLOUT: green.rollout.name, T.ENVIRONMENT: "green",
                                      T.ERROR_TYPE: etype})
        span = self.span
        span.add_event("bluegreen.fallback", {
            T.ERROR_TYPE: etype,
            T.ENVIRONMENT: "green",
            T.REQUEST_MODEL: green.model,
            "bluegreen.green_duration_s": elapsed,
        }, timestamp=at_ns)
        span.update_name(blue.span_name)
        span.set_attributes(blue.span_start_attrs)
