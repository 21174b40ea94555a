"""openai-bluegreen: blue/green and canary rollouts of LLM models for ``openai`` SDK apps.

One call (or ``import openai_bluegreen.auto``) patches the SDK; existing calls whose model
matches a rollout go to blue or green, with OpenTelemetry GenAI spans and metrics tagged by
environment.
"""

from __future__ import annotations

from ._assignment import assignment_key, force
from ._config import (
    Analysis,
    Check,
    Config,
    EnvironmentTarget,
    Fallback,
    Match,
    Rollout,
    Schedule,
    load_config,
)
from ._errors import BlueGreenError, ConfigError, UnknownRolloutError
from ._install import (
    flush,
    install,
    pause,
    promote,
    resume,
    rollback,
    set_weight,
    status,
    uninstall,
)
from ._rollout import InvalidTransition, Phase, RolloutState
from ._version import __version__

__all__ = [
    "Analysis",
    "BlueGreenError",
    "Check",
    "Config",
    "ConfigError",
    "EnvironmentTarget",
    "Fallback",
    "InvalidTransition",
    "Match",
    "Phase",
    "Rollout",
    "RolloutState",
    "Schedule",
    "UnknownRolloutError",
    "__version__",
    "assignment_key",
    "flush",
    "force",
    "install",
    "load_config",
    "pause",
    "promote",
    "resume",
    "rollback",
    "set_weight",
    "status",
    "uninstall",
]
