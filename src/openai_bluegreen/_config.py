"""Configuration: the pydantic models of DESIGN.md and how a config is found and loaded.

A config comes from a :class:`Config`, a mapping, or a YAML/TOML/JSON file; ``None`` means the
file named by ``OPENAI_BLUEGREEN_CONFIG``, else ``openai-bluegreen.{yaml,yml,toml,json}`` in the
working directory. Every problem is reported at once, each with the field path and the value.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._errors import ConfigError

__all__ = [
    "ENV_CONFIG",
    "Config",
    "EnvironmentTarget",
    "Fallback",
    "Match",
    "Rollout",
    "load_config",
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
_URL_RE = re.compile(r"^https?://[^/\s:]+(:\d{1,5})?(/\S*)?$")
_RESERVED_PARAMS = frozenset({"model", "stream", "messages", "input", "prompt"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        if value is not None and not _URL_RE.match(value):
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_VAR_RE.match(value):
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
        if any(not m for m in value):
            raise ValueError("model names must not be empty")
        return value


class Fallback(_Strict):
    """Retry a failed green call once on blue, before any byte reached the caller."""

    enabled: bool = True
    on: list[FallbackOn] = Field(default_factory=lambda: list(ALL_FALLBACK_CLASSES))
    green_max_retries: int = Field(
        default=0, ge=0, le=10,
        description="SDK retries on green before falling back (fallback enabled only).",
    )


class Rollout(_Strict):
    """One blue/green rollout: which calls it takes and where each environment sends them."""

    name: str
    match: Match
    blue: EnvironmentTarget
    green: EnvironmentTarget
    weight: float = Field(default=0.0, ge=0.0, le=100.0, description="Percent of calls to green.")
    sticky: list[StickyKey] = Field(default_factory=lambda: list(DEFAULT_STICKY))
    fallback: Fallback = Field(default_factory=Fallback)

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
        if value != "memory":
            raise ValueError(
                "only 'memory' is supported in this version "
                "(file:// and redis:// stores arrive with the rollout controller and fleet mode)"
            )
        return value

    @field_validator("metrics_source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        if value != "local":
            raise ValueError("only 'local' is supported in this version")
        return value

    @model_validator(mode="after")
    def _check_unique(self) -> Config:
        seen_names: dict[str, int] = {}
        seen_models: dict[str, str] = {}
        for i, rollout in enumerate(self.rollouts):
            if rollout.name in seen_names:
                raise ValueError(
                    f"rollouts[{i}].name {rollout.name!r} repeats "
                    f"rollouts[{seen_names[rollout.name]}]"
                )
            seen_names[rollout.name] = i
            for model in rollout.match.model:
                if model in seen_models:
                    raise ValueError(
                        f"rollouts[{i}].match.model {model!r} is already taken by rollout "
                        f"{seen_models[model]!r}"
                    )
                seen_models[model] = rollout.name
        return self


_SECRET_HINT = re.compile(r"(key|token|secret|authorization|password)", re.IGNORECASE)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(config)"


def _show_value(loc: tuple[int | str, ...], value: Any) -> str:
    if any(isinstance(p, str) and _SECRET_HINT.search(p) and p != "api_key_env" for p in loc) or (
        isinstance(value, Mapping) and any(_SECRET_HINT.search(str(k)) for k in value)
        and "headers" in loc
    ):
        return "'***'"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        if item["type"] != "missing" and "input" in item and not isinstance(item["input"], Mapping):
            message += f" (got {_show_value(loc, item['input'])})"
        problems.append((_format_loc(loc), message))
    return problems


def _read_file(path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("(file)", f"cannot read {str(path)!r}: {exc.strerror}")]) from exc
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
                import tomli as tomllib
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
    except Exception as exc:
        raise ConfigError([("(file)", f"cannot parse {str(path)!r}: {exc}")], str(path)) from exc
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
) -> Config:
    """Build a validated :class:`Config` from any accepted source.

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
                [("(config)", f"no config given: pass install(config=...) or set {ENV_CONFIG} "
                  "to a YAML/TOML/JSON file")]
            )
        origin = str(path)
        data = _read_file(path)
    else:
        origin = os.fspath(source)
        data = _read_file(Path(origin))
    if not isinstance(data, Mapping):
        raise ConfigError([("(config)", f"must be a mapping (got {type(data).__name__})")], origin)
    data = dict(data)
    for env_name, key in ((ENV_STATE, "state"), (ENV_METRICS_SOURCE, "metrics_source")):
        if os.environ.get(env_name):
            data[key] = os.environ[env_name]
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc), origin) from None
