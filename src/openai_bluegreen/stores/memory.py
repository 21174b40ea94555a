"""The ``memory`` state store: one process, a dict behind a lock."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from .._rollout import RolloutState
from . import Lease, check_version

__all__ = ["MemoryStore"]


class MemoryStore:
    """States in this process only (the default; single-process apps and tests)."""

    url = "memory"

    def __init__(self, states: Mapping[str, RolloutState] | None = None) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, RolloutState] = dict(states or {})

    def load(self, rollout: str) -> RolloutState | None:
        return self._states.get(rollout)

    def load_all(self) -> Mapping[str, RolloutState]:
        return dict(self._states)

    def compare_and_set(self, state: RolloutState, expected_version: int | None, *,
                        holder: str | None = None) -> bool:
        """``holder`` is not checked: in one process the lease is always this process's."""
        check_version(state)
        with self._lock:
            current = self._states.get(state.rollout)
            if (None if current is None else current.version) != expected_version:
                return False
            self._states[state.rollout] = state
            return True

    def replace_invalid(self, state: RolloutState, seen: str | bytes) -> bool:
        """A memory store holds only states this package made: never an invalid one."""
        return False

    def acquire_lease(self, holder: str, ttl: float) -> Lease:
        """One process: the lease is always this process's, and never anyone else's."""
        return Lease.KEPT

    def release_lease(self, holder: str) -> None:
        """Nothing to release."""

    def close(self) -> None:
        """Nothing to release."""
