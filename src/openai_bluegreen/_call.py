"""One routed call's lifecycle: span, metrics, fallback decision. No I/O here.

The sync and async wrappers in ``_patch`` carry out the upstream calls; everything they share
(starting the span, recording success or failure, deciding on fallback, switching to blue) lives
in :class:`Call` so the two differ only where one awaits.

On the request path a call only takes timestamps and the caller's context. When it ends, its
numbers are queued for the telemetry worker (``_worker``), which records the metrics and emits
the span in one go: started at the call's start time as a child of that context, with every
attribute, and ended at the call's end time. Nothing allocated for the call outlives it: objects
that outlive garbage-collector passes are what make an asyncio app with many calls in flight pay
for telemetry (``BENCHMARKS.md``). The price: our span is not the current
span while the SDK sends the request, so nothing can nest under it (openai 3.x's httpx2 has no
OpenTelemetry instrumentation that would), and span processors see it start when it ends.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from . import _telemetry as T
from . import _worker
from ._router import Lane, RolloutRuntime, Router

__all__ = ["Call", "StreamFailed", "classify", "error_type", "sdk_http"]

_perf = time.perf_counter
_wall_ns = time.time_ns

Described = T.Described
NOTHING = T.NOTHING
_DONE: dict[str, Any] = {}


def sdk_http() -> Any:
    """The HTTP library the installed openai SDK sends with: httpx2 from openai 3.x, httpx
    before (both may be installed; the SDK's own import decides). ``None`` if neither."""
    import openai._base_client as base_client

    return getattr(base_client, "httpx2", None) or getattr(base_client, "httpx", None)


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """The HTTP library's timeout and transport errors (httpx2 for openai 3.x, httpx before)."""
    module = sdk_http()
    if module is None:  # pragma: no cover - every supported SDK has one of them
        return (), ()
    return (module.TimeoutException,), (module.TransportError,)


_TIMEOUTS, _TRANSPORT = _transport_errors()


class StreamFailed(Exception):
    """A Responses stream that reported its failure in band (a ``response.failed`` or
    ``error`` event, which the SDK hands to the caller as events, not exceptions). ``code``:
    the provider's error code (``server_error``, ``rate_limit_exceeded``, ...), else the
    event's type."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


_IN_BAND_CLASSES = {"server_error": "server_error", "rate_limit_exceeded": "rate_limit"}


def classify(exc: BaseException) -> str | None:
    """The fallback class of an upstream failure, or ``None`` for one that must not fall back."""
    import openai

    if isinstance(exc, StreamFailed):
        return _IN_BAND_CLASSES.get(exc.code)
    if isinstance(exc, (openai.APITimeoutError, *_TIMEOUTS)):
        return "timeout"
    if isinstance(exc, (openai.APIConnectionError, *_TRANSPORT)):
        return "connection"
    if isinstance(exc, openai.RateLimitError):
        return "rate_limit"
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 408:  # the server gave up waiting: a timeout, as the SDK retries
            return "timeout"
        return "server_error" if exc.status_code >= 500 else None
    if isinstance(exc, openai.APIError):  # an error event inside a stream
        return "server_error"
    return None


def error_type(exc: BaseException) -> str:
    """``error.type``: the exception's fully qualified class name (``openai.RateLimitError``;
    builtins unqualified), as the SDK's ``exception.type`` and OpenTelemetry's own GenAI
    instrumentations spell it; for a failure a Responses stream reported in band, the
    provider's error code. Low cardinality; never the message."""
    if isinstance(exc, StreamFailed):
        return exc.code
    cls = type(exc)
    module = cls.__module__
    if not module or module == "builtins":
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


class Call:
    """State of one logical call, from routing decision to the end of its span.

    When the call ends, its numbers (and references to objects that exist anyway: the lane, the
    caller's context, the response's strings) are queued for the worker, and the call itself is
    freed with the caller's frame: nothing allocated for the call outlives it (see ``_worker``).
    """

    __slots__ = ("api_type", "fallback", "fell_back", "kwargs", "lane", "output", "parent",
                 "pinned", "prefetch", "rollout", "router", "span_start_ns", "start",
                 "start_ns", "stream", "text", "ttfc")

    def __init__(self, router: Router, rollout: RolloutRuntime, operation: str, instance: Any,
                 kwargs: dict[str, Any], api_type: str | None = None) -> None:
        self.router = router
        self.api_type = api_type
        self.ttfc: float | None = None
        self.rollout = rollout
        self.kwargs = kwargs
        # Only Responses API calls have provider-side state to follow.
        env = rollout.pinned(kwargs) if api_type == "responses" else None
        self.pinned = env is not None  # its state is there: no fallback to the other
        if env is None:
            env = rollout.choose(kwargs)
        lane = router.lane(instance, rollout, env, operation, kwargs["model"], self.pinned)
        self.lane = lane
        self.stream = kwargs.get("stream") is True
        self.prefetch = (self.stream and env == "green" and rollout.fallback_enabled
                         and not self.pinned)
        self.fell_back = False
        # (input messages, system instructions) as JSON; serialized now: the app may change
        # its list afterwards.
        self.text = (T.input_messages_json(kwargs)
                     if router.capture_content and operation != "embeddings" else None)
        self.output: str | None = None
        self.fallback: tuple[str, str, float, int] | None = None
        # The span is started by the worker, as a child of the caller's context at this point.
        self.parent = context.get_current()
        self.start_ns = _wall_ns()  # the current attempt's start (blue's, after a fallback)
        self.start = _perf()
        self.span_start_ns = self.start_ns  # the logical call's start: the span covers it all

    def arguments(self) -> dict[str, Any]:
        return self.lane.rewrite(self.kwargs)

    def should_fall_back(self, exc: BaseException) -> bool:
        """Green failed before any byte reached the caller: retry on blue if configured."""
        if (self.lane.env != "green" or self.fell_back or not self.rollout.fallback_enabled
                or self.pinned):
            return False
        kind = classify(exc)
        return kind is not None and kind in self.rollout.fallback_on

    def switch_to_blue(self, exc: BaseException, instance: Any) -> None:
        """Record green's failure in green's metrics, count the fallback, continue on blue."""
        green = self.lane
        now = _perf()
        etype = error_type(exc)
        elapsed = now - self.start
        at_ns = self.start_ns + int(elapsed * 1e9)
        _worker.submit(_record_fallback, self.router.instruments, green, etype, elapsed)
        self.fallback = (etype, green.model, elapsed, at_ns)
        self.lane = self.router.lane(instance, green.rollout, "blue",
                                     green.metric_attrs[T.OPERATION], self.kwargs["model"])
        self.fell_back = True
        self.prefetch = False
        self.start_ns = at_ns
        self.start = now

    def failed(self, exc: BaseException) -> None:
        """The call failed for the caller: record it and end the span."""
        self.finished(NOTHING, error_type(exc), _perf())

    def succeeded(self, response: Any) -> None:
        """A complete, non-streaming response: record it and end the span."""
        end = _perf()
        if self.router.capture_content:
            self.output = T.output_messages_json(response)
        # The few numbers the span needs, read now: the response object is not kept.
        self.finished(T.describe_response(response), None, end)

    def first_chunk(self, at: float, response_model: str | None) -> None:
        # Recorded now, not when the stream ends: the watcher judges time to first chunk while
        # long streams are still running.
        self.ttfc = at - self.start
        _worker.submit(_record_ttfc, self.router.instruments, self.ttfc, self.lane,
                       response_model)

    def finished(self, described: Described, etype: str | None, end: float) -> None:
        """The call is over for the caller: queue its telemetry for the worker."""
        attrs = self.lane.request_attrs(self.kwargs, self.api_type)  # as the answering lane sent
        if self.api_type == "responses" and "conversation" in self.kwargs:
            # One value per conversation: never shared, never on a metric.
            conversation = T.conversation_id(self.kwargs["conversation"])
            if conversation is not None:
                attrs = {**attrs, T.CONVERSATION_ID: conversation}
        self.kwargs = _DONE  # the request (messages and all) need not outlive the call
        (response_id, response_model, reasons, in_tokens, out_tokens, tier, fingerprint,
         details) = described
        if response_id is not None and self.api_type == "responses" and etype is None:
            self.rollout.remember_response(response_id, self.lane.env)
        content = None if self.text is None and self.output is None else (
            *(self.text or (None, None)), self.output)
        # 16 arguments: a record stays within _worker.MAX_RECORD items (see there).
        _worker.submit(_emit, self.lane, self.parent, self.span_start_ns,
                       self.start_ns, end - self.start, etype, self.fallback,
                       response_id, response_model, T.shared((reasons, tier, fingerprint)),
                       in_tokens, out_tokens, details, attrs, self.ttfc, content)


def _emit(lane: Lane, parent: context.Context, span_start_ns: int,
          start_ns: int, elapsed: float, etype: str | None,
          fallback: tuple[str, str, float, int] | None,
          response_id: str | None, response_model: str | None,
          outcome: tuple[tuple[str, ...], str | None, str | None],
          in_tokens: int | None, out_tokens: int | None, details: T.Details | None,
          base_attrs: dict[str, Any], ttfc: float | None,
          content: tuple[str | None, str | None, str | None] | None) -> None:
    """Run by the worker: record duration and usage; emit the span.

    The span is started and ended here, with every attribute given at start (samplers see them
    all), the caller's context as parent, and the logical call's times: from its start (before
    green's failed attempt, after a fallback) to its end. ``elapsed``, the duration metric, is
    the answering attempt's (``start_ns`` is when that attempt began). ``outcome`` is the
    shared tuple of finish reasons, service tier and system fingerprint.
    """
    router = lane.router
    instruments = router.instruments
    reasons, tier, fingerprint = outcome
    duration_attrs, in_attrs, out_attrs = lane.response_attrs(response_model)
    attrs: dict[str, Any] = dict(base_attrs)
    if fallback is not None:
        attrs[T.FALLBACK] = True
    if etype is not None:
        instruments.duration.record(elapsed, lane.attrs_for_error(etype))
        attrs[T.ERROR_TYPE] = etype
    else:
        instruments.duration.record(elapsed, duration_attrs)
    if response_id is not None:
        attrs[T.RESPONSE_ID] = response_id
    if response_model is not None:
        attrs[T.RESPONSE_MODEL] = response_model
    if reasons:
        attrs[T.FINISH_REASONS] = reasons
    if lane.openai_attrs:  # the OpenAI flavor's attributes only on its spans (see Lane)
        if tier is not None:
            attrs[T.RESPONSE_SERVICE_TIER] = tier
        if fingerprint is not None:
            attrs[T.SYSTEM_FINGERPRINT] = fingerprint
    if in_tokens is not None:
        attrs[T.INPUT_TOKENS] = in_tokens
        instruments.tokens.record(in_tokens, in_attrs)
    if out_tokens is not None:
        attrs[T.OUTPUT_TOKENS] = out_tokens
        instruments.tokens.record(out_tokens, out_attrs)
    if details is not None:
        cached, reasoning = details
        if cached is not None:
            attrs[T.CACHE_READ_TOKENS] = cached
        if reasoning is not None:
            attrs[T.REASONING_TOKENS] = reasoning
    if ttfc is not None:
        attrs[T.RESPONSE_TTFC] = ttfc
    messages: dict[str, Any] = {}
    if content is not None:
        for key, value in zip((T.INPUT_MESSAGES, T.SYSTEM_INSTRUCTIONS, T.OUTPUT_MESSAGES),
                              content, strict=True):
            if value is not None:
                messages[key] = value
    capture = router.capture
    span = router.tracer.start_span(lane.span_name, context=parent, kind=SpanKind.CLIENT,
                                    attributes={**attrs, **messages} if capture.span else attrs,
                                    start_time=span_start_ns)
    if fallback is not None:
        fb_type, fb_model, fb_elapsed, fb_at = fallback
        span.add_event("bluegreen.fallback", {
            T.ERROR_TYPE: fb_type,
            T.ENVIRONMENT: "green",
            T.REQUEST_MODEL: fb_model,
            "bluegreen.green_duration_s": fb_elapsed,
        }, timestamp=fb_at)
    if etype is not None:
        span.set_status(Status(StatusCode.ERROR, etype))
    end_ns = start_ns + int(elapsed * 1e9)
    span.end(end_time=end_ns)
    if router.events is not None and lane.span_attrs[T.OPERATION] != "embeddings":
        if capture.event_content:  # structured, as util-genai puts them on events
            attrs.update({key: T.loads(value) for key, value in messages.items()})
        router.events.emit(T.inference_event(attrs, set_span_in_context(span, parent), end_ns))


def _record_ttfc(instruments: T.Instruments, seconds: float, lane: Lane,
                 response_model: str | None) -> None:
    """Run by the worker (a function, not a bound method: nothing per call waits in the queue);
    the lane's attribute sets are looked up (and built) here, off the request path."""
    instruments.ttfc.record(seconds, lane.response_attrs(response_model)[0])


def _record_fallback(instruments: T.Instruments, green: Lane, etype: str, elapsed: float
                     ) -> None:
    """Run by the worker: green's failure in green's metrics, and the fallback counted."""
    instruments.duration.record(elapsed, green.attrs_for_error(etype))
    instruments.fallbacks.add(1, {T.ROLLOUT: green.rollout.name, T.ENVIRONMENT: "green",
                                  T.ERROR_TYPE: etype})
