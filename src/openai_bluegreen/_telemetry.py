"""OpenTelemetry instruments and the attribute names of the telemetry contract (DESIGN.md).

Names follow the GenAI semantic conventions (v1.41); ``bluegreen.*`` attributes are ours.
Nothing here does I/O: exporting is the SDK's job, off the request path.
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from . import _state
from ._version import __version__

__all__ = ["Instruments", "describe_response"]

SCOPE = "openai_bluegreen"

# Attribute keys (GenAI semconv + feature-flag semconv + ours).
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
REASONING_TOKENS = "gen_ai.usage.reasoning.output_tokens"
TOKEN_TYPE = "gen_ai.token.type"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
REQUEST_STREAM = "gen_ai.request.stream"
OUTPUT_TYPE = "gen_ai.output.type"
RESPONSE_TTFC = "gen_ai.response.time_to_first_chunk"
API_TYPE = "openai.api.type"
CONVERSATION_ID = "gen_ai.conversation.id"  # spans only: one value per conversation
RESPONSE_SERVICE_TIER = "openai.response.service_tier"
SYSTEM_FINGERPRINT = "openai.response.system_fingerprint"
# Request parameters recorded on the span: (keyword argument, attribute), as sent (the
# environment's ``params`` override the caller's). Three spellings of the token limit.
REQUEST_PARAMS: tuple[tuple[str, str], ...] = (
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("max_output_tokens", "gen_ai.request.max_tokens"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("seed", "gen_ai.request.seed"),
    ("stop", "gen_ai.request.stop_sequences"),
    ("n", "gen_ai.request.choice.count"),
    ("encoding_format", "gen_ai.request.encoding_formats"),
    ("service_tier", "openai.request.service_tier"),
    ("dimensions", "gen_ai.embeddings.dimension.count"),
)
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
ROLLOUT = "bluegreen.rollout"
ENVIRONMENT = "bluegreen.environment"
REQUESTED_MODEL = "bluegreen.requested_model"
FALLBACK = "bluegreen.fallback"
FLAG_KEY = "feature_flag.key"
FLAG_VARIANT = "feature_flag.result.variant"
FLAG_PROVIDER = "feature_flag.provider.name"

# Explicit bucket boundaries from the GenAI semantic conventions.
DURATION_BUCKETS: Sequence[float] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)
TOKEN_BUCKETS: Sequence[float] = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)
# Time to first chunk: the semconv boundaries for gen_ai.client.operation.time_to_first_chunk
# (the duration boundaries, up to 81.92 s: a reasoning model's first chunk can take a minute).
TTFC_BUCKETS: Sequence[float] = DURATION_BUCKETS

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
EMIT_EVENT_ENV = "OTEL_INSTRUMENTATION_GENAI_EMIT_EVENT"
_CONTENT_ON_SPAN = frozenset({"true", "span_only", "span_and_event"})  # as documented, no more
_CONTENT_IN_EVENT = frozenset({"event_only", "span_and_event"})
INFERENCE_EVENT = "gen_ai.client.inference.operation.details"


class CaptureModes(NamedTuple):
    span: bool  # message content on the span
    events: bool  # a gen_ai.client.inference.operation.details event per inference call
    event_content: bool  # message content in that event


def capture_modes() -> CaptureModes:
    """Where message content goes, from the standard variables, as OpenTelemetry's GenAI
    instrumentations read them: ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` =
    ``SPAN_ONLY`` (or ``true``) / ``EVENT_ONLY`` / ``SPAN_AND_EVENT`` (any case); anything else
    records none. Events go out in the event modes, or with
    ``OTEL_INSTRUMENTATION_GENAI_EMIT_EVENT=true`` (then without content unless the mode allows
    it); ``OTEL_INSTRUMENTATION_GENAI_EMIT_EVENT=false`` turns them off."""
    mode = os.environ.get(CAPTURE_ENV, "").strip().lower()
    emit = os.environ.get(EMIT_EVENT_ENV, "").strip().lower()
    event_content = mode in _CONTENT_IN_EVENT
    events = emit == "true" or (emit != "false" and event_content)
    return CaptureModes(mode in _CONTENT_ON_SPAN, events, events and event_content)


def logger_for(logger_provider: Any) -> Any:
    """The OpenTelemetry logger content events go to (``None``: the global provider)."""
    from opentelemetry import _logs

    provider = logger_provider if logger_provider is not None else _logs.get_logger_provider()
    return provider.get_logger(SCOPE, __version__)


def inference_event(attributes: dict[str, Any], span_context: Any, at_ns: int) -> Any:
    """A ``gen_ai.client.inference.operation.details`` event for the logger, correlated with
    the call's span, at the call's end."""
    from opentelemetry._logs import LogRecord

    return LogRecord(event_name=INFERENCE_EVENT, attributes=attributes, context=span_context,
                     timestamp=at_ns)


class Instruments:
    """The metric instruments of one MeterProvider, created once and reused."""

    def __init__(self, meter: metrics.Meter, weights: Callable[[], Iterable[tuple[str, float]]]):
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.ttfc = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time from issuing a streaming request to receiving its first chunk.",
            explicit_bucket_boundaries_advisory=TTFC_BUCKETS,
        )
        self.fallbacks = meter.create_counter(
            "bluegreen.fallbacks",
            unit="{call}",
            description="Green calls that failed before any byte reached the caller and were "
            "retried on blue.",
        )
        self._weights = weights

        def observe_weights(_options: CallbackOptions) -> Iterable[Observation]:
            weights = self._weights
            # Only the installed router's: after uninstall(), or a re-install onto another
            # provider, this provider reports no weight rather than a stale one.
            if getattr(weights, "__self__", _state.router) is not _state.router:
                return []
            return [Observation(share, {ROLLOUT: name}) for name, share in weights()]

        self.weight = meter.create_observable_gauge(
            "bluegreen.rollout.weight",
            callbacks=[observe_weights],
            unit="1",
            description="Share of calls routed to green, 0..1, per rollout.",
        )


_instruments: weakref.WeakKeyDictionary[metrics.MeterProvider, Instruments] = (
    weakref.WeakKeyDictionary()
)
_global_instruments: list[Instruments] = []


def instruments_for(
    meter_provider: metrics.MeterProvider | None,
    weights: Callable[[], Iterable[tuple[str, float]]],
) -> Instruments:
    """Instruments for a provider (``None``: the global one), created once per provider.

    Creating them again on re-install would register the weight callback twice.
    """
    cached = (_global_instruments[0] if _global_instruments else None) if meter_provider is None \
        else _instruments.get(meter_provider)
    if cached is not None:
        cached._weights = weights
        return cached
    if meter_provider is None:
        made = Instruments(metrics.get_meter(SCOPE, __version__), weights)
        _global_instruments.append(made)
    else:
        made = Instruments(meter_provider.get_meter(SCOPE, __version__), weights)
        _instruments[meter_provider] = made
    return made


def tracer_for(tracer_provider: trace.TracerProvider | None) -> trace.Tracer:
    if tracer_provider is None:
        return trace.get_tracer(SCOPE, __version__)
    return tracer_provider.get_tracer(SCOPE, __version__)


def _first_not_none(obj: Any, *names: str) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


Details = tuple[int | None, int | None]
"""``(cache_read_input_tokens, reasoning_output_tokens)`` of a response's usage."""
Described = tuple[str | None, str | None, tuple[str, ...], int | None, int | None, str | None,
                  str | None, Details | None]
"""``(id, model, finish_reasons, input_tokens, output_tokens, service_tier,
system_fingerprint, details)`` of a response; ``details`` is ``None`` when its usage has none."""
NOTHING: Described = (None, None, (), None, None, None, None, None)


def _str_or_none(value: Any) -> str | None:
    """A non-empty string, else ``None`` (Azure's first stream chunk has ``model: ""``)."""
    return value if isinstance(value, str) and value else None


def describe_response(obj: Any) -> Described:
    """What the telemetry needs of any SDK response object (see :data:`Described`).

    Works for ChatCompletion (and its chunks), Response (Responses API),
    CreateEmbeddingResponse and Completion.
    """
    response_id = getattr(obj, "id", None)
    model = getattr(obj, "model", None)
    reasons: tuple[str, ...] = ()
    choices = getattr(obj, "choices", None)
    if choices:
        reasons = tuple(c.finish_reason for c in choices if getattr(c, "finish_reason", None))
    else:
        status = getattr(obj, "status", None)
        if isinstance(status, str):
            reasons = _responses_finish_reasons(obj, status)
    usage = getattr(obj, "usage", None)
    in_tokens = out_tokens = details = None
    if usage is not None:
        in_tokens = _first_not_none(usage, "prompt_tokens", "input_tokens")
        out_tokens = _first_not_none(usage, "completion_tokens", "output_tokens")
        details = _details(usage)
    return (
        _str_or_none(response_id),
        _str_or_none(model),
        reasons,
        in_tokens if isinstance(in_tokens, int) else None,
        out_tokens if isinstance(out_tokens, int) else None,
        _str_or_none(getattr(obj, "service_tier", None)),
        _str_or_none(getattr(obj, "system_fingerprint", None)),
        details,
    )


def _details(usage: Any) -> Details | None:
    """Cached input and reasoning output tokens: chat's ``prompt_tokens_details`` /
    ``completion_tokens_details``, the Responses API's ``input_tokens_details`` /
    ``output_tokens_details``. Read from the model's fields (``__dict__``): a usage without
    them (embeddings, legacy completions) costs no failed attribute lookup."""
    fields = getattr(usage, "__dict__", None)
    if not fields:
        return None
    inputs = fields.get("prompt_tokens_details") or fields.get("input_tokens_details")
    outputs = fields.get("completion_tokens_details") or fields.get("output_tokens_details")
    if inputs is None and outputs is None:
        return None
    cached, reasoning = _count(inputs, "cached_tokens"), _count(outputs, "reasoning_tokens")
    if cached is None and reasoning is None:
        return None
    # The usual answer (no cache hit, no reasoning): one shared tuple, not one per call
    # waiting in the telemetry queue. Counts that vary stay the call's own: shared() would
    # churn through them.
    if not cached and not reasoning:
        return shared((cached, reasoning))
    return cached, reasoning


def _count(details: Any, name: str) -> int | None:
    found = None if details is None else getattr(details, name, None)
    return found if type(found) is int else None


# Responses API: why an ``incomplete`` response stopped, as a chat-style finish reason.
_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def _responses_finish_reasons(obj: Any, status: str) -> tuple[str, ...]:
    """``gen_ai.response.finish_reasons`` of a Responses API response, in the values chat
    completions use (as OpenTelemetry's OpenAI instrumentation maps them): ``completed`` →
    ``stop`` (``tool_calls`` when it ends in a function call), ``incomplete`` → the reason
    (``length``, ``content_filter``), ``failed`` / ``cancelled`` → ``error``."""
    if status == "completed":
        reasons: list[str] = []
        for item in getattr(obj, "output", None) or ():
            kind = getattr(item, "type", None)
            reason = "tool_calls" if kind == "function_call" else \
                "stop" if kind == "message" else None
            if reason is not None and reason not in reasons:
                reasons.append(reason)
        return tuple(reasons) or ("stop",)
    if status in ("failed", "cancelled"):
        return ("error",)
    if status == "incomplete":
        details = getattr(obj, "incomplete_details", None)
        reason = getattr(details, "reason", None)
        return (_INCOMPLETE_REASONS.get(reason, reason) if isinstance(reason, str)
                else "incomplete",)
    return ()  # queued / in_progress: not finished


_SHARED: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_SHARED_MAX = 256


def conversation_id(value: object) -> str | None:
    """A Responses call's ``conversation`` (an id, or ``{"id": ...}``) as
    ``gen_ai.conversation.id``, or ``None``."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def shared(value: tuple[Any, ...]) -> tuple[Any, ...]:
    """The one shared tuple equal to ``value`` (say, a call's finish reasons, service tier and
    system fingerprint, which come from a small set of values): a call's own tuple then dies
    with the call instead of waiting in the worker's queue. At 256 distinct values the cache
    starts over."""
    found = _SHARED.get(value)
    if found is None:
        if len(_SHARED) >= _SHARED_MAX:
            # Values come and go (a provider's system fingerprint changes): start over rather
            # than give every later call its own tuple for the rest of the process.
            _SHARED.clear()
        found = _SHARED.setdefault(value, value)
    return found


def input_messages_json(kwargs: dict[str, Any]) -> tuple[str | None, str | None]:
    """See :func:`_input_messages_json`; never raises (capture must not fail the call, which
    is why only lists, tuples and dicts are read: a generator the app passes is the SDK's to
    consume)."""
    try:
        return _input_messages_json(kwargs)
    except Exception:
        return None, None


def output_messages_json(obj: Any) -> str | None:
    """See :func:`_output_messages_json`; never raises."""
    try:
        return _output_messages_json(obj)
    except Exception:
        return None


def loads(text: str) -> Any:
    """The structure a captured-content JSON string holds (the string, if it holds none)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def dumps(value: Any) -> str | None:
    """JSON for a captured-content attribute, ``None`` when it cannot be made."""
    return _json(value)


def _input_messages_json(kwargs: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(gen_ai.input.messages, gen_ai.system_instructions)`` of a request as JSON in the
    semconv message shape (``[{"role", "parts": [{"type": "text", "content"}, ...]}]``), for
    opt-in content capture. Chat messages (a system message included: it is part of the
    history), a Responses ``input`` (its ``instructions`` are the system instructions) or a
    legacy ``prompt``; embeddings inputs are not messages."""
    messages: list[dict[str, Any]] | None = None
    value = kwargs.get("messages")
    if isinstance(value, list):
        messages = [_chat_message(m) for m in value if isinstance(m, dict)]
    else:
        value = kwargs.get("input")
        if isinstance(value, str):
            messages = [{"role": "user", "parts": [_text_part(value)]}]
        elif isinstance(value, list):
            messages = _responses_items(value)
        elif isinstance(kwargs.get("prompt"), str):
            messages = [{"role": "user", "parts": [_text_part(kwargs["prompt"])]}]
    instructions = kwargs.get("instructions")
    system = [_text_part(instructions)] if isinstance(instructions, str) else None
    return _json(messages), _json(system)


def _output_messages_json(obj: Any) -> str | None:
    """A response's output as ``gen_ai.output.messages`` JSON (semconv message shape)."""
    out: list[dict[str, Any]] = []
    for choice in getattr(obj, "choices", None) or ():
        message = getattr(choice, "message", None)
        parts: list[dict[str, Any]] = []
        if message is not None:
            if isinstance(getattr(message, "content", None), str):
                parts.append(_text_part(message.content))
            for call in getattr(message, "tool_calls", None) or ():
                function = getattr(call, "function", None)
                parts.append(tool_call_part(getattr(call, "id", None),
                                        getattr(function, "name", None),
                                        getattr(function, "arguments", None)))
        elif isinstance(getattr(choice, "text", None), str):  # legacy completions
            parts.append(_text_part(choice.text))
        out.append({"role": "assistant", "parts": parts,
                    "finish_reason": getattr(choice, "finish_reason", None) or "stop"})
    if not out and isinstance(getattr(obj, "output", None), list):  # Responses API
        parts = []
        for item in obj.output:
            kind = getattr(item, "type", None)
            if kind == "message":
                parts += [_text_part(c.text) for c in getattr(item, "content", None) or ()
                          if isinstance(getattr(c, "text", None), str)]
            elif kind == "function_call":
                parts.append(tool_call_part(getattr(item, "call_id", None),
                                        getattr(item, "name", None),
                                        getattr(item, "arguments", None)))
        status = getattr(obj, "status", None)
        reasons = _responses_finish_reasons(obj, status) if isinstance(status, str) else ()
        out.append({"role": "assistant", "parts": parts,
                    "finish_reason": reasons[-1] if reasons else "stop"})
    return _json(out or None)


def _json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "content": text}


def tool_call_part(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    """A ``tool_call`` message part (arguments parsed when they are JSON)."""
    if isinstance(arguments, str):
        # Not JSON (or nested past the parser's limit): recorded as the string it is.
        with contextlib.suppress(ValueError, RecursionError):
            arguments = json.loads(arguments)
    return {"type": "tool_call", "id": call_id, "name": name, "arguments": arguments}


def _content_parts(content: Any) -> list[dict[str, Any]]:
    """Parts of a message's ``content``: a string, or a list of typed parts."""
    if isinstance(content, str):
        return [_text_part(content)]
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, (list, tuple)) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        text = part.get("text")
        if isinstance(text, str):  # text, input_text, output_text
            parts.append(_text_part(text))
        elif kind in ("image_url", "input_image"):
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            parts.append(_image_part(url))
        elif isinstance(kind, str):
            parts.append({"type": kind})  # audio, files: named, not recorded
    return parts


def _image_part(url: Any) -> dict[str, Any]:
    """An image by URL as a semconv part: a ``uri`` part, or for an inline ``data:`` URL the
    ``blob`` part the conventions ask for (its base64 content, its MIME type)."""
    if isinstance(url, str) and url.startswith("data:") and "," in url:
        head, _, content = url[5:].partition(",")
        mime, _, encoding = head.partition(";")
        if encoding == "base64":
            return {"type": "blob", "modality": "image", "mime_type": mime or None,
                    "content": content}
    return {"type": "uri", "modality": "image", "uri": url}


def _field(obj: Any, name: str) -> Any:
    """A field of a dict or of an SDK model the app passed inside one."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _chat_message(message: dict[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    if role == "tool":
        return {"role": "tool", "parts": [{"type": "tool_call_response",
                                           "id": message.get("tool_call_id"),
                                           "response": message.get("content")}]}
    parts = _content_parts(message.get("content"))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, (list, tuple)) else ():
        if isinstance(call, dict):
            function = call.get("function")
            parts.append(tool_call_part(call.get("id"), _field(function, "name"),
                                    _field(function, "arguments")))
    out: dict[str, Any] = {"role": role, "parts": parts}
    if isinstance(message.get("name"), str):
        out["name"] = message["name"]
    return out


def _responses_items(items: list[Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "function_call_output":
            messages.append({"role": "tool", "parts": [{
                "type": "tool_call_response", "id": item.get("call_id"),
                "response": item.get("output")}]})
        elif kind == "function_call":
            messages.append({"role": "assistant", "parts": [tool_call_part(
                item.get("call_id"), item.get("name"), item.get("arguments"))]})
        elif "role" in item:
            messages.append({"role": item["role"], "parts": _content_parts(item.get("content"))})
    return messages


def _is_sentinel(value: Any) -> bool:
    return type(value).__name__ in ("Omit", "NotGiven")
