"""The exception tree. Every error this package raises derives from :class:`BlueGreenError`."""

from __future__ import annotations

__all__ = ["BlueGreenError", "ConfigError", "UnknownRolloutError"]


class BlueGreenError(Exception):
    """Base class for every error raised by openai-bluegreen."""


class ConfigError(BlueGreenError, ValueError):
    """The configuration is invalid. Nothing was installed.

    Attributes:
        problems: One ``(field_path, message)`` pair per problem, e.g.
            ``("rollouts[0].green.weight", "must be between 0 and 100 (got 150)")``.
    """

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"invalid openai-bluegreen config{where}:"]
        lines += [f"  {path}: {message}" for path, message in problems]
        super().__init__("\n".join(lines))


class UnknownRolloutError(BlueGreenError, KeyError):
    """A rollout name was given that is not in the installed config."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown rollout"
