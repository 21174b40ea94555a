"""Manual rollout actions (promote, pause, resume, rollback, set-weight) against a store.

Each action is a read-modify-write with compare-and-set, retried when another writer got there
first, so concurrent operators and the watcher never lose each other's updates.
"""

from __future__ import annotations

import getpass
import os
import random
import socket
import time
from dataclasses import replace

from ._config import Config, Rollout
from ._errors import UnknownRolloutError
from ._rollout import (
    Action,
    InvalidTransition,
    RolloutState,
    initial_state,
    restarted,
    revision_of,
    transition,
    unusable,
)
from .stores import InvalidState, StateStore, StoreUnavailable, store_time

__all__ = ["apply_action", "default_actor", "find_rollout"]

_ATTEMPTS = 50
REPLACED_NOTE = "replaced a stored value that was not a valid state"
"""In the reason of a rollback that wrote over an invalid stored value, with what was wrong."""
_WHY_LIMIT = 300


def default_actor(prefix: str = "") -> str:
    """``user@host`` (``OPENAI_BLUEGREEN_ACTOR`` overrides), for the state history."""
    actor = os.environ.get("OPENAI_BLUEGREEN_ACTOR")
    if not actor:
        try:
            user = getpass.getuser()
        except Exception:  # no user name in some containers
            user = f"uid{os.getuid()}"
        actor = f"{user}@{socket.gethostname()}"
    return f"{prefix}{actor}"


def find_rollout(config: Config, name: str) -> Rollout:
    for rollout in config.rollouts:
        if rollout.name == name:
            return rollout
    known = ", ".join(r.name for r in config.rollouts) or "none"
    raise UnknownRolloutError(f"unknown rollout {name!r} (configured: {known})")


def apply_action(store: StateStore, rollout: Rollout, action: Action, *, actor: str,
                 reason: str, weight: float | None = None,
                 now: float | None = None, restart: bool = False) -> RolloutState:
    """Apply ``action`` to the stored state of ``rollout``; returns the state written.

    When the stored state is about another blue/green than ``rollout`` (its revision differs:
    the apps run another config than the caller's, or a new candidate is being prepared), a
    rollback applies to the stored state as it is, ``restart`` or not: whatever the apps run,
    they go to blue and stay there. Any other action is refused unless ``restart``: then this
    config's rollout starts over first (apps on the other config send that rollout to blue
    meanwhile).

    A stored value that is not a valid state of the rollout (hand-edited, or written by
    something else) is left as it is, except by a rollback: that writes a rolled-back state of
    this config over it (past the version it names, if any), so getting the apps back to blue
    never waits for a repair. Pause and resume are refused on a state whose step is past the
    schedule (the watcher ignores it); promote and set-weight replace it like a rollback.

    Raises:
        InvalidTransition: The action does not apply to the rollout's phase.
        StoreUnavailable: The store cannot be read or written, or too many concurrent writers
            (gave up after retrying).
    """
    if rollout.schedule is None:
        # Apps follow the store only for scheduled rollouts: a stored change would be shown as
        # done while every app kept routing at the configured weight.
        raise InvalidTransition(
            f"rollout {rollout.name!r} has no schedule: apps route it at its configured weight "
            f"({rollout.weight:g}%) and do not follow the state store; change its weight in the "
            "config (or openai_bluegreen.set_weight() in the app), or give it a schedule")
    revision = revision_of(rollout)
    for attempt in range(_ATTEMPTS):
        if attempt:  # someone else wrote first: back off with jitter, then re-read
            time.sleep(random.uniform(0.0, min(0.2, 0.002 * 2 ** min(attempt, 7))))
        try:
            stored = store.load(rollout.name)
        except InvalidState as exc:
            if action is not Action.ROLLBACK:
                raise
            at = store_time(store) if now is None else now
            # Past the version the bad value names; about no blue/green in particular, so the
            # apps' watcher adopts it as its own config's whatever that config is, rolled back,
            # instead of restarting the rollout over another config's state.
            base = replace(initial_state(rollout), version=exc.version or 0, revision="")
            wrong = exc.why if len(exc.why) <= _WHY_LIMIT else exc.why[:_WHY_LIMIT] + "…"
            new = transition(rollout, base, action, at, actor=actor,
                             reason=f"{reason} ({REPLACED_NOTE}: {wrong})")
            if store.replace_invalid(new, exc.seen):
                return new
            continue
        at = store_time(store) if now is None else now
        base = stored if stored is not None else initial_state(rollout)
        # A rollback written over an invalid value is about no config until the apps' watcher
        # adopts it: acting on it with this config would stamp this config's revision, and a
        # leader on another config would then restart the rollout (green again).
        unadopted = (stored is not None and not stored.revision and stored.last is not None
                     and f"({REPLACED_NOTE}: " in stored.last.reason)
        if stored is not None and (unadopted or (stored.revision and stored.revision != revision)):
            if action is Action.ROLLBACK:
                pass  # roll back what the apps run, under its own revision, always
            elif restart:
                base = restarted(rollout, stored, at, actor=actor)  # another candidate: anew
            elif unadopted:
                raise InvalidTransition(
                    f"cannot {action.value.replace('_', '-')} rollout {rollout.name!r} yet: "
                    "its state was written over an invalid value and no watcher has adopted "
                    "it as its config's; wait for the apps' watcher (one analysis interval), "
                    "or restart this config's rollout (CLI: --restart)")
            else:
                raise InvalidTransition(
                    f"cannot {action.value.replace('_', '-')} rollout {rollout.name!r}: the "
                    f"store's state is about another blue/green (revision {stored.revision}) "
                    f"than this config's ({revision}), so the apps run another config. Act "
                    "with the apps' config, or restart this config's rollout first (CLI: "
                    "--restart; apps on the other config then send it to blue). A rollback "
                    "works with any config.")
        why = unusable(rollout, base) if base is stored else None
        if why and action in (Action.PAUSE, Action.RESUME):
            raise InvalidTransition(f"cannot {action.value}: {why}")
        new = transition(rollout, base, action, at, actor=actor, reason=reason, weight=weight)
        if not new.revision:  # stored before revisions existed: now this config's
            new = replace(new, revision=revision)
        if store.compare_and_set(new, None if stored is None else stored.version):
            return new
    raise StoreUnavailable(f"could not write rollout {rollout.name!r}: the state kept changing "
                           f"under {_ATTEMPTS} attempts; try again")
