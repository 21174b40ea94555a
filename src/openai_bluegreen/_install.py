"""install / uninstall / set_weight / status: the public lifecycle over the global router."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry import metrics, trace

from . import _patch, _state, _worker
from ._config import Config, load_config
from ._errors import BlueGreenError
from ._router import Router

__all__ = ["flush", "install", "set_weight", "status", "uninstall"]

_lock = threading.Lock()


def install(
    config: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> None:
    """Route matching ``openai`` calls through blue/green rollouts. Idempotent.

    Args:
        config: A :class:`Config`, a mapping of the same shape, or a path to a YAML/TOML/JSON
            file. ``None`` reads ``OPENAI_BLUEGREEN_CONFIG`` (or ``./openai-bluegreen.yaml``).
        tracer_provider: Where spans go; default: the global provider.
        meter_provider: Where metrics go; default: the global provider.

    Raises:
        ConfigError: The config is invalid; every bad field is named with its value and nothing
            is installed (a previous installation stays as it was).
    """
    validated = load_config(config)
    with _lock:
        current = _state.router
        if (current is not None and current.config == validated
                and current.providers == (tracer_provider, meter_provider)):
            return
        router = Router(validated, tracer_provider=tracer_provider, meter_provider=meter_provider)
        _patch.patch()
        _state.router = router


def uninstall() -> None:
    """Stop routing and restore the SDK's methods exactly. Cached wrappers pass through."""
    with _lock:
        _state.router = None
        _patch.unpatch()


def _router() -> Router:
    router = _state.router
    if router is None:
        raise BlueGreenError("openai-bluegreen is not installed: call openai_bluegreen.install()")
    return router


def set_weight(rollout: str, percent: float) -> None:
    """Send ``percent`` (0-100) of the rollout's calls to green, from the next call on.

    Raises:
        UnknownRolloutError: No rollout has that name.
        ValueError: ``percent`` is not between 0 and 100.
    """
    _router().set_weight(rollout, percent)


def status() -> dict[str, Any]:
    """The installed rollouts with their current weights (percent to green)."""
    router = _state.router
    return {"installed": router is not None,
            "rollouts": router.status() if router is not None else []}


def flush() -> None:
    """Hand every span and metric recorded so far to the providers.

    Telemetry is recorded off the request path by a background worker within a few
    milliseconds; call this before reading an in-memory exporter or reader (tests) or before
    shutting the providers down by hand. It also runs at interpreter exit.
    """
    _worker.flush()
