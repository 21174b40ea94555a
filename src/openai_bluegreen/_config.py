"""Configuration: the pydantic models of DESIGN.md and how a config is found and loaded.

A config comes from a :class:`Config`, a mapping, or a YAML/TOML/JSON file; ``None`` means the
file named by ``OPENAI_BLUEGREEN_CONFIG``, else ``openai-bluegreen.{yaml,yml,toml,json}`` in the
working directory. Every problem is reported at once, each with the field path and the value.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ._errors import ConfigError
from ._telemetry import DURATION_BUCKETS

__all__ = [
    "ENV_CONFIG",
    "Analysis",
    "Check",
    "Config",
    "EnvironmentTarget",
    "Fallback",
    "Match",
    "Rollout",
    "Schedule",
    "load_config",
    "mask_url",
    "parse_duration",
]

ENV_CONFIG = "OPENAI_BLUEGREEN_CONFIG"
ENV_STATE = "OPENAI_BLUEGREEN_STATE"
ENV_METRICS_SOURCE = "OPENAI_BLUEGREEN_METRICS_SOURCE"
DEFAULT_FILES = ("openai-bluegreen.yaml", "openai-bluegreen.yml", "openai-bluegreen.toml",
                 "openai-bluegreen.json")

StickyKey = Literal["assignment_key", "user", "safety_identifier", "prompt_cache_key"]
FallbackOn = Literal["server_error", "timeout", "connection", "rate_limit"]

ALL_FALLBACK_CLASSES: tuple[FallbackOn, ...] = ("server_error", "timeout", "connection",
                                               "rate_limit")
DEFAULT_STICKY: tuple[StickyKey, ...] = ("assignment_key", "user", "safety_identifier",
                                         "prompt_cache_key")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_ENV_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token
_HEADER_VALUE_RE = re.compile(r"^[\t\x20-\x7e]*$")
_HOST = r"(\[[0-9A-Fa-f:.]+\]|[^/\s:@?\[\]]+)"  # a name, IPv4, or bracketed IPv6 ([::1])
_URL_RE = re.compile(rf"^https?://{_HOST}(:\d{{1,5}})?([/?]\S*)?$")
# A metric source URL may carry ``user:password@`` (percent-encoded) for basic auth.
_SOURCE_URL_RE = re.compile(rf"^https?://([^@/\s]+@)?{_HOST}(:\d{{1,5}})?([/?]\S*)?$")
_RESERVED_PARAMS = frozenset({"model", "stream", "messages", "input", "prompt"})
_REDIS_RE = re.compile(
    rf"^rediss?://([^@/\s]*@)?{_HOST}(:\d{{1,5}})?(/\d{{1,2}})?/?(\?namespace=[A-Za-z0-9_.-]+)?$")
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*://")
_FIELD_PROBLEMS = "bluegreen_field_problems"  # a model check's problems, each at its own path


def mask_url(url: str) -> str:
    """``url`` with any credentials replaced by ``***`` (safe to print and log).

    Everything up to the last ``@`` is user information, so a password that itself holds
    ``@``, ``/`` or ``:`` is masked whole; a user name is kept only when a password follows it.
    """
    match = _SCHEME_RE.match(url)
    if match is None:
        return url
    rest = url[match.end():]
    at = rest.rfind("@")
    if at < 0:
        return url
    userinfo = rest[:at]
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
    return f"{match.group(0)}{user}:***@{rest[at + 1:]}"


# What a pasted credential looks like: a provider key prefix, an auth scheme, or a long run of
# mixed letters and digits (hex or base64 keys). Variable names are words joined by ``_``.
_KEY_PREFIX_RE = re.compile(
    r"^(?:sk|pk|rk|gsk|xai|ghp|gho|hf|glpat|sess)[-_][A-Za-z0-9_\-]{8}|^AIza|^(?i:bearer|basic)\s")
# The pieces of a message that mask_secrets tests with looks_like_secret: an auth scheme with
# its credential, or a word (letters, digits, "_" and "-").
_CANDIDATE_RE = re.compile(r"(?i:\b(?:bearer|basic)\s+\S+)|[A-Za-z0-9_\-]{8,}")
_LONG_RUN_RE = re.compile(r"[A-Za-z0-9]{20,}")


def looks_like_secret(value: str) -> bool:
    """Whether ``value`` looks like a credential rather than a name (a key prefix such as
    ``sk-``, an auth scheme such as ``Bearer``, or a long run mixing letters and digits)."""
    text = value.strip()
    if _KEY_PREFIX_RE.search(text):
        return True
    return any(len(run) >= 32 or (len(run) >= 20 and re.search(r"\d", run) is not None
                                  and re.search(r"[A-Za-z]", run) is not None)
               for run in _LONG_RUN_RE.findall(text))


def _masked_prefix(value: str) -> str:
    """The first few characters of a secret, enough to recognise it, never enough to use it."""
    return repr(value.strip()[:4] + "***")


def mask_secrets(text: str) -> str:
    """``text`` with every token that looks like a credential (by :func:`looks_like_secret`,
    the one test) cut to a masked prefix; names such as ``OPENAI_API_KEY_2024`` stay whole."""
    return _CANDIDATE_RE.sub(
        lambda m: m.group(0)[:4] + "***" if looks_like_secret(m.group(0)) else m.group(0), text)


def _url_problem(url: str) -> str | None:
    """Why an http(s)/redis URL cannot work (a port outside 1..65535), or ``None``."""
    try:
        port = urllib.parse.urlsplit(url).port
    except ValueError:
        return "the port must be a number from 1 to 65535"
    if port is not None and not 1 <= port <= 65535:
        return "the port must be a number from 1 to 65535"
    return None


def _authority(value: str) -> tuple[int, int, int] | None:
    """Where a URL's authority is (``user:password@host:port``): its start, the index of the
    ``@`` that ends its user info (-1 without one) and its end; ``None`` without ``://``."""
    scheme_end = value.find("://")
    if scheme_end < 0:
        return None
    start = scheme_end + 3
    end = min((i for i in (value.find(sep, start) for sep in "/?#") if i >= 0),
              default=len(value))
    return start, value.rfind("@", start, end), end


def _expand(value: str) -> str:
    """``${VAR}`` from the environment: as it is in the host, path or query (a directory, a
    ``host:port``), percent-encoded in the user-info part (a password may hold ``@`` or ``/``)."""
    authority = _authority(value)
    userinfo_end = -1 if authority is None else authority[1]

    def expanded(match: re.Match[str]) -> str:
        found = os.environ[match.group(1)]
        return urllib.parse.quote(found, safe="") if match.start() < userinfo_end else found

    return _VAR_RE.sub(expanded, value)


def _secret_in_host(value: str) -> str | None:
    """The name of a ``${VAR}`` named for a credential (``${REDIS_PASSWORD}``) that sits in a
    URL's host rather than its user info (a missing ``@``), or ``None``: there it would be
    shown wherever the host is, in status, logs and connection errors."""
    authority = _authority(value)
    if authority is None:
        return None
    start, userinfo_end, end = authority
    host_start = userinfo_end + 1 if userinfo_end >= 0 else start
    for match in _VAR_RE.finditer(value, host_start, end):
        if _names_secret(match.group(1)):
            return match.group(1)
    return None


def _not_json(value: Any, where: str = "") -> str | None:
    """Where in ``value`` a float JSON cannot carry (NaN, infinity) is, or ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _not_json(item, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


def _numeric(annotation: Any) -> tuple[bool, bool]:
    """``(numeric, list of numbers)`` for a field's annotation (bool itself is not numeric)."""
    def number(tp: Any) -> bool:
        if get_origin(tp) is Union or type(tp).__name__ == "UnionType":
            return any(number(arg) for arg in get_args(tp))
        return tp in (int, float)

    if get_origin(annotation) is list:
        return False, any(number(arg) for arg in get_args(annotation))
    return number(annotation), False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``weight: true`` is a mistake, not 1%: numbers are never taken from booleans."""
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        numeric, numbers = _numeric(field.annotation)
        if numeric and isinstance(value, bool):
            raise ValueError(f"must be a number, not a boolean (got {str(value).lower()})")
        if numbers and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, bool):
                    raise ValueError(f"item {i} must be a number, not a boolean "
                                     f"(got {str(item).lower()})")
        return value


class EnvironmentTarget(_Strict):
    """Where one environment (blue or green) sends its calls."""

    model: str = Field(min_length=1, description="Model name sent upstream.")
    base_url: str | None = Field(
        default=None, description="Provider base URL; default: the caller's."
    )
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding this provider's key."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")

    @field_validator("headers")
    @classmethod
    def _sendable(cls, value: dict[str, str]) -> dict[str, str]:
        """Headers the HTTP client can send: a name of token characters, a value of printable
        ASCII (no CR or LF, which would end the header early). Refused here, not on every call:
        a non-ASCII value raised UnicodeEncodeError into the app at each call."""
        for name, text in value.items():
            if not _HEADER_NAME_RE.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name "
                                 "(letters, digits and !#$%&'*+-.^_`|~ only)")
            if not _HEADER_VALUE_RE.match(text):
                raise ValueError(f"header {name!r}: its value must be printable ASCII, without "
                                 "line breaks (got a value with other characters)")
        return value
    params: dict[str, Any] = Field(
        default_factory=dict, description="Body parameters added or overridden on every call."
    )
    provider: str | None = Field(
        default=None, description="gen_ai.provider.name; default: inferred from base_url."
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_literal_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "api_key" in data:
            raise ValueError(
                "api_key is not accepted in config (keys must not live in files); "
                "put the key in an environment variable and name it in api_key_env"
            )
        return data

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        # Before any other check: no error below may echo a key from the query.
        _refuse_query_secret(value, "name the key's variable in api_key_env")
        if _VAR_RE.search(value):
            # Left as written, it names a host nobody has; expanded, the rollout's revision
            # (what the fleet and the CLI compare) would differ wherever the variable does.
            raise ValueError(f"${{VAR}} is expanded only in state and metrics_source: write "
                             f"the URL itself (got {mask_url(value)!r})")
        scheme = _SCHEME_RE.match(value)
        if scheme is not None and "@" in value[scheme.end():].split("/", 1)[0]:
            raise ValueError(f"must not hold credentials (user:password@): name the key's "
                             f"variable in api_key_env (got {mask_url(value)!r})")
        if not _URL_RE.match(value):
            raise ValueError("must be an http:// or https:// URL with a host (an IPv6 host "
                             "in brackets: http://[::1]:8000/v1)")
        problem = _url_problem(value)
        if problem is not None:
            raise ValueError(f"{problem} (got {value!r})")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if looks_like_secret(value):
            raise ValueError(
                f"looks like a key, not a variable name: put the key in an environment "
                f"variable and name that variable here, e.g. GREEN_API_KEY "
                f"(got {_masked_prefix(value)})")
        if not _ENV_VAR_RE.match(value):
            raise ValueError("must be an environment variable name such as GREEN_API_KEY")
        return value

    @field_validator("params")
    @classmethod
    def _check_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(_RESERVED_PARAMS.intersection(value))
        if reserved:
            raise ValueError(
                f"may not override {', '.join(reserved)} (set model on the environment)"
            )
        for name, param in value.items():
            where = _not_json(param)
            if where is not None:
                raise ValueError(f"{name}{where}: NaN and infinity cannot be sent in a JSON "
                                 "request body")
        return value

    @field_validator("model")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"must name a model (got {value!r})")
        return value

    @property
    def needs_own_client(self) -> bool:
        return self.base_url is not None or self.api_key_env is not None


class Match(_Strict):
    """Which calls a rollout takes: the model name (or alias) the app requests."""

    model: list[str] = Field(min_length=1)

    @field_validator("model", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("model")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        # Matched exactly against the model the app asks for: " gpt-4.1" would match nothing.
        if any(not m.strip() or m != m.strip() for m in value):
            raise ValueError("model names must not be blank or start or end with whitespace")
        repeated = sorted({m for m in value if value.count(m) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(map(repr, repeated))} more than once")
        return value


class Fallback(_Strict):
    """Retry a failed green call once on blue, before any byte reached the caller."""

    enabled: bool = True
    on: list[FallbackOn] = Field(default_factory=lambda: list(ALL_FALLBACK_CLASSES))
    green_max_retries: int = Field(
        default=0, ge=0, le=10,
        description="The SDK's retries on green (fallback enabled only): before a fallback, "
                    "and for every failure the SDK retries that `on` leaves out (blue keeps the "
                    "caller's retries).",
    )


_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MAX_DURATION = 365 * 86400.0


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a Go/Prometheus-style duration (``30s``, ``1h30m``)."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '30s', '10m' or a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION_RE.match(value.strip()):
        seconds = sum(float(n) * _UNIT_SECONDS[u]
                      for n, u in _DURATION_PART.findall(value.strip()))
    else:
        raise ValueError("must be a duration such as '30s', '10m', '1h30m' or a number of seconds")
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError("must be a finite duration >= 0")
    if seconds > _MAX_DURATION:  # a thread cannot even wait that long (OverflowError)
        raise ValueError("must be at most 365d")
    return seconds


Signal = Literal["error_rate", "latency", "ttft"]
_LONGEST_BOUND = DURATION_BUCKETS[-1]  # seconds (time to first chunk has the same bounds)
OnFailure = Literal["rollback", "pause"]


class Check(_Strict):
    """One analysis check of green against blue (or against an absolute guardrail).

    * ``error_rate`` with ``max_ratio``: green's error rate may be at most ``max_ratio`` times
      blue's (sequential count test); with ``max_increase``: at most blue's plus this much
      (sequential two-sample test); with ``max``: at most this rate (guardrail).
    * ``latency`` / ``ttft`` with ``quantile`` and ``max_ratio``: green's share of calls slower
      than blue's ``quantile`` may be at most ``max_ratio`` times blue's share; with ``max``
      (seconds): green's ``quantile`` must stay at or below ``max`` (guardrail).
    """

    signal: Signal
    quantile: float | None = Field(default=None, gt=0.0, lt=1.0)
    max_ratio: float | None = Field(default=None, ge=1.0, le=100.0)
    max_increase: float | None = Field(default=None, ge=0.0, lt=1.0)
    max: float | None = Field(default=None, gt=0.0)

    @field_validator("max", mode="before")
    @classmethod
    def _max_seconds(cls, value: Any, info: ValidationInfo) -> Any:
        """A latency / ttft guardrail is a duration: ``2.5``, ``"2.5s"`` or ``"500ms"``."""
        if isinstance(value, str) and info.data.get("signal") in ("latency", "ttft"):
            return parse_duration(value)
        return value

    @model_validator(mode="after")
    def _one_bound(self) -> Check:
        bounds = [name for name in ("max_ratio", "max_increase", "max")
                  if getattr(self, name) is not None]
        allowed = (("max_ratio", "max_increase", "max") if self.signal == "error_rate"
                   else ("max_ratio", "max"))
        if len(bounds) != 1 or bounds[0] not in allowed:
            raise ValueError(
                f"a {self.signal} check takes exactly one of {', '.join(allowed)} "
                f"(got {', '.join(bounds) or 'none'})"
            )
        if self.signal == "error_rate":
            if self.quantile is not None:
                raise ValueError("an error_rate check takes no quantile")
            if self.max is not None and self.max >= 1.0:
                raise ValueError(f"max is a rate and must be below 1 (got {self.max})")
        elif self.quantile is None:
            raise ValueError(f"a {self.signal} check needs a quantile, e.g. 0.95")
        elif self.max is not None and self.max > _LONGEST_BOUND:
            raise ValueError(
                f"max is at most {_LONGEST_BOUND:g} s, the histograms' largest bucket bound: "
                f"above it no quantile can be read, so the check could never pass "
                f"(got {self.max:g})")
        return self

    @property
    def kind(self) -> str:
        """``ratio`` | ``increase`` | ``guardrail``."""
        if self.max is not None:
            return "guardrail"
        return "increase" if self.max_increase is not None else "ratio"

    def describe(self) -> str:
        """A short human name, e.g. ``latency p95 ratio<=1.25``."""
        what = self.signal if self.quantile is None else f"{self.signal} p{self.quantile * 100:g}"
        if self.max_ratio is not None:
            return f"{what} ratio<={self.max_ratio:g}"
        if self.max_increase is not None:
            return f"{what} increase<={self.max_increase:g}"
        unit = "s" if self.signal != "error_rate" else ""
        return f"{what}<={self.max:g}{unit}"


def _default_checks() -> list[Check]:
    return [Check(signal="error_rate", max_ratio=1.5),
            Check(signal="latency", quantile=0.95, max_ratio=1.5),
            Check(signal="ttft", quantile=0.95, max_ratio=1.5)]


class Schedule(_Strict):
    """The steps of a progressive rollout and what each step needs before the next."""

    steps: list[float] = Field(min_length=1, description="Percent to green at each step.")
    min_step_duration: float = Field(default=600.0, description="Seconds (or '10m').")
    min_requests: int = Field(default=200, ge=1, description="Calls per environment per step.")
    progress_deadline: float | None = Field(
        default=None, description="A step without enough data by then pauses. Default: "
        "3 x min_step_duration, at least 10 analysis intervals.")

    @field_validator("min_step_duration", "progress_deadline", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        for i, step in enumerate(value):
            if not 0.0 < step <= 100.0:
                raise ValueError(f"step {i} is {step:g}: each step must be in (0, 100]")
            if i and step <= value[i - 1]:
                raise ValueError(f"steps must increase (step {i} is {step:g} after "
                                 f"{value[i - 1]:g})")
        if value and value[0] >= 100.0:
            raise ValueError("the first step must send less than 100% to green: at 100% blue "
                             "gets no calls, so green is never compared before it takes them "
                             "all (to switch at once, promote)")
        return value


class Analysis(_Strict):
    """How the watcher judges green against blue."""

    interval: float = Field(default=30.0, description="Seconds between looks (or '30s').")
    alpha: float = Field(default=0.01, gt=0.0, le=0.2,
                         description="False-rollback bound under continuous monitoring.")
    checks: list[Check] = Field(default_factory=_default_checks, min_length=1)
    on_failure: OnFailure = "rollback"

    @field_validator("interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator("interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value < 0.05:
            raise ValueError(f"must be at least 50ms (got {value:g}s)")
        return value


class Rollout(_Strict):
    """One blue/green rollout: which calls it takes and where each environment sends them."""

    name: str
    match: Match
    blue: EnvironmentTarget
    green: EnvironmentTarget
    weight: float = Field(default=0.0, ge=0.0, le=100.0, description="Percent of calls to green.")
    sticky: list[StickyKey] = Field(default_factory=lambda: list(DEFAULT_STICKY))
    fallback: Fallback = Field(default_factory=Fallback)
    schedule: Schedule | None = Field(
        default=None, description="Progressive steps driven by the watcher; none: manual weight.")
    analysis: Analysis | None = Field(
        default=None, description="How the watcher judges green; needs a schedule.")

    @model_validator(mode="after")
    def _schedule_owns_weight(self) -> Rollout:
        if self.analysis is not None and self.schedule is None:
            raise ValueError("analysis needs a schedule (the watcher only runs scheduled "
                             "rollouts)")
        if self.schedule is not None and self.weight != 0.0:
            raise ValueError(f"weight is {self.weight:g} but a rollout with a schedule starts "
                             "at 0 and its schedule sets the weight; drop weight")
        return self

    @property
    def effective_analysis(self) -> Analysis:
        """The analysis settings, with defaults when a schedule has none."""
        return self.analysis if self.analysis is not None else Analysis()

    @property
    def progress_deadline(self) -> float:
        """Seconds a step may take to collect its data before it pauses."""
        if self.schedule is None:
            return 0.0
        if self.schedule.progress_deadline is not None:
            return self.schedule.progress_deadline
        return max(3 * self.schedule.min_step_duration, 10 * self.effective_analysis.interval)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                "must be 1-63 characters of a-z, 0-9, '.', '_', '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("sticky")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a key")
        return value


class Config(_Strict):
    """The whole openai-bluegreen configuration."""

    state: str = Field(default="memory", description="Rollout state store.")
    metrics_source: str = Field(default="local", description="Where the watcher reads metrics.")
    rollouts: list[Rollout] = Field(default_factory=list)

    @field_validator("state")
    @classmethod
    def _check_state(cls, value: str) -> str:
        if value == "memory":
            return value
        if value.startswith("file://"):
            parts = urllib.parse.urlsplit(value)
            if parts.netloc not in ("", "localhost") or not parts.path.strip("/"):
                raise ValueError(f"must look like file:///absolute/path/state.json (the host "
                                 f"must be empty or localhost) (got {mask_url(value)!r})")
            return value
        if value.startswith(("redis://", "rediss://")):
            # redis-py also reads ?password=: refused below, so it must not be echoed there.
            _refuse_query_secret(value, "give the password as redis://:PASSWORD@host")
            if not _REDIS_RE.match(value):
                raise ValueError(f"must look like redis://[:password@]host[:port][/db] "
                                 f"(got {mask_url(value)!r})")
            problem = _url_problem(value)
            if problem is not None:
                raise ValueError(f"{problem} (got {mask_url(value)!r})")
            return value
        raise ValueError("must be 'memory', 'file:///path/state.json' or "
                         "'redis://[:password@]host[:port][/db]'")

    @field_validator("metrics_source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        if value == "local":
            return value
        # status and errors show this URL: a token in its query would be shown with it.
        _refuse_query_secret(value, "give Prometheus credentials as http://user:password@host")
        if _SOURCE_URL_RE.match(value):
            problem = _url_problem(value)
            if problem is not None:
                raise ValueError(f"{problem} (got {mask_url(value)!r})")
            from .sources.prometheus import _split_auth  # the source's own reading of it

            _split_auth(value)  # ValueError: an '@' after the host, named with the fix
            return value
        raise ValueError("must be 'local' or a Prometheus URL such as http://prometheus:9090")

    @model_validator(mode="after")
    def _check_across_fields(self) -> Config:
        """What one field cannot check alone: names and models taken twice, deadlines shorter
        than the looks that would meet them."""
        seen_names: dict[str, int] = {}
        seen_models: dict[str, str] = {}
        problems: list[tuple[str, str]] = []
        for i, rollout in enumerate(self.rollouts):
            if rollout.name in seen_names:
                problems.append((f"rollouts[{i}].name",
                                 f"repeats rollouts[{seen_names[rollout.name]}].name "
                                 f"(got {rollout.name!r})"))
            seen_names.setdefault(rollout.name, i)
            for model in rollout.match.model:
                if model in seen_models:
                    problems.append((f"rollouts[{i}].match.model", f"{model!r} is already "
                                     f"taken by rollout {seen_models[model]!r}"))
                seen_models.setdefault(model, rollout.name)
            deadline = rollout.schedule.progress_deadline if rollout.schedule else None
            interval = rollout.effective_analysis.interval
            if deadline is not None and deadline < interval:
                # Looks come once an interval: a step would pause at its first look unless it
                # had all its data by then (a unit slip, e.g. 10s meant as 10m).
                problems.append((f"rollouts[{i}].schedule.progress_deadline", (
                    f"is shorter than analysis.interval ({interval:g}s): the watcher looks "
                    f"once an interval, so a step would pause at its first look unless all its "
                    f"data were in; make it at least one interval (got {deadline:g}s)")))
        if problems:
            # Each with its own field path: a ValueError here is reported on the whole config.
            raise PydanticCustomError(
                _FIELD_PROBLEMS, "{summary}",
                {"summary": "; ".join(f"{path}: {why}" for path, why in problems),
                 "problems": problems})
        return self


_URL_FIELDS = frozenset({"state", "metrics_source", "base_url"})
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_HINT = re.compile(r"(key|token|secret|authorization|password)", re.IGNORECASE)
# Names of query parameters and config fields that carry a credential, word by word
# (``api_key``, ``X-Api-Key``, ``subscription-key``, ``access_token``, ``sig``): not any name
# that merely contains "key" (``monkey``). A value that looks like a key is refused whatever
# its name.
_SECRET_WORDS = frozenset({"key", "apikey", "token", "accesstoken", "authtoken", "secret",
                           "authorization", "auth", "password", "passwd", "pwd", "pass", "sig",
                           "signature", "credential", "credentials"})


def _names_secret(name: str) -> bool:
    """Whether a key or parameter name says it holds a credential (``password``, ``pwd``,
    ``auth``, ``X-Api-Key``, ``access_token``), word by word."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    return bool(_SECRET_WORDS.intersection(words))


def _refuse_query_secret(url: str, fix: str) -> None:
    """Refuse a URL whose query holds a credential, without echoing it."""
    query = url.split("?", 1)[1].split("#", 1)[0] if "?" in url else ""
    for name, item in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if looks_like_secret(item) or _names_secret(name):
            raise ValueError(
                f"must not hold credentials (query parameter {name!r} looks like a key): "
                f"{fix} (got {mask_url(url.split('?', 1)[0]) + '?' + name + '=***'!r})")


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(config)"


def _secret_field(name: str) -> bool:
    """A field whose value is not shown: its name contains ``key``, ``token``, ``secret``,
    ``password``..., or has a credential's name as a word (``pwd``, ``pass``, ``auth``)."""
    return _SECRET_HINT.search(name) is not None or _names_secret(name)


def _show_value(loc: tuple[int | str, ...], value: Any) -> str:
    if any(isinstance(p, str) and _secret_field(p) and p != "api_key_env" for p in loc) or (
        isinstance(value, Mapping) and any(_secret_field(str(k)) for k in value)
        and "headers" in loc
    ):
        return "'***'"
    if isinstance(value, str) and looks_like_secret(value):
        return _masked_prefix(value)
    text = mask_secrets(repr(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for item in error.errors(include_url=False):
        if item["type"] == _FIELD_PROBLEMS:
            problems += item["ctx"]["problems"]
            continue
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        if item["type"] != "missing" and "input" in item and not isinstance(item["input"], Mapping):
            shown = (repr(mask_url(item["input"])) if loc and loc[-1] in _URL_FIELDS
                     and isinstance(item["input"], str) else _show_value(loc, item["input"]))
            if "(got " not in message:
                message += f" (got {shown})"
        elif (item["type"] != "missing" and isinstance(item.get("input"), Mapping)
              and "(got " not in message and item["type"] != "extra_forbidden"):
            # A whole section: its keys say which one it is; its values may be long or secret.
            keys = ", ".join(map(str, list(item["input"])[:6]))
            message += f" (got a mapping with keys: {keys})" if keys else " (got {})"
        # A key pasted where a name belongs ("Authorization: Bearer sk-..." as a header name)
        # is part of the path and of the message: neither may carry it whole.
        problems.append((mask_secrets(_format_loc(loc)), mask_secrets(message)))
    return problems


_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _yaml_loader() -> type[Any]:
    """A SafeLoader with YAML 1.2 booleans: only ``true`` / ``false`` (any case) are booleans,
    so ``on``, ``off``, ``yes``, ``no``, ``y``, ``n`` stay strings, as keys and as values."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|false)$", re.IGNORECASE),
                                 list("tTfF"))
    return Loader


def _duplicate_keys(node: Any, loc: tuple[int | str, ...], seen: set[int],
                    problems: list[tuple[str, str]]) -> None:
    """Every mapping key that appears twice in the composed YAML ``node`` (YAML would keep
    only the last one silently), with its path and line."""
    import yaml

    if id(node) in seen:  # an alias of a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = (key_node.tag, str(key_node.value))
            line = key_node.start_mark.line + 1
            child = (*loc, str(key_node.value))
            if key in first:
                problems.append((_format_loc(child), f"duplicate key at line {line} (first at "
                                 f"line {first[key]}); each key may appear once"))
            else:
                first[key] = line
            _duplicate_keys(value_node, child, seen, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, (*loc, i), seen, problems)


def _load_yaml(text: str, path: Path) -> Any:
    import yaml

    loader = _yaml_loader()(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            what = " ".join(part for part in (exc.context, exc.problem) if part)
            raise ConfigError([("(file)", f"cannot parse {str(path)!r}: "
                                f"{mask_secrets(what)}{where}")], str(path)) from None
        if node is None:
            return {}
        problems: list[tuple[str, str]] = []
        _duplicate_keys(node, (), set(), problems)
        if problems:
            raise ConfigError(problems, str(path))
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _JsonObject(dict[str, Any]):
    """A JSON object as parsed, with the keys it repeated (``json`` keeps the last silently)."""

    repeated: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    out, seen = _JsonObject(pairs), set()
    out.repeated = []
    for key, _ in pairs:
        if key in seen:
            out.repeated.append(key)
        seen.add(key)
    return out


def _json_repeats(value: Any, loc: tuple[int | str, ...],
                  problems: list[tuple[str, str]]) -> None:
    if isinstance(value, _JsonObject):
        problems += [(_format_loc((*loc, key)), "duplicate key; each key may appear once")
                     for key in dict.fromkeys(value.repeated)]
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, item in items:
        _json_repeats(item, (*loc, key), problems)


def _load_json(text: str, path: Path) -> Any:
    data = json.loads(text, object_pairs_hook=_json_object)
    problems: list[tuple[str, str]] = []
    _json_repeats(data, (), problems)
    if problems:  # as in YAML: a repeated key is refused, not half-read
        raise ConfigError(problems, str(path))
    return data


def _read_file(path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is no content
    except OSError as exc:
        raise ConfigError([("(file)", f"cannot read {str(path)!r}: {exc.strerror}")],
                          str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([("(file)", f"cannot read {str(path)!r}: not UTF-8 text (byte "
                            f"{exc.object[exc.start]:#04x} at offset {exc.start})")],
                          str(path)) from None
    try:
        if suffix in (".yaml", ".yml"):
            return _load_yaml(text, path)
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
                import tomli as tomllib
            return tomllib.loads(text)
        if suffix == ".json":
            return _load_json(text, path)
    except ConfigError:
        raise
    except Exception as exc:
        reason = mask_secrets(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise ConfigError([("(file)", f"cannot parse {str(path)!r}: {reason}")],
                          str(path)) from None
    raise ConfigError(
        [("(file)", f"unknown config file type {suffix!r} (use .yaml, .yml, .toml or .json)")],
        str(path),
    )


def _find_default() -> Path | None:
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    for name in DEFAULT_FILES:
        candidate = Path.cwd() / name
        if candidate.is_file():
            return candidate
    return None


def load_config(
    source: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *, require_keys: bool = False,
) -> Config:
    """Build a validated :class:`Config` from any accepted source.

    ``require_keys``: also refuse an ``api_key_env`` whose variable is not set (what routing
    needs; the CLI, which sends no call, does not), in the same error as any other problem.

    Raises:
        ConfigError: naming every bad field and its value.
    """
    origin: str | None = None
    data: Any
    if isinstance(source, Config):
        data = source.model_dump()
    elif isinstance(source, Mapping):
        data = dict(source)
    elif source is None:
        path = _find_default()
        if path is None:
            raise ConfigError(
                [("(config)", f"no config given: pass install(config=...) (the CLI: --config "
                  f"FILE) or set {ENV_CONFIG} to a YAML/TOML/JSON file; none of "
                  f"{', '.join(DEFAULT_FILES)} is in {Path.cwd()}")]
            )
        origin = str(path)
        data = _read_file(path)
    elif isinstance(source, (str, os.PathLike)) and isinstance(os.fspath(source), str):
        origin = os.fspath(source)
        if not origin.strip():  # Path("") is the working directory: "cannot read '.'"
            raise ConfigError([("(file)", f"the config path is empty (got {origin!r})")])
        data = _read_file(Path(origin))
    else:
        raise ConfigError([("(config)", "must be a Config, a mapping or a path to a YAML/TOML/"
                            f"JSON file (str or os.PathLike) (got {type(source).__name__})")])
    if not isinstance(data, Mapping):
        raise ConfigError([("(config)", f"must be a mapping (got {type(data).__name__})")], origin)
    data = dict(data)
    # A file that routes nothing is a mistake (an empty file, a wrong path's stub): refuse it.
    required: list[tuple[str, str]] = []
    if origin is not None and data.get("rollouts") in (None, []):
        required.append(("rollouts", "at least one rollout is required; this file defines "
                         "none"))
    from_env: dict[str, str] = {}
    written: dict[str, str] = {}  # fields whose ${VAR}s were expanded, as written
    for env_name, key in ((ENV_STATE, "state"), (ENV_METRICS_SOURCE, "metrics_source")):
        if os.environ.get(env_name):
            data[key] = os.environ[env_name]
            from_env[key] = env_name
    # Credentials stay out of files: ``${VAR}`` in these URLs comes from the environment.
    problems = []
    for key in ("state", "metrics_source"):
        value = data.get(key)
        if isinstance(value, str) and "${" in value:
            missing = [m for m in _VAR_RE.findall(value) if not os.environ.get(m)]
            secret = _secret_in_host(value)
            if missing:
                name = missing[0]
                problems.append((key, f"environment variable {name} (used as ${{{name}}}) is "
                                 "not set or empty"))
            elif secret is not None:
                scheme = value.partition("://")[0]
                problems.append((key, f"${{{secret}}} is in the host, not the user info: a "
                                 f"credential goes before an '@', as in "
                                 f"{scheme}://user:${{{secret}}}@host (got {mask_url(value)!r})"))
            else:
                written[key] = value
                data[key] = _expand(value)
    if require_keys:
        required += missing_keys(data.get("rollouts"))
    if problems:
        raise ConfigError(_name_env(problems, from_env), origin)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = _as_written(_problems(exc), written)
        raise ConfigError(_name_env(problems, from_env) + required, origin) from None
    if required:
        raise ConfigError(required, origin)
    return config


def missing_keys(rollouts: Any) -> list[tuple[str, str]]:
    """``(field, problem)`` for each ``api_key_env`` whose variable is not set or empty, in a
    config's rollouts (a parsed or raw list: shapes that are wrong are validation's to name)."""
    out = []
    for i, rollout in enumerate(rollouts if isinstance(rollouts, (list, tuple)) else ()):
        for env in ("blue", "green"):
            target = (rollout.get(env) if isinstance(rollout, Mapping)
                      else getattr(rollout, env, None))
            name = (target.get("api_key_env") if isinstance(target, Mapping)
                    else getattr(target, "api_key_env", None))
            # A key pasted where its variable's name belongs is validation's to refuse, masked:
            # named here it would be echoed whole.
            if isinstance(name, str) and name and not looks_like_secret(name) \
                    and not os.environ.get(name):
                out.append((f"rollouts[{i}].{env}.api_key_env",
                            f"environment variable {name} is not set or empty"))
    return out


def _as_written(problems: list[tuple[str, str]], written: Mapping[str, str]
                ) -> list[tuple[str, str]]:
    """Problems of a field whose ``${VAR}``s were expanded show the field as written: a value
    from the environment is never echoed, not even a password that a mistyped URL (a missing
    ``@``) puts outside the user info, where masking looks."""
    out = []
    for path, message in problems:
        if path not in written:
            out.append((path, message))
            continue
        head, sep, _ = written[path].partition("?")
        got = message.find("(got ")  # the value shown, at the end (see _problems)
        shown = f"(got {mask_url(head) + (sep and '?...')!r})"
        out.append((path, message[:got] + shown if got >= 0 else message))
    return out


def _name_env(problems: list[tuple[str, str]], from_env: Mapping[str, str]
              ) -> list[tuple[str, str]]:
    """Problems of a value that came from an environment variable say so."""
    return [(path, f"{message} (set by environment variable {from_env[path]})"
             if path in from_env else message) for path, message in problems]
