"""Behaviour settings of a simulated upstream. Immutable: change them with ``configure()``."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["UpstreamSettings"]

_ROUNDING = 1e-9  # rates that add up to 1 on paper may add up to a hair above it in floats


def _number(value: object) -> bool:
    """A real number, not a bool (``True`` is an ``int``) or a numeric string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _whole(value: object) -> bool:
    """An ``int``, not a bool (the counts go into JSON bodies as they are)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class UpstreamSettings:
    """How a :class:`SimulatedUpstream` answers.

    Attributes:
        latency: Median time to a complete (non-streamed) answer, in seconds; an answer with
            an error status (``error_rates``, rate limiting) comes after half of it.
        latency_sigma: Log-normal spread of latency and time to first chunk (0 = constant).
        ttfc: Median time to the first chunk of a streamed answer, in seconds.
        chunk_interval: Time between streamed chunks, in seconds.
        output_tokens: Completion tokens per answer (streamed answers send one chunk per token,
            up to ``max_stream_chunks``).
        max_stream_chunks: Most text chunks a streamed answer sends: a longer answer's chunks
            carry several tokens each (the text is the whole answer, streamed or not).
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
            value = getattr(self, name)
            if not (_number(value) and 0 <= value < math.inf):  # NaN too
                problems.append(f"{name} must be a finite number >= 0 (got {value!r})")
        stream_rates_ok = True  # disconnect_rate and stream_failure_rate, to add them up
        for name in ("stall_rate", "disconnect_rate", "stream_failure_rate"):
            value = getattr(self, name)
            if not (_number(value) and 0 <= value <= 1):
                if name != "stall_rate":
                    stream_rates_ok = False
                problems.append(f"{name} must be between 0 and 1 (got {value!r})")
        if not isinstance(self.error_rates, Mapping):
            problems.append("error_rates must be a mapping of HTTP status to probability, "
                            f"e.g. {{503: 0.05}} (got {self.error_rates!r})")
        else:
            good = []
            for status, rate in self.error_rates.items():
                if not (_whole(status) and 400 <= status <= 599):
                    problems.append("error_rates key must be an HTTP error status (400-599) "
                                    f"(got {status!r})")
                if not (_number(rate) and 0 <= rate <= 1):  # NaN too
                    problems.append(f"error_rates[{status!r}] must be between 0 and 1 "
                                    f"(got {rate!r})")
                else:
                    good.append(rate)
            total = math.fsum(good)
            if total > 1 + _ROUNDING:  # 0.34 + 0.56 + 0.1 is 1, whatever floats make of it
                problems.append(f"error_rates must add up to at most 1 (got {total:g})")
        if stream_rates_ok and self.disconnect_rate + self.stream_failure_rate > 1 + _ROUNDING:
            problems.append("disconnect_rate + stream_failure_rate must add up to at most 1 "
                            "(a stream is cut or fails in band, never both; got "
                            f"{self.disconnect_rate!r} + {self.stream_failure_rate!r})")
        rps = self.rate_limit_rps
        if rps is not None and not (_number(rps) and rps > 0):  # NaN too
            problems.append(f"rate_limit_rps must be a number > 0 or None (got {rps!r})")
        for name, least in (("output_tokens", 1), ("embedding_dimensions", 1),
                            ("max_stream_chunks", 1), ("cached_tokens", 0),
                            ("reasoning_tokens", 0), ("disconnect_after_chunks", 0),
                            ("input_tokens", 0)):
            value = getattr(self, name)
            if name == "input_tokens" and value is None:
                continue
            if not (_whole(value) and value >= least):  # a count: not a bool, float or string
                problems.append(f"{name} must be a whole number >= {least} (got {value!r})")
        if problems:
            raise ValueError("; ".join(problems))

    def replace(self, **changes: object) -> UpstreamSettings:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown upstream setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]  # validated above
