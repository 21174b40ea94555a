"""Rollout state and its transitions: pure functions of (state, now, ...) → new state.

``pending → progressing(step) ⇄ paused → promoted | rolled_back``. Every transition appends a
:class:`HistoryEntry` with who did it, why, and when. States are immutable; a store keeps them
and guards each write with the state's ``version`` (compare-and-set).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from hashlib import blake2b
from typing import Any

from ._config import Rollout
from ._errors import BlueGreenError

__all__ = [
    "Action",
    "HistoryEntry",
    "InvalidTransition",
    "Phase",
    "RolloutState",
    "initial_state",
    "restarted",
    "revision_of",
    "transition",
]

HISTORY_LIMIT = 200


class Phase(str, enum.Enum):
    """Where a rollout is."""

    PENDING = "pending"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"

    @property
    def terminal(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK)


class Action(str, enum.Enum):
    """What a decision or an operator does to a rollout."""

    START = "start"
    ADVANCE = "advance"
    PROMOTE = "promote"
    HOLD = "hold"
    PAUSE = "pause"
    RESUME = "resume"
    ROLLBACK = "rollback"
    SET_WEIGHT = "set_weight"


class InvalidTransition(BlueGreenError):
    """An action that does not apply to the rollout's current phase."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One transition: when, what, who, why, and where it left the rollout."""

    at: float
    action: str
    actor: str
    reason: str
    phase: str
    step: int | None
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "action": self.action, "actor": self.actor,
                "reason": self.reason, "phase": self.phase, "step": self.step,
                "weight": self.weight}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistoryEntry:
        return cls(_number(data["at"], "at"), str(data["action"]), str(data["actor"]),
                   str(data["reason"]), str(data["phase"]),
                   None if data.get("step") is None else _integer(data["step"], "step", -1),
                   _number(data["weight"], "weight", 0.0, 100.0))


@dataclass(frozen=True, slots=True)
class RolloutState:
    """The shared state of one rollout.

    ``step`` indexes ``schedule.steps`` (``-1``: below the first step after a manual weight;
    ``None`` before the start and after the end). ``weight`` is the percent sent to green.
    """

    rollout: str
    phase: Phase = Phase.PENDING
    step: int | None = None
    weight: float = 0.0
    step_started_at: float | None = None
    updated_at: float = 0.0
    version: int = 0
    history: tuple[HistoryEntry, ...] = field(default_factory=tuple)
    # Which blue/green this state is about (``revision_of``); "" in states stored before
    # revisions existed. ``superseded``: revisions this rollout was restarted away from.
    revision: str = ""
    superseded: tuple[str, ...] = ()

    @property
    def last(self) -> HistoryEntry | None:
        return self.history[-1] if self.history else None

    def to_dict(self) -> dict[str, Any]:
        return {"rollout": self.rollout, "phase": self.phase.value, "step": self.step,
                "weight": self.weight, "step_started_at": self.step_started_at,
                "updated_at": self.updated_at, "version": self.version,
                "history": [h.to_dict() for h in self.history], "revision": self.revision,
                "superseded": list(self.superseded)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutState:
        """A state read back from a store; raises ``ValueError`` (naming the field) for one no
        writer of ours could have stored, rather than route by it."""
        try:
            phase = Phase(data["phase"])
        except ValueError:
            raise ValueError(f"phase must be one of {', '.join(p.value for p in Phase)} "
                             f"(got {data['phase']!r})") from None
        weight = _number(data["weight"], "weight", 0.0, 100.0)
        # What routing follows must agree with what status says: rolled back is 0% green,
        # promoted 100% (DESIGN.md).
        for done, whole in ((Phase.ROLLED_BACK, 0.0), (Phase.PROMOTED, 100.0)):
            if phase is done and weight != whole:
                raise ValueError(f"a {phase.value} state has weight {whole:g} (got {weight:g})")
        superseded = data.get("superseded", [])
        if not isinstance(superseded, list) or not all(isinstance(r, str) for r in superseded):
            raise ValueError(f"superseded must be a list of revisions (got {superseded!r})")
        return cls(
            rollout=str(data["rollout"]),
            phase=phase,
            step=None if data.get("step") is None else _integer(data["step"], "step", -1),
            weight=weight,
            step_started_at=(None if data.get("step_started_at") is None
                             else _number(data["step_started_at"], "step_started_at")),
            updated_at=_number(data.get("updated_at", 0.0), "updated_at"),
            version=_integer(data["version"], "version", 0, MAX_VERSION),
            history=_history(data.get("history", [])),
            revision=str(data.get("revision") or ""),
            superseded=tuple(superseded),
        )


def _history(items: Any) -> tuple[HistoryEntry, ...]:
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"history must be a list (got {type(items).__name__})")
    out = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, Mapping):
                raise ValueError(f"not an object (got {type(item).__name__})")
            out.append(HistoryEntry.from_dict(item))
        except KeyError as exc:
            raise ValueError(f"history[{i}]: missing field {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"history[{i}]: {exc}") from None
    return tuple(out)


def _number(value: Any, name: str, low: float = float("-inf"), high: float = float("inf")
            ) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        within = "" if low == float("-inf") else f" from {low:g} to {high:g}"
        raise ValueError(f"{name} must be a finite number{within} (got {value!r})")
    return float(value)


MAX_VERSION = 2**53 - 1
"""The highest version a state is stored or read with: Redis's Lua scripts compare versions as
doubles, exact up to here."""


def _integer(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low \
            or (high is not None and value > high):
        within = f">= {low}" if high is None else f"from {low} to {high}"
        raise ValueError(f"{name} must be an integer {within} (got {value!r})")
    return value


REPAIR_HINT = "fix or delete it, or roll the rollout back (which replaces it)"
"""What an operator can do about a stored value that is not a usable state."""


def unusable(rollout: Rollout, state: RolloutState) -> str | None:
    """Why a stored state that parsed cannot be this rollout's (a step past its schedule), or
    ``None``. The watcher decides nothing on such a state; ``status`` shows it unreadable."""
    steps = rollout.schedule.steps if rollout.schedule is not None else []
    if state.step is not None and state.step >= len(steps):
        return (f"rollout {rollout.name!r}: the stored state is at step {state.step + 1}, but "
                f"the schedule has {len(steps)}; {REPAIR_HINT}")
    return None


def revision_of(rollout: Rollout) -> str:
    """A short fingerprint of what the rollout compares: its calls, its blue and its green. A
    state stored for another revision is about another candidate."""
    what = json.dumps([rollout.match.model_dump(mode="json"),
                       rollout.blue.model_dump(mode="json"),
                       rollout.green.model_dump(mode="json")], sort_keys=True)
    return blake2b(what.encode(), digest_size=6).hexdigest()


def initial_state(rollout: Rollout) -> RolloutState:
    """A rollout nobody has touched: pending at 0% (or its fixed weight without a schedule)."""
    if rollout.schedule is None:
        return RolloutState(rollout.name, Phase.PROGRESSING, None, rollout.weight,
                            revision=revision_of(rollout))
    return RolloutState(rollout.name, revision=revision_of(rollout))


SUPERSEDED_LIMIT = 20


def restarted(rollout: Rollout, stored: RolloutState, now: float, *, actor: str
              ) -> RolloutState:
    """The rollout started over because its blue/green changed: a fresh state for this
    revision, keeping the history and noting the revision it replaces."""
    fresh = initial_state(rollout)
    reason = (f"blue/green changed (revision {stored.revision or 'none'} -> "
              f"{fresh.revision}): starting over")
    entry = HistoryEntry(now, "restart", actor, reason, fresh.phase.value, fresh.step,
                         fresh.weight)
    return replace(fresh, updated_at=now, version=stored.version + 1,
                   history=(*stored.history, entry)[-HISTORY_LIMIT:],
                   superseded=(*stored.superseded, *([stored.revision] if stored.revision
                                                     else []))[-SUPERSEDED_LIMIT:])


def placed_step(rollout: Rollout, state: RolloutState) -> int | None:
    """The state's step in the rollout's schedule as it is now. A state keeps the index of its
    step: after an operator edits the schedule, the index may name another step than the one
    its weight is at (at 5 %, step 2 of [1, 5, 25, 50, 100], is step 1 of [5, 50, 100]); the
    weight then decides, so the next step is the next one above it, never a jump to 100 %."""
    step = state.step
    if step is None:
        return None
    steps = rollout.schedule.steps if rollout.schedule else []
    below_next = step + 1 >= len(steps) or state.weight < steps[step + 1]
    if step < len(steps) and (step < 0 or steps[step] <= state.weight) and below_next:
        return step
    return _step_below(rollout, state.weight)


def _step_below(rollout: Rollout, weight: float) -> int:
    steps = rollout.schedule.steps if rollout.schedule else []
    index = -1
    for i, step in enumerate(steps):
        if step <= weight:
            index = i
    return index


def transition(rollout: Rollout, state: RolloutState, action: Action, now: float, *,
               actor: str, reason: str, weight: float | None = None) -> RolloutState:
    """The state after ``action``; raises :class:`InvalidTransition` when it does not apply.

    ``HOLD`` returns ``state`` unchanged (no version bump, no history entry).
    """
    phase = state.phase
    steps = rollout.schedule.steps if rollout.schedule is not None else []
    new_phase, new_step, new_weight = phase, state.step, state.weight
    step_started = state.step_started_at

    def refuse(what: str) -> InvalidTransition:
        return InvalidTransition(
            f"cannot {action.value.replace('_', '-')} rollout {rollout.name!r}: it is "
            f"{phase.value} ({what})")

    if action is Action.HOLD:
        return state
    if action is Action.START:
        if phase is not Phase.PENDING:
            raise refuse("start applies to a pending rollout")
        if not steps:
            raise refuse("it has no schedule")
        new_phase, new_step, new_weight, step_started = Phase.PROGRESSING, 0, steps[0], now
    elif action is Action.ADVANCE:
        if phase is not Phase.PROGRESSING or state.step is None:
            raise refuse("advance applies to a progressing rollout")
        placed = placed_step(rollout, state)
        nxt = (state.step if placed is None else placed) + 1
        if nxt >= len(steps) or steps[nxt] >= 100.0:
            new_phase, new_step, new_weight, step_started = Phase.PROMOTED, None, 100.0, None
        else:
            new_step, new_weight, step_started = nxt, steps[nxt], now
    elif action is Action.PROMOTE:
        if phase.terminal:
            raise refuse("it already ended")
        new_phase, new_step, new_weight, step_started = Phase.PROMOTED, None, 100.0, None
    elif action is Action.ROLLBACK:
        if phase is Phase.ROLLED_BACK:
            raise refuse("it is already rolled back")
        new_phase, new_step, new_weight, step_started = Phase.ROLLED_BACK, None, 0.0, None
    elif action is Action.PAUSE:
        if phase not in (Phase.PENDING, Phase.PROGRESSING):
            raise refuse("pause applies to a pending or progressing rollout")
        new_phase = Phase.PAUSED
    elif action is Action.RESUME:
        if phase is not Phase.PAUSED:
            raise refuse("resume applies to a paused rollout")
        if state.weight >= 100.0:
            # Blue gets no calls: nothing could ever be compared, and the schedule has no step
            # beyond 100 %. Promoting is a decision, not something a resume should imply.
            raise refuse("green already gets every call, so there is nothing left to judge: "
                         "promote it, or set-weight below 100 first")
        if state.weight == 0.0:  # green gets no calls: start the schedule over
            new_phase, new_step, step_started = Phase.PENDING, None, None
        else:
            new_phase, step_started = Phase.PROGRESSING, now
            if new_step is None:
                new_step = _step_below(rollout, state.weight)
    elif action is Action.SET_WEIGHT:
        if weight is None or not 0.0 <= weight <= 100.0:
            raise InvalidTransition(f"set-weight needs a percent between 0 and 100 "
                                    f"(got {weight!r})")
        new_weight = weight
        if rollout.schedule is None:
            new_phase, new_step = Phase.PROGRESSING, None
        else:
            # A manual weight holds the schedule until someone resumes it.
            new_phase, new_step, step_started = Phase.PAUSED, _step_below(rollout, weight), now
    else:  # pragma: no cover - enum is exhaustive
        raise InvalidTransition(f"unknown action {action!r}")

    entry = HistoryEntry(now, action.value, actor, reason, new_phase.value, new_step, new_weight)
    history = (*state.history, entry)[-HISTORY_LIMIT:]
    return replace(state, phase=new_phase, step=new_step, weight=new_weight,
                   step_started_at=step_started, updated_at=now, version=state.version + 1,
                   history=history)
