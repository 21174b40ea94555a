"""Behaviour settings of a simulated upstream. Immutable: change them with ``configure()``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["UpstreamSettings"]


@dataclass(frozen=True)
class UpstreamSettings:
    """How a :class:`SimulatedUpstream` answers.

    Attributes:
        latency: Median time to a complete (non-streamed) answer, in seconds.
        latency_sigma: Log-normal spread of latency and time to first chunk (0 = constant).
        ttfc: Median time to the first chunk of a streamed answer, in seconds.
        chunk_interval: Time between streamed chunks, in seconds.
        output_tokens: Completion tokens per answer (streamed answers send one chunk per token,
            up to ``max_stream_chunks``).
        input_tokens: Prompt tokens reported; ``None`` estimates them from the request size.
        cached_tokens: Of the prompt tokens, how many came from the provider's prompt cache
            (``cached_tokens`` in chat and Responses usage details; at most the prompt's).
        reasoning_tokens: Of the completion tokens, how many were reasoning (``reasoning_tokens``
            in chat and Responses usage details; at most ``output_tokens``).
        error_rates: Probability of answering with each HTTP status, e.g. ``{503: 0.05}``
            (exactly that: an error status wins over a stall).
        stall_rate: Probability that a request not answered with an error status (from
            ``error_rates`` or rate limiting) is never answered in time (holds the request
            ``stall_seconds``), which a client with a shorter timeout sees as a timeout.
        stall_seconds: How long a stalled request is held.
        rate_limit_rps: Requests per second allowed (token bucket, burst = 1 s, at least one
            request); above it the answer is 429 with ``Retry-After`` (the whole seconds until
            the next request is admitted). ``None`` = unlimited.
        disconnect_rate: Probability that a streamed answer is cut off mid-stream. A stream is
            cut or fails in band (``stream_failure_rate``), never both, so each comes at the
            rate asked for: the two must add up to at most 1.
        disconnect_after_chunks: How many chunks a cut-off stream delivers first (0 = none;
            a shorter stream is cut before its last event).
        stream_failure_rate: Probability that a streamed answer reports a server error in band
            before any of its text, as OpenAI does: a Responses stream ends with a
            ``response.failed`` event (code ``server_error``), which the SDK hands to the caller
            as an event; a chat or legacy completion stream with an ``error`` event, which the
            SDK raises as ``openai.APIError``. Never on a stream that is cut
            (``disconnect_rate``).
        embedding_dimensions: Length of each embedding vector (a request's ``dimensions``
            wins, as with OpenAI's text-embedding-3 models).
        seed: Seed of the random draws, for repeatable runs (``None`` = random).
    """

    latency: float = 0.0
    latency_sigma: float = 0.0
    ttfc: float = 0.0
    chunk_interval: float = 0.0
    output_tokens: int = 8
    input_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    error_rates: Mapping[int, float] = field(default_factory=dict)
    stall_rate: float = 0.0
    stall_seconds: float = 30.0
    rate_limit_rps: float | None = None
    disconnect_rate: float = 0.0
    disconnect_after_chunks: int = 2
    stream_failure_rate: float = 0.0
    embedding_dimensions: int = 8
    max_stream_chunks: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("latency", "latency_sigma", "ttfc", "chunk_interval", "stall_seconds"):
            if not 0 <= getattr(self, name) < math.inf:  # NaN too
                problems.append(f"{name} must be a finite number >= 0 "
                                f"(got {getattr(self, name)!r})")
        for name in ("stall_rate", "disconnect_rate", "stream_failure_rate"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be between 0 and 1 (got {getattr(self, name)!r})")
        for status, rate in self.error_rates.items():
            if not (isinstance(status, int) and 400 <= status <= 599):
                problems.append(f"error_rates key must be an HTTP error status (got {status!r})")
            if not 0 <= rate <= 1:  # NaN too
                problems.append(f"error_rates[{status}] must be between 0 and 1 (got {rate!r})")
        if sum(self.error_rates.values()) > 1:
            problems.append("error_rates must add up to at most 1")
        if self.disconnect_rate + self.stream_failure_rate > 1 + 1e-9:
            problems.append("disconnect_rate + stream_failure_rate must add up to at most 1 "
                            "(a stream is cut or fails in band, never both; got "
                            f"{self.disconnect_rate!r} + {self.stream_failure_rate!r})")
        if self.rate_limit_rps is not None and self.rate_limit_rps <= 0:
            problems.append(f"rate_limit_rps must be > 0 (got {self.rate_limit_rps!r})")
        for name in ("cached_tokens", "reasoning_tokens"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:  # a count: not a bool, float or string
                problems.append(f"{name} must be a whole number >= 0 (got {value!r})")
        if self.output_tokens < 1 or self.embedding_dimensions < 1 or self.max_stream_chunks < 1:
            problems.append("output_tokens, embedding_dimensions, max_stream_chunks must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))

    def replace(self, **changes: object) -> UpstreamSettings:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown upstream setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]  # validated above
