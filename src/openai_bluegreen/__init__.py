"""openai-bluegreen: blue/green and canary rollouts of LLM models for ``openai`` SDK apps.

One call (or ``import openai_bluegreen.auto``) patches the SDK; existing calls whose model
matches a rollout go to blue or green, with OpenTelemetry GenAI spans and metrics tagged by
environment.
"""

from __future__ import annotations

from ._assignment import assignment_key, force
from ._config import Config, EnvironmentTarget, Fallback, Match, Rollout, load_config
from ._errors import BlueGreenError, ConfigError, UnknownRolloutError
from ._install import flush, install, set_weight, status, uninstall
from ._version import __version__

__all__ = [
    "BlueGreenError",
    "Config",
    "ConfigError",
    "EnvironmentTarget",
    "Fallback",
    "Match",
    "Rollout",
    "UnknownRolloutError",
    "__version__",
    "assignment_key",
    "flush",
    "force",
    "install",
    "load_config",
    "set_weight",
    "status",
    "uninstall",
]
